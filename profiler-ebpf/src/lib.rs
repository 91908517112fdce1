//! Library target so that profiler-user can declare this crate as a build
//! dependency (cargo then rebuilds the eBPF object when it changes). The
//! programs themselves are in the `heapwatch` binary target.
#![no_std]
