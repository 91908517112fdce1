//! Which allocator each process uses, found by symbol in the files of its
//! own root (a container's libc is its own), and why a process is not
//! traced when none is found.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::{
    overlay::layer_candidates,
    probes::{FileFacts, allocators_in_reach, library_in_ldconfig, linker_cache, read_facts},
    stacks::{FileId, Mapping, file_id, parse_maps},
};

/// A file providing a process's allocator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocatorFile {
    /// The file's device and inode beneath any overlay: what the kernel
    /// probes, one file for every container of an image.
    pub id: FileId,
    /// Its device and inode as the process's mount namespace shows it (as
    /// its /proc/PID/maps names it).
    pub view: FileId,
    /// A path that opens it from heapwatch's namespace (through the process's
    /// root, or its map_files entry): valid while the process lives.
    pub path: PathBuf,
    /// The path as the process names it.
    pub shown: PathBuf,
}

/// Why a process is not traced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Untraced {
    /// A runtime with an allocator of its own, not `malloc` (Go).
    OwnRuntime,
    /// A static executable without a symbol table: its allocator cannot be found.
    StrippedStatic,
    /// No file it maps defines an allocator heapwatch knows.
    NotRecognized,
    /// Its allocator's file was found but its probes did not attach (logged).
    AttachFailed,
    /// Traced because it grew, then let go: tracing it cost more than the
    /// overhead budget (scope `tiered`).
    OverBudget,
}

impl Untraced {
    /// Every reason.
    pub const ALL: [Self; 5] = [
        Self::OwnRuntime,
        Self::StrippedStatic,
        Self::NotRecognized,
        Self::AttachFailed,
        Self::OverBudget,
    ];

    /// The reason as metrics and `ps --all` name it.
    pub fn label(self) -> &'static str {
        match self {
            Self::OwnRuntime => "own_runtime",
            Self::StrippedStatic => "stripped_static",
            Self::NotRecognized => "allocator_not_recognized",
            Self::AttachFailed => "attach_failed",
            Self::OverBudget => "over_budget",
        }
    }
}

/// What heapwatch found of a process's allocator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Coverage {
    /// Its allocator is in these files, in search order.
    Traced(Vec<AllocatorFile>),
    /// None found.
    Untraced(Untraced),
}

/// Where libraries are looked for in a root other than the host's (a
/// container's), for want of its linker cache: Debian's and Alpine's and
/// Fedora's layouts.
const LIBRARY_DIRS: [&str; 7] = [
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
];

/// Finds processes' allocators, reading each file once.
pub struct Discovery {
    facts: HashMap<FileId, Option<FileFacts>>,
    ldconfig: String,
    host_root: Option<FileId>,
}

impl Default for Discovery {
    fn default() -> Self {
        Self::new()
    }
}

impl Discovery {
    /// A discovery with this host's linker cache.
    pub fn new() -> Self {
        Self {
            facts: HashMap::new(),
            ldconfig: linker_cache(),
            host_root: file_id(Path::new("/")),
        }
    }

    /// The coverage of a running process, from the files it maps; `None`
    /// for a kernel thread or a process gone.
    pub fn running(&mut self, pid: u32) -> Option<Coverage> {
        let exe = fs::metadata(format!("/proc/{pid}/exe")).ok()?;
        let maps = fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
        let mut files: BTreeMap<FileId, Mapping> = BTreeMap::new();
        for mapping in parse_maps(&maps) {
            files
                .entry((mapping.device, mapping.inode))
                .or_insert(mapping);
        }
        let mountinfo = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
        let mut found = Vec::new();
        for (view, mapping) in files {
            let path = openable(pid, &mapping);
            if self
                .facts_of(view, &path)
                .is_some_and(|facts| facts.allocator)
            {
                found.push(AllocatorFile {
                    id: beneath(&mountinfo, &mapping.path).unwrap_or(view),
                    view,
                    path,
                    shown: mapping.path.to_path_buf(),
                });
            }
        }
        Some(self.coverage(pid, (exe.dev(), exe.ino()), found))
    }

    /// The coverage of a process that has just exec'd, before the dynamic
    /// linker maps its libraries: the files in its reach, in its root.
    pub fn starting(&mut self, pid: u32) -> Option<Coverage> {
        let exe_path = PathBuf::from(format!("/proc/{pid}/exe"));
        let exe = file_id(&exe_path)?;
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let own_root = file_id(&root) == self.host_root;
        let preload = preload_of(pid);
        let ldconfig = self.ldconfig.clone();
        let resolve = |name: &str| {
            if name.contains('/') {
                return Some(within(&root, Path::new(name))).filter(|p| p.is_file());
            }
            if own_root {
                return library_in_ldconfig(&ldconfig, name).map(|p| within(&root, &p));
            }
            LIBRARY_DIRS
                .iter()
                .map(|dir| within(&root, &Path::new(dir).join(name)))
                .find(|path| path.is_file())
        };
        let reach = allocators_in_reach(&exe_path, &preload, resolve, |path| {
            self.facts_of(file_id(path)?, path).cloned()
        });
        let mountinfo = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
        let found = reach
            .into_iter()
            .filter_map(|path| {
                let shown = match path.strip_prefix(&root) {
                    Ok(inner) => Path::new("/").join(inner),
                    Err(_) => fs::read_link(&path).unwrap_or_else(|_| path.clone()),
                };
                let view = file_id(&path)?;
                Some(AllocatorFile {
                    id: beneath(&mountinfo, &shown).unwrap_or(view),
                    view,
                    path,
                    shown,
                })
            })
            .collect();
        Some(self.coverage(pid, exe, found))
    }

    fn coverage(&mut self, pid: u32, exe: FileId, found: Vec<AllocatorFile>) -> Coverage {
        if !found.is_empty() {
            return Coverage::Traced(found);
        }
        let exe_path = PathBuf::from(format!("/proc/{pid}/exe"));
        let facts = self.facts_of(exe, &exe_path);
        Coverage::Untraced(match facts {
            Some(facts) if facts.go => Untraced::OwnRuntime,
            Some(facts) if !facts.dynamic && !facts.symbols => Untraced::StrippedStatic,
            _ => Untraced::NotRecognized,
        })
    }

    /// The facts of file `id`, read from `path` the first time.
    fn facts_of(&mut self, id: FileId, path: &Path) -> Option<&FileFacts> {
        self.facts
            .entry(id)
            .or_insert_with(|| read_facts(path).ok())
            .as_ref()
    }

    /// Forgets what was read of files no longer in `in_use` (a long-running
    /// daemon sees files come and go).
    pub fn retain(&mut self, in_use: impl Fn(&FileId) -> bool) {
        self.facts.retain(|id, _| in_use(id));
    }
}

/// A path in heapwatch's namespace to the file `mapping` of `pid` maps:
/// through the process's root while that names the same inode, else its
/// map_files entry (a file replaced or deleted since).
fn openable(pid: u32, mapping: &Mapping) -> PathBuf {
    let by_root = within(Path::new(&format!("/proc/{pid}/root")), &mapping.path);
    if file_id(&by_root) == Some((mapping.device, mapping.inode)) {
        return by_root;
    }
    PathBuf::from(format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        mapping.start, mapping.end
    ))
}

/// The device and inode of the layer file an overlay shows at `path`, for
/// a process whose mountinfo is `mountinfo`; `None` off an overlay, or
/// where its layers cannot be read from here.
fn beneath(mountinfo: &str, path: &Path) -> Option<FileId> {
    layer_candidates(mountinfo, path)
        .iter()
        .find_map(|candidate| file_id(candidate))
}

/// `path` (absolute) under `root`.
fn within(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Process `pid`'s `LD_PRELOAD` (empty when unset or unreadable).
pub fn preload_of(pid: u32) -> String {
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    environ
        .split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(b"LD_PRELOAD="))
        .map(|value| String::from_utf8_lossy(value).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn libc_of(coverage: Option<Coverage>) -> AllocatorFile {
        let Some(Coverage::Traced(files)) = coverage else {
            panic!("traced: {coverage:?}");
        };
        files
            .into_iter()
            .find(|f| f.shown.file_name().and_then(|n| n.to_str()) == Some("libc.so.6"))
            .expect("the C library")
    }

    #[test]
    fn a_running_process_and_one_starting_find_the_same_c_library() {
        let mut discovery = Discovery::new();
        let pid = std::process::id();
        let running = libc_of(discovery.running(pid));
        let starting = libc_of(discovery.starting(pid));
        assert_eq!(running.id, starting.id);
        assert!(
            running.path.starts_with(format!("/proc/{pid}")),
            "{running:?}"
        );
        assert!(running.shown.is_absolute());
    }

    #[test]
    fn a_kernel_thread_has_no_coverage() {
        // PID 2 is kthreadd wherever PID namespaces are not in play.
        if fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim() == "kthreadd") {
            assert_eq!(Discovery::new().running(2), None);
        }
    }

    #[test]
    fn reasons_have_distinct_labels() {
        let labels = [
            Untraced::OwnRuntime,
            Untraced::StrippedStatic,
            Untraced::NotRecognized,
        ]
        .map(Untraced::label);
        assert_eq!(
            labels.len(),
            labels
                .iter()
                .collect::<std::collections::HashSet<_>>()
                .len()
        );
    }
}
