//! Loading heapwatch's eBPF object, attaching its programs to the allocator
//! and the process lifecycle tracepoints, and reading what they report.

mod allocator;
mod caps;
mod libc;
mod links;
mod placement;
mod plan;
mod reader;
mod symbols;
mod tracefs;
mod uprobe_multi;

#[cfg(test)]
mod stack_depth_tests;

use std::{
    num::NonZeroU32,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray},
    programs::{
        ProgramError, RawTracePoint, TracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
    },
};
use profiler_common::{Counter, filter_mode, known_stack_slots};
use thiserror::Error;

pub use allocator::{FileFacts, allocators_in_reach, allocators_of, read_facts};
pub use caps::missing_capabilities;
pub use libc::{is_c_library, libc_in_maps, library_in_ldconfig, linker_cache};
pub use links::AttachedProbes;
pub use placement::{NullFirstArg, Placement, place};
pub use plan::{AllocatorPlan, PREFIXES, plan_allocator, provides_allocator};
pub use reader::{Backlog, EventReader};
pub use tracefs::field_offset;
use uprobe_multi::MultiPrograms;

/// Where the probes fire.
#[derive(Clone, Copy, Debug)]
pub enum Targets {
    /// Every process on the machine but heapwatch itself.
    AllProcesses,
    /// One process; with `follow_forks`, the processes it forks too.
    Process {
        /// The process.
        pid: NonZeroU32,
        /// Trace its new child processes as well.
        follow_forks: bool,
    },
    /// The processes given to [`Probes::attach_process`], each probed alone
    /// (the kernel inserts breakpoints into no other). Every process's exec
    /// and exit is reported, so that new ones can be picked up.
    Selected,
}

/// How to load and attach the probes.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// The C library to probe; `None` finds the one heapwatch itself maps.
    pub libc: Option<PathBuf>,
    /// Other allocators' files in the traced programs' reach, probed alike
    /// (the C library under an interposer, a prefixed jemalloc beside it).
    pub also: Vec<PathBuf>,
    /// Which processes are traced.
    pub targets: Targets,
    /// Ring-buffer size in bytes (a power of two, at least a page).
    pub ring_bytes: u32,
    /// Capture the full stack of one allocation in this many (1: every one).
    pub stack_sample: u32,
    /// Threads whose allocator state fits the kernel's array (a power of
    /// two); the others' goes to task storage.
    pub thread_slots: u32,
    /// Stop a traced process at each exec until userspace continues it
    /// (SIGCONT), having probed the new image's allocator.
    pub hold_at_exec: bool,
}

const RETURN_PROGRAM: &str = "alloc_return";

/// The benchmark floor's programs, which do nothing.
const FLOOR_ENTRY_PROGRAM: &str = "floor_entry";
const FLOOR_RETURN_PROGRAM: &str = "floor_return";

/// What the probes on the allocator run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Programs {
    /// heapwatch's tracing programs, at their placements.
    Tracing,
    /// Programs that do nothing, for measuring what the traps alone cost:
    /// at heapwatch's placements, or at every function's first instruction
    /// (+0, where other tools probe).
    Floor {
        /// At each function's first instruction instead of its placement.
        at_entry: bool,
    },
}

impl Programs {
    /// The program at the entry of a function the tracing program `entry` probes.
    fn entry(self, entry: &'static str) -> &'static str {
        match self {
            Self::Tracing => entry,
            Self::Floor { .. } => FLOOR_ENTRY_PROGRAM,
        }
    }

    fn on_return(self) -> &'static str {
        match self {
            Self::Tracing => RETURN_PROGRAM,
            Self::Floor { .. } => FLOOR_RETURN_PROGRAM,
        }
    }
}

/// Set to `perf-event` to attach uprobes by perf events even where the
/// kernel takes multi-uprobe links (tests use it to cover the fallback).
pub const UPROBE_LINKS_ENV: &str = "HEAPWATCH_UPROBE_LINKS";

/// heapwatch's eBPF object, built by the build script.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/heapwatch"));

/// How the allocator's uprobes are attached.
enum Attachment {
    /// By multi-uprobe links, one a program and file.
    Multi(MultiPrograms),
    /// By perf events, one a probe, aya's way; why multi-uprobe links are not used.
    PerfEvents(String),
}

/// The C++ runtime, whose `operator new` call sites are remembered for the
/// malloc inside (libstdc++ has no frame pointers to walk through).
const CXX_RUNTIME: &str = "libstdc++.so.6";
const CXX_NEW_PROGRAM: &str = "cxx_new_entry";
/// Every `operator new` and `operator new[]`: plain, nothrow, aligned.
const CXX_NEW_SYMBOLS: [&str; 8] = [
    "_Znwm",
    "_Znam",
    "_ZnwmRKSt9nothrow_t",
    "_ZnamRKSt9nothrow_t",
    "_ZnwmSt11align_val_t",
    "_ZnamSt11align_val_t",
    "_ZnwmSt11align_val_tRKSt9nothrow_t",
    "_ZnamSt11align_val_tRKSt9nothrow_t",
];

/// Raw tracepoints: (name, program). Detached without waiting for a grace period.
const RAW_TRACEPOINTS: [(&str, &str); 2] = [
    ("sched_process_exec", "process_exec"),
    ("sched_process_exit", "process_exit"),
];

/// The tracepoint of new processes, read through its record's format:
/// (category, name, program). A perf event, detached after a grace period:
/// attached only where new processes matter.
const NEW_TASK_TRACEPOINT: (&str, &str, &str) = ("task", "task_newtask", "new_task");

/// The tracepoint of the OOM killer's victims, read through its record's
/// format: (category, name, program). The daemon's alone: it writes their
/// post-mortems.
const OOM_TRACEPOINT: (&str, &str, &str) = ("oom", "mark_victim", "oom_victim");

/// What can go wrong while loading and attaching.
#[derive(Debug, Error)]
pub enum ProbeError {
    /// Missing privileges.
    #[error(
        "heapwatch needs root, or the capabilities {missing} (missing here), to load eBPF programs: run it with sudo"
    )]
    Privileges {
        /// The missing capabilities, comma-separated.
        missing: String,
    },
    /// tracefs could not be mounted.
    #[error("mount tracefs at /sys/kernel/tracing: {0}")]
    Tracefs(#[source] std::io::Error),
    /// A tracepoint's format could not be read or lacks a field.
    #[error("tracepoint {tracepoint} has no field `{field}` in this kernel")]
    TracepointField {
        /// category/name.
        tracepoint: String,
        /// The field.
        field: &'static str,
    },
    /// No C library found to probe.
    #[error(
        "no C library is mapped in heapwatch's own process (a static build?): name the allocator library with --libc PATH"
    )]
    LibcNotFound,
    /// The named allocator library does not exist.
    #[error(
        "allocator library {0} does not exist: name the C library the program uses with --libc PATH"
    )]
    LibcMissing(PathBuf),
    /// The named allocator library is a directory or a device, not a file.
    #[error(
        "allocator library {0} is not a file: name the C library the program uses with --libc PATH"
    )]
    LibcNotAFile(PathBuf),
    /// The allocator library's symbols could not be read.
    #[error(
        "read the symbols of {library}: {source} (the allocator library is an ELF shared object, as the C library: name it with --libc PATH)"
    )]
    Symbols {
        /// The library.
        library: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The eBPF object did not load.
    #[error("load heapwatch's eBPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program is not in the object or did not load.
    #[error("load eBPF program {name}: {source}")]
    Program {
        /// Program name.
        name: &'static str,
        /// Cause.
        #[source]
        source: Box<ProgramError>,
    },
    /// A probe did not attach.
    #[error("attach {what} to {function} in {library}: {source}")]
    Attach {
        /// "uprobe" or "uretprobe" or "tracepoint".
        what: &'static str,
        /// The function or tracepoint.
        function: String,
        /// The library probed.
        library: PathBuf,
        /// Cause.
        #[source]
        source: Box<ProgramError>,
    },
    /// A function the allocator must have is not in the library.
    #[error(
        "attach uprobe to {function} in {library}: {function} does not appear in its symbol table (is it the C library? name the program's allocator library with --libc PATH)"
    )]
    MissingFunction {
        /// The function.
        function: &'static str,
        /// The library.
        library: PathBuf,
    },
    /// A multi-uprobe link was refused.
    #[error("attach {program} to {library} by a multi-uprobe link: {source}")]
    AttachMulti {
        /// The program.
        program: &'static str,
        /// The file probed.
        library: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A map is missing or unusable.
    #[error("eBPF map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// Cause.
        #[source]
        source: Box<aya::maps::MapError>,
    },
}

/// The loaded and attached probes. Dropping them detaches everything,
/// return probes first (an entry without its return is harmless; the reverse is not).
pub struct Probes {
    /// The allocator's probes attached at load (none with [`Targets::Selected`]);
    /// declared first, so that they are detached before anything else goes.
    links: AttachedProbes,
    ebpf: Ebpf,
    programs: Programs,
    /// The allocator probed at load: the C library, or the one named.
    libc: PathBuf,
    attached: Vec<String>,
    /// Where the allocators' probes go, found once: that library's, then
    /// the others'.
    plans: Vec<AllocatorPlan>,
    /// The other allocators' files.
    also: Vec<PathBuf>,
    /// The C++ runtime and its `operator new` symbols, with their file
    /// offsets, when probed.
    cxx_new: Option<(PathBuf, Vec<(&'static str, u64)>)>,
    /// The `operator new` symbols the C++ runtime lacks.
    cxx_absent: Vec<&'static str>,
    /// How the uprobes are attached.
    attachment: Attachment,
    /// Where the probes fire.
    targets: Targets,
}

impl Probes {
    /// Loads the object and attaches every program.
    pub fn attach(config: &ProbeConfig) -> Result<Self, ProbeError> {
        let mut probes = Self::load(config, Programs::Tracing)?;
        probes.attached = attach_tracepoints(&mut probes.ebpf, config.targets)?;
        let runtime = cxx_runtime();
        let mut programs: Vec<&'static str> = plan::ENTRY_PROGRAMS.to_vec();
        programs.push(RETURN_PROGRAM);
        if runtime.is_some() {
            programs.push(CXX_NEW_PROGRAM);
        }
        probes.load_uprobe_programs(&programs)?;
        probes.plan_allocator()?;
        if let Some(runtime) = runtime {
            probes.plan_cxx_new(runtime)?;
        }
        if let Some(scope) = uprobe_scope(config.targets) {
            probes.links = probes.attach_planned(scope)?;
        }
        Ok(probes)
    }

    /// Attaches programs that do nothing to the allocator (the benchmark's floor).
    pub fn attach_floor(config: &ProbeConfig, at_entry: bool) -> Result<Self, ProbeError> {
        let mut probes = Self::load(config, Programs::Floor { at_entry })?;
        probes.load_uprobe_programs(&[FLOOR_ENTRY_PROGRAM, FLOOR_RETURN_PROGRAM])?;
        probes.plan_allocator()?;
        let scope = uprobe_scope(config.targets).unwrap_or(UProbeScope::AllProcesses);
        probes.links = probes.attach_planned(scope)?;
        Ok(probes)
    }

    fn load(config: &ProbeConfig, programs: Programs) -> Result<Self, ProbeError> {
        check_privileges()?;
        tracefs::ensure_mounted().map_err(ProbeError::Tracefs)?;
        let libc = resolve_libc(config.libc.as_deref())?;
        let mut ebpf = load_object(config)?;
        if let Targets::Process { pid, .. } = config.targets {
            add_target(&mut ebpf, pid.get())?;
        }
        Ok(Self {
            ebpf,
            programs,
            links: AttachedProbes::default(),
            libc,
            attached: Vec::new(),
            plans: Vec::new(),
            also: config.also.clone(),
            cxx_new: None,
            cxx_absent: Vec::new(),
            targets: config.targets,
            attachment: match std::env::var(UPROBE_LINKS_ENV).as_deref() {
                Ok("perf-event") => {
                    Attachment::PerfEvents(format!("{UPROBE_LINKS_ENV}=perf-event"))
                }
                _ => Attachment::Multi(MultiPrograms::default()),
            },
        })
    }

    /// The C library probed.
    pub fn libc(&self) -> &Path {
        &self.libc
    }

    /// Standard allocator functions the library lacks, and `operator new`
    /// symbols the C++ runtime lacks.
    pub fn skipped(&self) -> Vec<String> {
        let absent = self
            .plans
            .iter()
            .take(1)
            .flat_map(|plan| plan.absent.iter().cloned());
        absent
            .chain(self.cxx_absent.iter().map(|&symbol| symbol.to_owned()))
            .collect()
    }

    /// How the uprobes are attached, for `heapwatch daemon --check`.
    pub fn attachment(&self) -> String {
        match &self.attachment {
            Attachment::Multi(_) => "uprobes attached by multi-uprobe links".to_owned(),
            Attachment::PerfEvents(why) => {
                format!(
                    "uprobes attached by perf events, one a probe (not multi-uprobe links: {why})"
                )
            }
        }
    }

    /// What is attached, one line each, for `heapwatch daemon --check`.
    pub fn attached(&self) -> &[String] {
        &self.attached
    }

    /// Takes the ring-buffer reader (once).
    pub fn reader(&mut self) -> Result<EventReader, ProbeError> {
        EventReader::new(take_map(&mut self.ebpf, "EVENTS")?)
    }

    /// Takes the kernel's set of stacks sent (once).
    pub fn known_stacks(&mut self) -> Result<KnownStacks, ProbeError> {
        let map = take_map(&mut self.ebpf, "KNOWN_STACKS")?;
        let slots =
            aya::maps::Array::try_from(map).map_err(|source| map_error("KNOWN_STACKS", source))?;
        Ok(KnownStacks { slots })
    }

    /// The records the kernel lost per process (tgid, count) since the last
    /// call, taken out of its map.
    pub fn take_lost(&mut self) -> Result<Vec<(u32, u64)>, ProbeError> {
        let mut lost = tgid_map::<u64>(&mut self.ebpf, "LOST")?;
        let taken: Vec<(u32, u64)> = lost.iter().filter_map(Result::ok).collect();
        for (tgid, _) in &taken {
            // Gone already: nothing to take.
            let _ = lost.remove(tgid);
        }
        Ok(taken)
    }

    /// Kernel-side drop counters, summed over CPUs, in [`Counter::ALL`] order.
    pub fn counters(&self) -> Result<[u64; Counter::COUNT as usize], ProbeError> {
        let counters_error = |source| map_error("COUNTERS", source);
        let map = self
            .ebpf
            .map("COUNTERS")
            .ok_or_else(|| missing_map("COUNTERS"))?;
        let array: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(counters_error)?;
        let mut sums = [0; Counter::COUNT as usize];
        for (index, sum) in sums.iter_mut().enumerate() {
            let values = array.get(&(index as u32), 0).map_err(counters_error)?;
            *sum = values.iter().sum();
        }
        Ok(sums)
    }

    /// Loads the uprobe programs `names`: for multi-uprobe links where the
    /// kernel takes them, else aya's way, for perf events.
    fn load_uprobe_programs(&mut self, names: &[&'static str]) -> Result<(), ProbeError> {
        if let Attachment::Multi(multi) = &mut self.attachment {
            match MultiPrograms::load(OBJECT, &self.ebpf, names) {
                Ok(loaded) => {
                    *multi = loaded;
                    return Ok(());
                }
                Err(err) => {
                    tracing::debug!(error = %err, "multi-uprobe links refused: attaching by perf events");
                    self.attachment = Attachment::PerfEvents(err.to_string());
                }
            }
        }
        for &name in names {
            let program = uprobe(&mut self.ebpf, name)?;
            if program.fd().is_err() {
                program.load().map_err(|source| ProbeError::Program {
                    name,
                    source: Box::new(source),
                })?;
            }
        }
        Ok(())
    }

    /// Places the probes of the allocators probed at load.
    fn plan_allocator(&mut self) -> Result<(), ProbeError> {
        let at_entry = self.programs == (Programs::Floor { at_entry: true });
        for path in std::iter::once(&self.libc).chain(&self.also) {
            let plan = plan_allocator(path, at_entry)?;
            self.attached.extend(plan.lines.iter().cloned());
            self.plans.push(plan);
        }
        Ok(())
    }

    /// Finds the `operator new` symbols of the C++ runtime `runtime`.
    fn plan_cxx_new(&mut self, runtime: PathBuf) -> Result<(), ProbeError> {
        let table = symbols::read_symbols(&runtime, &[]).map_err(|source| ProbeError::Symbols {
            library: runtime.clone(),
            source,
        })?;
        let (present, absent): (Vec<&'static str>, Vec<&'static str>) = CXX_NEW_SYMBOLS
            .iter()
            .partition(|symbol| table.addresses.contains_key(**symbol));
        self.cxx_absent = absent;
        let present: Vec<(&'static str, u64)> = present
            .into_iter()
            .map(|symbol| {
                (
                    symbol,
                    table.file_offsets.get(symbol).copied().unwrap_or_default(),
                )
            })
            .collect();
        for (symbol, _) in &present {
            self.attached.push(format!(
                "uprobe {symbol} in {} (call sites)",
                runtime.display()
            ));
        }
        self.cxx_new = Some((runtime, present));
        Ok(())
    }

    /// Attaches `program` at `file_offset` in `library`, named `function`
    /// in errors. The return probe sits with the entry probe: one
    /// breakpoint serves both, and the placement never moves past a change
    /// of the stack pointer, so the return address is still at its top.
    fn attach_one(
        &mut self,
        program: &'static str,
        function: &str,
        file_offset: u64,
        library: &Path,
        scope: UProbeScope,
    ) -> Result<UProbeLinkId, ProbeError> {
        let what = if program == self.programs.on_return() {
            "uretprobe"
        } else {
            "uprobe"
        };
        let location = UProbeAttachLocation::AbsoluteOffset(file_offset);
        uprobe(&mut self.ebpf, program)?
            .attach(location, library, scope)
            .map_err(|source| ProbeError::Attach {
                what,
                function: function.to_owned(),
                library: library.to_owned(),
                source: Box::new(source),
            })
    }
}

/// The C++ runtime, when the linker cache lists it.
fn cxx_runtime() -> Option<PathBuf> {
    library_in_ldconfig(&linker_cache(), CXX_RUNTIME)
}

fn check_privileges() -> Result<(), ProbeError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let missing = missing_capabilities(&status);
    if missing.is_empty() {
        return Ok(());
    }
    Err(ProbeError::Privileges {
        missing: missing.join(", "),
    })
}

fn resolve_libc(requested: Option<&Path>) -> Result<PathBuf, ProbeError> {
    let path = match requested {
        Some(path) => path.to_owned(),
        None => {
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
            libc_in_maps(&maps).ok_or(ProbeError::LibcNotFound)?
        }
    };
    match path.metadata() {
        Err(_) => Err(ProbeError::LibcMissing(path)),
        Ok(meta) if !meta.is_file() => Err(ProbeError::LibcNotAFile(path)),
        Ok(_) => Ok(path),
    }
}

fn load_object(config: &ProbeConfig) -> Result<Ebpf, ProbeError> {
    let offsets = TracepointOffsets::read()?;
    let (mode, follow, every_lifecycle) = match config.targets {
        Targets::AllProcesses => (filter_mode::ALL, 0u32, 0u32),
        Targets::Process { follow_forks, .. } => (filter_mode::TARGETS, u32::from(follow_forks), 0),
        Targets::Selected => (filter_mode::TARGETS, 1, 1),
    };
    // Probes attached to one process fire in no other: no filter to check.
    let probes_scoped = u32::from(matches!(
        config.targets,
        Targets::Selected
            | Targets::Process {
                follow_forks: false,
                ..
            }
    ));
    let self_tgid = std::process::id();
    let wakeup_bytes = u64::from(config.ring_bytes / 8);
    EbpfLoader::new()
        // The programs read nothing through the kernel's types (no CO-RE):
        // parsing the kernel's BTF would only cost time at every start.
        .btf(None)
        .override_global("SELF_TGID", &self_tgid, true)
        .override_global("FILTER_MODE", &mode, true)
        .override_global("FOLLOW_FORKS", &follow, true)
        .override_global("EVERY_LIFECYCLE", &every_lifecycle, true)
        .override_global("HOLD_AT_EXEC", &u32::from(config.hold_at_exec), true)
        .override_global("PROBES_SCOPED", &probes_scoped, true)
        .override_global("WAKEUP_BYTES", &wakeup_bytes, true)
        .override_global("STACK_SAMPLE_EVERY", &config.stack_sample.max(1), true)
        .override_global("EXIT_HAS_GROUP_DEAD", &offsets.exit_has_group_dead, true)
        .override_global("NEWTASK_PID_OFFSET", &offsets.newtask_pid, true)
        .override_global("NEWTASK_FLAGS_OFFSET", &offsets.newtask_flags, true)
        .override_global("OOM_PID_OFFSET", &offsets.oom_pid, true)
        .override_global("OOM_ANON_RSS_OFFSET", &offsets.oom_anon_rss, true)
        .override_global("THREAD_SLOT_MASK", &(config.thread_slots - 1), true)
        .map_max_entries("EVENTS", config.ring_bytes)
        .map_max_entries("THREAD_SLOTS", config.thread_slots)
        .map_max_entries("SLOT_CLAIMS", config.thread_slots)
        .map_max_entries("SLOT_HOLDERS", config.thread_slots)
        // THREADS, task-local storage, which only the programs use.
        .allow_unsupported_maps()
        .load(OBJECT)
        .map_err(|e| ProbeError::Load(Box::new(e)))
}

/// The hashes of the stacks the kernel has sent: it sends a stack whose hash
/// is not here (and adds it).
pub struct KnownStacks {
    slots: aya::maps::Array<MapData, u64>,
}

impl KnownStacks {
    /// Makes the kernel send these stacks again when next seen. (A race
    /// with the kernel can only clear a slot it has just filled: that stack
    /// is sent once more.)
    pub fn forget(&mut self, hashes: &[u64]) {
        for &hash in hashes {
            for slot in known_stack_slots(hash) {
                if self.slots.get(&slot, 0).is_ok_and(|held| held == hash) {
                    // An index below the map's size cannot fail.
                    let _ = self.slots.set(slot, 0, 0);
                }
            }
        }
    }
}

/// Record layouts of the tracepoints, read from this kernel's tracefs.
struct TracepointOffsets {
    exit_has_group_dead: u32,
    newtask_pid: u32,
    newtask_flags: u32,
    oom_pid: u32,
    oom_anon_rss: u32,
}

impl TracepointOffsets {
    fn read() -> Result<Self, ProbeError> {
        let exit = tracefs::read_format("sched", "sched_process_exit").unwrap_or_default();
        let newtask = tracefs::read_format("task", "task_newtask").unwrap_or_default();
        let oom = tracefs::read_format("oom", "mark_victim").unwrap_or_default();
        let required = |format: &str, tracepoint: &str, field| {
            field_offset(format, field).ok_or_else(|| ProbeError::TracepointField {
                tracepoint: tracepoint.to_owned(),
                field,
            })
        };
        Ok(Self {
            exit_has_group_dead: u32::from(field_offset(&exit, "group_dead").is_some()),
            newtask_pid: required(&newtask, "task/task_newtask", "pid")?,
            newtask_flags: required(&newtask, "task/task_newtask", "clone_flags")?,
            oom_pid: required(&oom, "oom/mark_victim", "pid")?,
            oom_anon_rss: required(&oom, "oom/mark_victim", "anon_rss")?,
        })
    }
}

fn add_target(ebpf: &mut Ebpf, pid: u32) -> Result<(), ProbeError> {
    tgid_map::<u8>(ebpf, "TARGETS")?
        .insert(pid, 1, 0)
        .map_err(|source| map_error("TARGETS", source))
}

/// The object's hash map `name`, keyed by process id.
fn tgid_map<'a, V: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<aya::maps::HashMap<&'a mut MapData, u32, V>, ProbeError> {
    let map = ebpf.map_mut(name).ok_or_else(|| missing_map(name))?;
    aya::maps::HashMap::try_from(map).map_err(|source| map_error(name, source))
}

/// Attaches the lifecycle programs; returns a line for each, for `--check`.
/// New processes matter where processes are picked as they appear or
/// children followed; a lone process's children are not traced.
fn attach_tracepoints(ebpf: &mut Ebpf, targets: Targets) -> Result<Vec<String>, ProbeError> {
    let mut attached = Vec::new();
    for (name, program_name) in RAW_TRACEPOINTS {
        let program: &mut RawTracePoint = program_mut(ebpf, program_name)?;
        program.load().map_err(|source| ProbeError::Program {
            name: program_name,
            source: Box::new(source),
        })?;
        program.attach(name).map_err(|source| ProbeError::Attach {
            what: "raw tracepoint",
            function: name.to_owned(),
            library: PathBuf::from("the kernel"),
            source: Box::new(source),
        })?;
        attached.push(format!("raw tracepoint {name}"));
    }
    let lone = matches!(
        targets,
        Targets::Process {
            follow_forks: false,
            ..
        }
    );
    if lone {
        return Ok(attached);
    }
    attached.push(attach_tracepoint(ebpf, NEW_TASK_TRACEPOINT)?);
    if !matches!(targets, Targets::Process { .. }) {
        attached.push(attach_tracepoint(ebpf, OOM_TRACEPOINT)?);
    }
    Ok(attached)
}

/// Attaches the tracepoint (category, name) to its program; returns its line for `--check`.
fn attach_tracepoint(
    ebpf: &mut Ebpf,
    (category, name, program_name): (&str, &str, &'static str),
) -> Result<String, ProbeError> {
    let program: &mut TracePoint = program_mut(ebpf, program_name)?;
    program.load().map_err(|source| ProbeError::Program {
        name: program_name,
        source: Box::new(source),
    })?;
    program
        .attach(category, name)
        .map_err(|source| ProbeError::Attach {
            what: "tracepoint",
            function: format!("{category}/{name}"),
            library: PathBuf::from("the kernel"),
            source: Box::new(source),
        })?;
    Ok(format!("tracepoint {category}/{name}"))
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, ProbeError> {
    program_mut(ebpf, name)
}

fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, ProbeError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or(ProbeError::Program {
        name,
        source: Box::new(ProgramError::NotLoaded),
    })?;
    program.try_into().map_err(|source| ProbeError::Program {
        name,
        source: Box::new(source),
    })
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name).ok_or_else(|| missing_map(name))
}

fn missing_map(name: &'static str) -> ProbeError {
    map_error(
        name,
        aya::maps::MapError::InvalidName {
            name: name.to_owned(),
        },
    )
}

fn map_error(name: &'static str, source: aya::maps::MapError) -> ProbeError {
    ProbeError::Map {
        name,
        source: Box::new(source),
    }
}

/// Where probes attached at load fire; `None`: none attach at load.
fn uprobe_scope(targets: Targets) -> Option<UProbeScope> {
    match targets {
        Targets::AllProcesses
        | Targets::Process {
            follow_forks: true, ..
        } => Some(UProbeScope::AllProcesses),
        Targets::Process { pid, .. } => Some(UProbeScope::OneProcess(pid)),
        Targets::Selected => None,
    }
}
