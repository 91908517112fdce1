//! Which processes the daemon traces: every one, or those a selector picks
//! by PID, command name, systemd unit or cgroup. Pure but for reading a
//! process's facts from /proc.

use std::{fmt, fs, num::NonZeroU32, str::FromStr};

use thiserror::Error;

use crate::procinfo::unit_from_cgroup;

/// The processes traced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every process on the machine but heapwatch itself, traced exactly
    /// (every allocator call traps: the costly choice).
    All,
    /// The processes any of these selectors picks; probes are attached to
    /// each alone, so that the others run untouched.
    Only(Vec<Selector>),
    /// Every process watched from the kernel (its anonymous memory), and
    /// traced exactly only while it keeps growing, on request, or when one
    /// of these selectors picks it (pinned).
    Tiered(Vec<Selector>),
}

impl Default for Scope {
    /// Tiers, nothing pinned: always on at no cost to processes that do not grow.
    fn default() -> Self {
        Self::Tiered(Vec::new())
    }
}

/// One rule picking processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// The process with this PID.
    Pid(NonZeroU32),
    /// Processes with this command name (/proc/PID/comm, at most 15 bytes).
    Comm(String),
    /// Processes of this systemd unit (or container id), as the
    /// `heapwatch_process_*` metrics label it.
    Unit(String),
    /// Processes in this cgroup (v2 path) or below it.
    Cgroup(String),
}

/// Why a scope could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ScopeError {
    /// Not `KIND:VALUE` with a known kind.
    #[error(
        "scope `{0}` is not `all`, `tiered`, `pid:N`, `comm:NAME`, `unit:NAME` or `cgroup:/PATH` (for example --scope unit:nginx.service)"
    )]
    Syntax(String),
    /// A value that cannot select anything.
    #[error("scope `{text}`: {why}")]
    Value {
        /// The selector as given.
        text: String,
        /// What is wrong with its value.
        why: &'static str,
    },
    /// `all` together with selectors.
    #[error("scope `all` cannot be combined with selectors: give either `all` or selectors")]
    AllWithSelectors,
    /// `all` together with `tiered`.
    #[error(
        "scope `all` cannot be combined with `tiered`: give one (`tiered` takes selectors of processes to trace always)"
    )]
    AllWithTiered,
}

/// The longest command name the kernel keeps.
const COMM_MAX: usize = 15;

impl FromStr for Selector {
    type Err = ScopeError;

    fn from_str(text: &str) -> Result<Self, ScopeError> {
        let (kind, value) = text
            .split_once(':')
            .ok_or_else(|| ScopeError::Syntax(text.to_owned()))?;
        let invalid = |why| ScopeError::Value {
            text: text.to_owned(),
            why,
        };
        match kind {
            "pid" => value
                .parse::<u32>()
                .ok()
                .and_then(NonZeroU32::new)
                .map(Selector::Pid)
                .ok_or_else(|| invalid("a PID is a whole number from 1")),
            "comm" if value.is_empty() => Err(invalid("the command name is empty")),
            "comm" if value.len() > COMM_MAX => Err(invalid(
                "the kernel keeps at most 15 bytes of a command name: give its first 15",
            )),
            "comm" => Ok(Selector::Comm(value.to_owned())),
            "unit" if value.is_empty() => Err(invalid("the unit name is empty")),
            "unit" => Ok(Selector::Unit(value.to_owned())),
            "cgroup" if !value.starts_with('/') => Err(invalid(
                "a cgroup is an absolute path in the cgroup tree, for example /system.slice",
            )),
            "cgroup" => Ok(Selector::Cgroup(normalize_cgroup(value))),
            _ => Err(ScopeError::Syntax(text.to_owned())),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pid(pid) => write!(f, "pid:{pid}"),
            Self::Comm(comm) => write!(f, "comm:{comm}"),
            Self::Unit(unit) => write!(f, "unit:{unit}"),
            Self::Cgroup(path) => write!(f, "cgroup:{path}"),
        }
    }
}

impl Scope {
    /// Reads `--scope` values (or the config's `scope` list): none is
    /// tiers (the default); `all` is every process, exactly; `tiered`, with
    /// any selectors pinned; otherwise each names a selector.
    pub fn parse(values: &[String]) -> Result<Self, ScopeError> {
        let tiered = values.iter().any(|v| v == TIERED);
        let all = values.iter().any(|v| v == ALL);
        let selectors = || -> Result<Vec<Selector>, ScopeError> {
            values
                .iter()
                .filter(|v| *v != TIERED)
                .map(|v| v.parse())
                .collect()
        };
        match values {
            [] => Ok(Self::default()),
            [only] if only == ALL => Ok(Self::All),
            _ if all && tiered => Err(ScopeError::AllWithTiered),
            _ if all => Err(ScopeError::AllWithSelectors),
            _ if tiered => selectors().map(Self::Tiered),
            _ => selectors().map(Self::Only),
        }
    }

    /// True when the process these facts describe is traced.
    pub fn selects(&self, process: &ProcessFacts) -> bool {
        match self {
            Self::All => true,
            Self::Only(selectors) | Self::Tiered(selectors) => {
                selectors.iter().any(|s| s.matches(process))
            }
        }
    }
}

/// The scope of every process, traced exactly.
const ALL: &str = "all";
/// The scope of tiers.
const TIERED: &str = "tiered";

impl Selector {
    /// True when this selector picks the process.
    pub fn matches(&self, process: &ProcessFacts) -> bool {
        match self {
            Self::Pid(pid) => pid.get() == process.pid,
            Self::Comm(comm) => *comm == process.comm,
            Self::Unit(unit) => *unit == process.unit,
            Self::Cgroup(path) => in_cgroup(&process.cgroup, path),
        }
    }
}

/// What selectors look at in a process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessFacts {
    /// Its PID.
    pub pid: u32,
    /// Its command name.
    pub comm: String,
    /// Its systemd unit or container id (empty when neither).
    pub unit: String,
    /// Its cgroup v2 path.
    pub cgroup: String,
}

impl ProcessFacts {
    /// Reads a live process's facts; `None` when it is gone (or a kernel thread).
    pub fn read(pid: u32) -> Option<Self> {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        Some(Self {
            pid,
            comm: comm.trim_end().to_owned(),
            unit: unit_from_cgroup(&cgroup),
            cgroup: cgroup_path(&cgroup),
        })
    }
}

/// The cgroup v2 path in a /proc/PID/cgroup text (`0::/path`).
fn cgroup_path(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(normalize_cgroup)
        .unwrap_or_default()
}

fn normalize_cgroup(path: &str) -> String {
    match path.trim().trim_end_matches('/') {
        "" => "/".to_owned(),
        trimmed => trimmed.to_owned(),
    }
}

/// True when `cgroup` is `path` or lies below it.
fn in_cgroup(cgroup: &str, path: &str) -> bool {
    path == "/"
        || cgroup == path
        || cgroup
            .strip_prefix(path)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn facts(pid: u32, comm: &str, cgroup: &str) -> ProcessFacts {
        let text = format!("0::{cgroup}\n");
        ProcessFacts {
            pid,
            comm: comm.to_owned(),
            unit: unit_from_cgroup(&text),
            cgroup: cgroup_path(&text),
        }
    }

    fn selection(values: &[&str]) -> Result<Scope, ScopeError> {
        Scope::parse(&values.iter().map(|v| (*v).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn tiers_are_the_default_and_all_stands_alone() {
        assert_eq!(selection(&[]), Ok(Scope::Tiered(vec![])));
        assert_eq!(selection(&[]), selection(&["tiered"]));
        assert_eq!(selection(&["all"]), Ok(Scope::All));
        assert_eq!(
            selection(&["all", "pid:1"]),
            Err(ScopeError::AllWithSelectors)
        );
    }

    #[test]
    fn tiered_takes_selectors_to_pin_and_not_all() {
        assert_eq!(selection(&["tiered"]), Ok(Scope::Tiered(vec![])));
        assert_eq!(
            selection(&["comm:nginx", "tiered"]),
            Ok(Scope::Tiered(vec![Selector::Comm("nginx".to_owned())]))
        );
        assert_eq!(
            selection(&["tiered", "all"]),
            Err(ScopeError::AllWithTiered)
        );
        let pinned = selection(&["tiered", "comm:nginx"]).unwrap();
        assert!(pinned.selects(&facts(1, "nginx", "/")));
        assert!(
            !pinned.selects(&facts(2, "bash", "/")),
            "others only on growth"
        );
    }

    #[test]
    fn each_kind_of_selector_parses_and_prints_back() {
        for text in [
            "pid:42",
            "comm:nginx",
            "unit:nginx.service",
            "cgroup:/system.slice",
        ] {
            let selector: Selector = text.parse().expect(text);
            assert_eq!(selector.to_string(), text);
        }
        assert_eq!(
            "cgroup:/system.slice/".parse(),
            Ok(Selector::Cgroup("/system.slice".to_owned()))
        );
    }

    #[test]
    fn bad_selectors_say_what_is_wrong() {
        for (text, expected) in [
            ("nginx", "is not `all`"),
            ("name:nginx", "is not `all`"),
            ("pid:0", "whole number from 1"),
            ("pid:-3", "whole number from 1"),
            ("pid:abc", "whole number from 1"),
            ("pid:99999999999", "whole number from 1"),
            ("comm:", "empty"),
            ("comm:a-very-long-command-name", "at most 15 bytes"),
            ("unit:", "empty"),
            ("cgroup:system.slice", "absolute path"),
        ] {
            let err = text.parse::<Selector>().expect_err(text).to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn selectors_pick_by_pid_name_unit_and_cgroup_subtree() {
        let web = facts(100, "nginx", "/system.slice/nginx.service");
        let shell = facts(200, "bash", "/user.slice/user-0.slice/session-1.scope");
        let pick = |text: &str, p: &ProcessFacts| text.parse::<Selector>().unwrap().matches(p);
        assert!(pick("pid:100", &web) && !pick("pid:100", &shell));
        assert!(pick("comm:nginx", &web) && !pick("comm:nginx", &shell));
        assert!(pick("unit:nginx.service", &web) && !pick("unit:nginx.service", &shell));
        assert!(pick("cgroup:/system.slice", &web) && !pick("cgroup:/system.slice", &shell));
        assert!(pick("cgroup:/system.slice/nginx.service", &web));
        assert!(!pick("cgroup:/system", &web), "a prefix is not a parent");
        assert!(pick("cgroup:/", &shell));
        let either = selection(&["comm:bash", "pid:100"]).unwrap();
        assert!(either.selects(&web) && either.selects(&shell));
        assert!(!either.selects(&facts(300, "sleep", "/")));
    }

    #[test]
    fn this_process_facts_are_read_from_proc() {
        let me = ProcessFacts::read(std::process::id()).expect("this process");
        assert_eq!(me.pid, std::process::id());
        assert!(!me.comm.is_empty());
        assert!(me.cgroup.starts_with('/'), "{me:?}");
        assert!(ProcessFacts::read(0).is_none());
    }

    proptest! {
        /// Any text parses to a selector or an error, never a panic; a selector prints back to itself.
        #[test]
        fn parsing_never_panics(text in ".{0,40}") {
            if let Ok(selector) = text.parse::<Selector>() {
                prop_assert_eq!(selector.to_string().parse::<Selector>(), Ok(selector));
            }
        }
    }
}
