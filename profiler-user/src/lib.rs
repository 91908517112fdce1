//! heapwatch: a system-wide memory-allocation profiler built on eBPF uprobes.
//!
//! The modules follow the data path: [`probes`] loads and attaches the eBPF
//! programs and reads their ring buffer, [`events`] decodes the records,
//! [`tracker`] keeps every process's heap, [`stacks`] turns allocation sites
//! into symbols, [`report`] renders summaries and [`cli`] glues the commands.

pub mod api;
pub mod cli;
pub mod config;
pub mod events;
mod hashing;
pub mod leaks;
pub mod metrics;
pub mod probes;
pub mod procinfo;
pub mod report;
pub mod scope;
pub mod stacks;
pub mod tracker;
