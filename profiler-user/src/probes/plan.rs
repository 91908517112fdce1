//! Which functions of an allocator's file are probed, and where: the malloc
//! family under its plain names and under the prefixes of jemalloc's,
//! mimalloc's and tcmalloc's own exports, jemalloc's non-standard calls, and
//! the C++ `operator new` and `delete` an allocator defines itself (tcmalloc,
//! mimalloc: theirs do not call `malloc`). Names at one address are probed
//! once; a function that calls another probed one (an interposer over the C
//! library) is counted once by the kernel's rule for nested calls.

use std::path::{Path, PathBuf};

use super::{
    NullFirstArg, Placement, ProbeError, place,
    symbols::{self, SymbolTable},
};

/// What probes one kind of allocator function: the program at its entry,
/// whether its return is probed too, and what a NULL first argument means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Kind {
    /// The tracing program at the function's entry.
    pub entry: &'static str,
    /// Its return is probed too (it returns a block).
    pub returns: bool,
    /// What a NULL first argument does.
    pub null: NullFirstArg,
}

const fn kind(entry: &'static str, returns: bool, null: NullFirstArg) -> Kind {
    Kind {
        entry,
        returns,
        null,
    }
}

const SIZE_ARG0: Kind = kind("size_arg0_entry", true, NullFirstArg::Matters);
const SIZE_ARG1: Kind = kind("size_arg1_entry", true, NullFirstArg::Matters);
const CALLOC: Kind = kind("calloc_entry", true, NullFirstArg::Matters);
const REALLOC: Kind = kind("realloc_entry", true, NullFirstArg::Matters);
const REALLOCARRAY: Kind = kind("reallocarray_entry", true, NullFirstArg::Matters);
const POSIX_MEMALIGN: Kind = kind("posix_memalign_entry", true, NullFirstArg::Matters);
const FREE: Kind = kind("free_entry", false, NullFirstArg::DoesNothing);
const THREAD_EXIT: Kind = kind("thread_exit_entry", false, NullFirstArg::Matters);

/// The malloc family by its plain names; the first is what marks a file as
/// an allocator's. glibc's first step of a thread's exit ends it (after which
/// a free of a block not live is glibc emptying its per-thread cache).
const FAMILY: [(&str, Kind); 15] = [
    ("malloc", SIZE_ARG0),
    ("calloc", CALLOC),
    ("realloc", REALLOC),
    ("free", FREE),
    ("reallocarray", REALLOCARRAY),
    ("posix_memalign", POSIX_MEMALIGN),
    ("aligned_alloc", SIZE_ARG1),
    ("memalign", SIZE_ARG1),
    ("valloc", SIZE_ARG0),
    ("pvalloc", SIZE_ARG0),
    // jemalloc's own: (size, flags), (ptr, size, flags), (ptr, [size,] flags).
    ("mallocx", SIZE_ARG0),
    ("rallocx", REALLOC),
    ("dallocx", FREE),
    ("sdallocx", FREE),
    ("__call_tls_dtors", THREAD_EXIT),
];

/// The first functions of [`FAMILY`]: C's and POSIX's, whose absence
/// `--check` and reports mention.
const STANDARD: usize = 10;

/// The prefixes under which allocators export the family besides (or
/// instead of) the plain names: jemalloc's prefixed builds (`je_`, and
/// `_rjem_` as Rust's jemallocator links it), mimalloc's and tcmalloc's API.
pub const PREFIXES: [&str; 4] = ["je_", "_rjem_", "mi_", "tc_"];

/// Allocation calls of mimalloc's own API.
const MIMALLOC_EXTRA: [(&str, Kind); 4] = [
    ("mi_zalloc", SIZE_ARG0),
    ("mi_malloc_aligned", SIZE_ARG0),
    ("mi_zalloc_aligned", SIZE_ARG0),
    ("mi_free_size", FREE),
];

/// C++ `operator new` (plain, nothrow, aligned; single and array) and
/// `operator delete` (plain, sized, aligned, nothrow), probed where the
/// allocator defines them: such an allocator's do not call its `malloc`.
const CXX_OPERATORS: [(&str, Kind); 20] = [
    ("_Znwm", SIZE_ARG0),
    ("_Znam", SIZE_ARG0),
    ("_ZnwmRKSt9nothrow_t", SIZE_ARG0),
    ("_ZnamRKSt9nothrow_t", SIZE_ARG0),
    ("_ZnwmSt11align_val_t", SIZE_ARG0),
    ("_ZnamSt11align_val_t", SIZE_ARG0),
    ("_ZnwmSt11align_val_tRKSt9nothrow_t", SIZE_ARG0),
    ("_ZnamSt11align_val_tRKSt9nothrow_t", SIZE_ARG0),
    ("_ZdlPv", FREE),
    ("_ZdaPv", FREE),
    ("_ZdlPvm", FREE),
    ("_ZdaPvm", FREE),
    ("_ZdlPvSt11align_val_t", FREE),
    ("_ZdaPvSt11align_val_t", FREE),
    ("_ZdlPvmSt11align_val_t", FREE),
    ("_ZdaPvmSt11align_val_t", FREE),
    ("_ZdlPvRKSt9nothrow_t", FREE),
    ("_ZdaPvRKSt9nothrow_t", FREE),
    ("_ZdlPvSt11align_val_tRKSt9nothrow_t", FREE),
    ("_ZdaPvSt11align_val_tRKSt9nothrow_t", FREE),
];

/// Every entry program an allocator's probes may run.
pub(super) const ENTRY_PROGRAMS: [&str; 8] = [
    SIZE_ARG0.entry,
    SIZE_ARG1.entry,
    CALLOC.entry,
    REALLOC.entry,
    REALLOCARRAY.entry,
    POSIX_MEMALIGN.entry,
    FREE.entry,
    THREAD_EXIT.entry,
];

/// One function's probes, placed.
#[derive(Clone, Debug)]
pub(super) struct PlannedProbe {
    /// The symbol probed.
    pub symbol: String,
    /// What probes it.
    pub kind: Kind,
    /// From the file's start.
    pub file_offset: u64,
}

/// Where the probes of one allocator's file go.
#[derive(Clone, Debug)]
pub struct AllocatorPlan {
    /// The file, by a path heapwatch can open (for a container's, through
    /// its process's root).
    pub path: PathBuf,
    pub(super) probes: Vec<PlannedProbe>,
    /// Plain-named functions of the family the file lacks (some allocators
    /// lack the rarer ones; a static build keeps only what it calls).
    pub absent: Vec<String>,
    /// What is probed, one line each, for `--check`.
    pub lines: Vec<String>,
}

/// True when the file whose symbols are `table` provides an allocator:
/// it defines `malloc` under its plain name or a prefix.
pub fn provides_allocator(defines: impl Fn(&str) -> bool) -> bool {
    defines("malloc")
        || PREFIXES
            .iter()
            .any(|prefix| defines(&format!("{prefix}malloc")))
}

/// Every (symbol, kind) worth probing, in order of preference among aliases.
fn candidates() -> Vec<(String, Kind)> {
    let mut all: Vec<(String, Kind)> = FAMILY
        .iter()
        .map(|&(name, kind)| (name.to_owned(), kind))
        .collect();
    for prefix in PREFIXES {
        all.extend(
            FAMILY
                .iter()
                .filter(|(name, _)| !name.starts_with("__"))
                .map(|&(name, kind)| (format!("{prefix}{name}"), kind)),
        );
    }
    all.extend(
        MIMALLOC_EXTRA
            .iter()
            .chain(&CXX_OPERATORS)
            .map(|&(name, kind)| (name.to_owned(), kind)),
    );
    all
}

/// Plans the probes of the allocator in `path`; `at_entry` puts each at
/// the function's first instruction (the benchmark's floor) instead of its
/// placement. An error when the file cannot be read or defines no `malloc`.
pub fn plan_allocator(path: &Path, at_entry: bool) -> Result<AllocatorPlan, ProbeError> {
    let candidates = candidates();
    let names: Vec<&str> = candidates.iter().map(|(name, _)| name.as_str()).collect();
    let table = symbols::read_symbols(path, &names).map_err(|source| ProbeError::Symbols {
        library: path.to_owned(),
        source,
    })?;
    plan_from_table(path, &table, &candidates, at_entry)
}

fn plan_from_table(
    path: &Path,
    table: &SymbolTable,
    candidates: &[(String, Kind)],
    at_entry: bool,
) -> Result<AllocatorPlan, ProbeError> {
    if !provides_allocator(|name| table.file_offsets.contains_key(name)) {
        return Err(ProbeError::MissingFunction {
            function: "malloc",
            library: path.to_owned(),
        });
    }
    let names: Vec<&str> = candidates.iter().map(|(name, _)| name.as_str()).collect();
    let aliases = symbols::aliases(&names, &table.addresses);
    let mut plan = AllocatorPlan {
        path: path.to_owned(),
        probes: Vec::new(),
        absent: Vec::new(),
        lines: Vec::new(),
    };
    let plain_malloc = table.file_offsets.contains_key("malloc");
    for (name, kind) in candidates {
        let Some(&start) = table.file_offsets.get(name) else {
            if plain_malloc && FAMILY[..STANDARD].iter().any(|(plain, _)| plain == name) {
                plan.absent.push(name.clone());
            }
            continue;
        };
        if let Some(probed) = aliases.get(name.as_str()) {
            plan.lines.push(format!(
                "{name} is {probed} in {} (probed once)",
                path.display()
            ));
            continue;
        }
        let placement = if at_entry {
            Placement::entry()
        } else {
            let prologue = table.prologues.get(name);
            place(prologue.map_or(&[][..], Vec::as_slice), kind.null)
        };
        let kinds = if kind.returns {
            "uprobe+uretprobe"
        } else {
            "uprobe"
        };
        plan.lines.push(format!(
            "{kinds} {name} in {} at {name}+{}: {}",
            path.display(),
            placement.offset,
            placement.reason
        ));
        plan.probes.push(PlannedProbe {
            symbol: name.clone(),
            kind: *kind,
            file_offset: start + placement.offset,
        });
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A symbol table of functions at the given addresses (file offsets alike).
    fn table(symbols: &[(&str, u64)]) -> SymbolTable {
        let addresses: HashMap<String, u64> = symbols
            .iter()
            .map(|&(name, address)| (name.to_owned(), address))
            .collect();
        SymbolTable {
            file_offsets: addresses.clone(),
            addresses,
            prologues: HashMap::new(),
        }
    }

    fn probed(symbols: &[(&str, u64)]) -> Vec<(String, &'static str)> {
        plan_from_table(Path::new("/lib/x.so"), &table(symbols), &candidates(), true)
            .expect("an allocator")
            .probes
            .into_iter()
            .map(|p| (p.symbol, p.kind.entry))
            .collect()
    }

    #[test]
    fn rusts_jemalloc_is_probed_by_its_prefixed_names() {
        let probes = probed(&[
            ("_rjem_malloc", 0x10),
            ("_rjem_mallocx", 0x20),
            ("_rjem_sdallocx", 0x30),
            ("_rjem_rallocx", 0x40),
            ("_rjem_calloc", 0x50),
            ("_rjem_free", 0x60),
            ("unrelated", 0x70),
        ]);
        assert_eq!(
            probes,
            [
                ("_rjem_malloc".to_owned(), "size_arg0_entry"),
                ("_rjem_calloc".to_owned(), "calloc_entry"),
                ("_rjem_free".to_owned(), "free_entry"),
                ("_rjem_mallocx".to_owned(), "size_arg0_entry"),
                ("_rjem_rallocx".to_owned(), "realloc_entry"),
                ("_rjem_sdallocx".to_owned(), "free_entry"),
            ]
        );
    }

    #[test]
    fn aliases_are_probed_once_and_operators_an_allocator_defines_too() {
        let probes = probed(&[
            ("malloc", 0x10),
            ("tc_malloc", 0x10),
            ("free", 0x20),
            ("tc_free", 0x20),
            ("_Znwm", 0x30),
            ("_ZdlPv", 0x40),
            ("_ZdlPvm", 0x40),
        ]);
        assert_eq!(
            probes,
            [
                ("malloc".to_owned(), "size_arg0_entry"),
                ("free".to_owned(), "free_entry"),
                ("_Znwm".to_owned(), "size_arg0_entry"),
                ("_ZdlPv".to_owned(), "free_entry"),
            ]
        );
    }

    #[test]
    fn a_file_without_malloc_is_no_allocator() {
        let error = plan_from_table(
            Path::new("/lib/libstdc++.so.6"),
            &table(&[("_Znwm", 0x10), ("free_list", 0x20)]),
            &candidates(),
            true,
        )
        .expect_err("no malloc");
        assert!(error.to_string().contains("malloc"), "{error}");
    }

    #[test]
    fn only_the_plain_familys_absences_are_reported() {
        let plan = plan_from_table(
            Path::new("/lib/x.so"),
            &table(&[("malloc", 0x10), ("free", 0x20)]),
            &candidates(),
            true,
        )
        .expect("an allocator");
        assert!(plan.absent.contains(&"calloc".to_owned()));
        assert!(plan.absent.iter().all(|name| !name.contains('_')
            || name == "posix_memalign"
            || name == "aligned_alloc"));
    }

    #[test]
    fn every_kind_runs_a_known_entry_program() {
        for (_, kind) in candidates() {
            assert!(ENTRY_PROGRAMS.contains(&kind.entry), "{}", kind.entry);
        }
    }
}
