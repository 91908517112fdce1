//! Which files provide a process's allocator, found by symbol: every ELF
//! file in its reach that defines `malloc` (under its plain name or a
//! prefix). Before it runs, its reach is the dynamic linker's search order —
//! the executable itself (a static build with its symbols), then
//! `LD_PRELOAD`, then the libraries it needs, breadth first; once it runs,
//! the files it maps. The first in search order is whose `malloc` the
//! program calls; the others (the C library under an interposer, a prefixed
//! jemalloc beside it) are probed too: what is never called costs nothing,
//! and a nested call is counted once by the kernel's rule.

use std::{
    collections::{HashSet, VecDeque},
    fs::File,
    io,
    path::{Path, PathBuf},
};

use object::{
    Object, ObjectSymbol,
    read::elf::{Dyn, ElfFile64},
};

use super::{libc::library_in_ldconfig, plan::provides_allocator};

/// What finding allocators needs to know of one ELF file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileFacts {
    /// It defines `malloc`, plainly or prefixed.
    pub allocator: bool,
    /// The sonames it needs (`DT_NEEDED`), in order.
    pub needed: Vec<String>,
    /// It is linked dynamically (it has a dynamic section).
    pub dynamic: bool,
    /// It has a symbol table beyond the dynamic one (not stripped).
    pub symbols: bool,
    /// It is a Go program (its runtime allocates without `malloc`).
    pub go: bool,
}

/// Reads the facts of the ELF file at `path` (mapped, not read whole).
pub fn read_facts(path: &Path) -> io::Result<FileFacts> {
    let file = File::open(path)?;
    // SAFETY: the mapping is read-only and private; a file changed under it
    // at worst gives wrong facts, which the ELF parser checks for bounds.
    let data = unsafe { memmap2::Mmap::map(&file)? };
    let elf = ElfFile64::<object::Endianness>::parse(&*data).map_err(io::Error::other)?;
    let defined: HashSet<&[u8]> = elf
        .dynamic_symbols()
        .chain(elf.symbols())
        .filter(|symbol| symbol.is_definition())
        .filter_map(|symbol| symbol.name_bytes().ok())
        .collect();
    Ok(FileFacts {
        allocator: provides_allocator(|name| defined.contains(name.as_bytes())),
        needed: needed(&elf),
        dynamic: elf
            .elf_section_table()
            .dynamic(elf.endian(), elf.data())
            .ok()
            .flatten()
            .is_some(),
        symbols: elf.symbols().next().is_some(),
        go: elf.section_by_name(".go.buildinfo").is_some()
            || elf.section_by_name(".gopclntab").is_some(),
    })
}

/// The sonames the file needs (`DT_NEEDED`), in order.
fn needed(elf: &ElfFile64<'_, object::Endianness>) -> Vec<String> {
    let endian = elf.endian();
    let data = elf.data();
    let sections = elf.elf_section_table();
    let Ok(Some((entries, link))) = sections.dynamic(endian, data) else {
        return Vec::new();
    };
    let Ok(strings) = sections.strings(endian, data, link) else {
        return Vec::new();
    };
    entries
        .iter()
        .filter(|entry| entry.tag(endian) == object::elf::DT_NEEDED)
        .filter_map(|entry| entry.string(endian, strings).ok())
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .collect()
}

/// Every file in the reach of `program` run with `LD_PRELOAD` set to
/// `preload` (space- or colon-separated) that provides an allocator, in
/// search order; `resolve` finds a library by the name `DT_NEEDED` or
/// `LD_PRELOAD` gives, `facts` reads a file's.
pub fn allocators_in_reach(
    program: &Path,
    preload: &str,
    resolve: impl Fn(&str) -> Option<PathBuf>,
    mut facts: impl FnMut(&Path) -> Option<FileFacts>,
) -> Vec<PathBuf> {
    let mut queue: VecDeque<PathBuf> = VecDeque::from([program.to_owned()]);
    queue.extend(
        preload
            .split([' ', ':'])
            .filter(|name| !name.is_empty())
            .filter_map(&resolve),
    );
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    while let Some(path) = queue.pop_front() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let Some(facts) = facts(&path) else {
            continue;
        };
        if facts.allocator {
            found.push(path);
        }
        queue.extend(facts.needed.iter().filter_map(|name| resolve(name)));
    }
    found
}

/// The files providing the allocator of `program` as this machine's
/// dynamic linker would load it (`ldconfig`: the text of `ldconfig -p`).
pub fn allocators_of(program: &Path, preload: &str, ldconfig: &str) -> Vec<PathBuf> {
    allocators_in_reach(
        program,
        preload,
        |name| resolve_in(name, ldconfig),
        |path| read_facts(path).ok(),
    )
}

/// A library named as `DT_NEEDED` or `LD_PRELOAD` name it: a path, or a
/// soname the linker cache knows.
fn resolve_in(name: &str, ldconfig: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name)).filter(|path| path.is_file());
    }
    library_in_ldconfig(ldconfig, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ldconfig -p` of this machine.
    fn ldconfig() -> String {
        let output = std::process::Command::new("ldconfig")
            .arg("-p")
            .output()
            .expect("run ldconfig -p");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn first(program: &str, preload: &str) -> Option<PathBuf> {
        allocators_of(Path::new(program), preload, &ldconfig())
            .into_iter()
            .next()
    }

    #[test]
    fn a_program_on_the_c_library_gets_the_c_library() {
        let found = first("/bin/true", "").expect("found");
        assert_eq!(
            found.file_name().and_then(|n| n.to_str()),
            Some("libc.so.6"),
            "{found:?}"
        );
    }

    #[test]
    fn a_preloaded_library_defining_malloc_comes_first() {
        let libc = first("/bin/true", "").expect("libc");
        let path = libc.to_str().expect("utf-8");
        assert_eq!(
            first("/bin/true", &format!(" {path} ")),
            Some(libc.clone()),
            "a path preloaded"
        );
        assert_eq!(
            first("/no/such/program", "libc.so.6"),
            Some(libc),
            "a soname preloaded, the program unreadable"
        );
        assert_eq!(first("/no/such/program", ""), None);
    }

    #[test]
    fn every_allocator_in_reach_is_found_in_search_order() {
        // A program needing a.so and b.so; b.so needs c.so; a.so and c.so
        // define malloc.
        let facts = |path: &Path| {
            let name = path.to_str()?;
            Some(FileFacts {
                allocator: matches!(name, "a.so" | "c.so"),
                needed: match name {
                    "prog" => vec!["a.so".to_owned(), "b.so".to_owned()],
                    "b.so" => vec!["c.so".to_owned(), "a.so".to_owned()],
                    _ => Vec::new(),
                },
                ..FileFacts::default()
            })
        };
        let found = allocators_in_reach(Path::new("prog"), "", |n| Some(PathBuf::from(n)), facts);
        assert_eq!(found, [PathBuf::from("a.so"), PathBuf::from("c.so")]);
    }

    #[test]
    fn facts_of_this_machines_files() {
        let libc = first("/bin/true", "").expect("libc");
        let facts = read_facts(&libc).expect("libc's facts");
        assert!(facts.allocator && facts.dynamic && !facts.go);
        let own = read_facts(Path::new("/proc/self/exe")).expect("own facts");
        assert!(
            own.needed.iter().any(|n| n.starts_with("libc.so")),
            "{own:?}"
        );
    }
}
