//! What /proc says about a process: its labels for metrics (command name and
//! unit: systemd unit, container id, or cgroup path), its owner, whether it
//! is a kernel thread; and the clock the kernel stamps events with.

use std::fs;

use crate::container::{Container, Runtime};

/// The labels heapwatch exports for a process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessLabels {
    /// The command name (/proc/PID/comm).
    pub comm: String,
    /// The systemd unit, container id, or cgroup path.
    pub unit: String,
    /// The container runtime, where the cgroup path names it (else empty).
    pub runtime: String,
    /// The Kubernetes pod's uid, where the cgroup path names it (else empty).
    pub pod_uid: String,
}

impl ProcessLabels {
    /// Reads a live process's labels; a process already gone gets empty ones.
    pub fn read(pid: u32) -> Self {
        let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let container = Container::from_cgroup(&cgroup);
        Self {
            comm: comm(pid).unwrap_or_default(),
            unit: unit_from_cgroup(&cgroup),
            runtime: container
                .as_ref()
                .and_then(|c| c.runtime)
                .map_or("", Runtime::name)
                .to_owned(),
            pod_uid: container.and_then(|c| c.pod_uid).unwrap_or_default(),
        }
    }
}

/// The command name of process `pid` (/proc/PID/comm), if it exists.
pub fn comm(pid: u32) -> Option<String> {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.trim_end().to_owned())
}

/// The real uid owning process `pid`, if it exists.
pub fn owner(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().next())
        .and_then(|uid| uid.parse().ok())
}

/// `PF_KTHREAD` in the flags of /proc/PID/stat.
const PF_KTHREAD: u64 = 0x0020_0000;

/// True for a kernel thread (`PF_KTHREAD` in its flags). A process on its
/// way out has no memory map either, but is not one.
pub fn is_kernel_thread(pid: u32) -> bool {
    read_stat(pid).is_some_and(|(_, flags)| flags & PF_KTHREAD != 0)
}

/// True for a process that has exited and awaits its parent (a zombie).
pub fn has_exited(pid: u32) -> bool {
    read_stat(pid).is_some_and(|(state, _)| matches!(state, 'Z' | 'X'))
}

/// True for a process the kernel runs: neither gone nor a zombie.
pub fn is_running(pid: u32) -> bool {
    read_stat(pid).is_some_and(|(state, _)| !matches!(state, 'Z' | 'X'))
}

/// The state and flags of process `pid`.
fn read_stat(pid: u32) -> Option<(char, u64)> {
    stat_state_and_flags(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The state (3rd field) and flags (9th) of a /proc/PID/stat line; the
/// command name before them may hold spaces and parentheses.
fn stat_state_and_flags(stat: &str) -> Option<(char, u64)> {
    let mut fields = stat.rsplit_once(") ")?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let flags = fields.nth(5)?.parse().ok()?;
    Some((state, flags))
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// The unit of a /proc/PID/cgroup text: the innermost systemd unit
/// (`*.service`, `*.scope`, ...), else a 64-hex-digit container id, else the
/// cgroup path (v2's `0::` line, or the first line's path).
pub fn unit_from_cgroup(cgroup: &str) -> String {
    let path = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .or_else(|| cgroup.lines().next().and_then(|l| l.splitn(3, ':').nth(2)))
        .unwrap_or("")
        .trim();
    if let Some(container) = Container::from_cgroup(cgroup) {
        return container.id;
    }
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    const UNIT_SUFFIXES: [&str; 4] = [".service", ".scope", ".socket", ".timer"];
    if let Some(unit) = components
        .iter()
        .rev()
        .find(|c| UNIT_SUFFIXES.iter().any(|s| c.ends_with(s)))
    {
        return (*unit).to_owned();
    }
    if path.is_empty() {
        "/".to_owned()
    } else {
        path.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c8a3b2d9e0f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a";

    #[test]
    fn kernel_threads_and_exited_processes_by_their_stat() {
        let kthreadd = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 3 0";
        assert_eq!(stat_state_and_flags(kthreadd), Some(('S', 2_129_984)));
        assert_ne!(2_129_984 & PF_KTHREAD, 0);
        let exiting = "4242 (a) b (c)) Z 1 4242 4242 0 -1 4227340 10 0 0 0 0 0 0 0 20 0 1 0 9 0";
        let (state, flags) = stat_state_and_flags(exiting).expect("parsed");
        assert_eq!(state, 'Z');
        assert_eq!(flags & PF_KTHREAD, 0);
        assert_eq!(stat_state_and_flags("4242 (x"), None);
    }

    #[test]
    fn this_process_is_neither_a_kernel_thread_nor_exited() {
        assert!(!is_kernel_thread(std::process::id()));
        assert!(!has_exited(std::process::id()));
    }

    #[test]
    fn systemd_units() {
        assert_eq!(
            unit_from_cgroup("0::/system.slice/nginx.service\n"),
            "nginx.service"
        );
        assert_eq!(
            unit_from_cgroup("0::/user.slice/user-1000.slice/session-3.scope\n"),
            "session-3.scope"
        );
    }

    #[test]
    fn containers() {
        let docker = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(unit_from_cgroup(&docker), ID);
        let kube = format!("0::/kubepods/burstable/pod1234/{ID}\n");
        assert_eq!(unit_from_cgroup(&kube), ID);
    }

    #[test]
    fn plain_paths_and_cgroup_v1() {
        assert_eq!(unit_from_cgroup("0::/\n"), "/");
        assert_eq!(unit_from_cgroup("0::/batch/jobs\n"), "/batch/jobs");
        assert_eq!(
            unit_from_cgroup("12:memory:/system.slice/cron.service\n"),
            "cron.service"
        );
        assert_eq!(unit_from_cgroup(""), "/");
    }
}
