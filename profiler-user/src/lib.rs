//! heapwatch: a system-wide memory-allocation profiler built on eBPF uprobes.
//!
//! The modules follow the data path: [`probes`] finds the allocator, loads
//! and attaches the eBPF programs and reads their ring buffer; [`events`]
//! decodes the records; a [`session`] applies them to the [`tracker`] (every
//! process's heap) and keeps the [`stacks`] the kernel sent; [`leaks`] judges
//! growth; [`report`] builds every process report from a session and renders
//! it; [`metrics`] and [`api`] serve the daemon's figures. The commands are
//! library modules too — [`daemon`], [`record`], [`snapshot`] — and [`cli`]
//! only parses flags, calls them and prints.

pub mod api;
pub mod cli;
pub mod config;
pub mod connections;
pub mod container;
pub mod coverage;
pub mod daemon;
pub mod events;
mod hashing;
pub mod leaks;
pub mod metrics;
mod overlay;
pub mod probes;
pub mod procinfo;
pub mod record;
pub mod report;
pub mod scope;
pub mod session;
pub mod signals;
pub mod snapshot;
pub mod stacks;
pub mod tiers;
pub mod tracker;
