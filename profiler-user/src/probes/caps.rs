//! Which of the capabilities heapwatch needs are missing.

/// Capabilities that loading and attaching need: (bit, name). The kernel's
/// uprobe perf events (`perf_event_open` of the `uprobe` PMU) refuse callers
/// without CAP_SYS_ADMIN, CAP_PERFMON notwithstanding (measured on 6.18).
const NEEDED: [(u32, &str); 3] = [(39, "CAP_BPF"), (38, "CAP_PERFMON"), (21, "CAP_SYS_ADMIN")];

/// The needed capabilities absent from the `CapEff` line of a /proc/PID/status text.
pub fn missing_capabilities(status: &str) -> Vec<&'static str> {
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    NEEDED
        .iter()
        .filter(|(bit, _)| effective & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::missing_capabilities;

    #[test]
    fn root_has_everything() {
        assert!(missing_capabilities("Name:\tx\nCapEff:\t000001ffffffffff\n").is_empty());
    }

    #[test]
    fn unprivileged_lacks_all() {
        assert_eq!(
            missing_capabilities("CapEff:\t0000000000000000\n"),
            ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN"]
        );
        assert_eq!(
            missing_capabilities(""),
            ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN"]
        );
    }

    #[test]
    fn names_only_what_is_missing() {
        let status = format!("CapEff:\t{:016x}\n", 1u64 << 39 | 1 << 21);
        assert_eq!(missing_capabilities(&status), ["CAP_PERFMON"]);
    }
}
