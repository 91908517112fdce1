//! Which file provides a program's allocator, found before it runs: the
//! first object in the dynamic linker's symbol search order that defines
//! `malloc` — the executable itself (a static build with its symbols),
//! then `LD_PRELOAD` (tcmalloc, mimalloc), then the libraries it needs,
//! breadth first (jemalloc linked in, or the C library).

use std::{
    collections::{HashSet, VecDeque},
    fs,
    path::{Path, PathBuf},
};

use object::{
    Object, ObjectSymbol,
    read::elf::{Dyn, ElfFile64},
};

use super::libc::library_in_ldconfig;

/// The symbol whose definition marks the allocator's file.
const MALLOC: &str = "malloc";

/// The file whose `malloc` `program` calls when run with `LD_PRELOAD` set
/// to `preload` (space- or colon-separated), libraries found in `ldconfig`
/// (the text of `ldconfig -p`); `None` when no file in reach defines it.
pub fn allocator_of(program: &Path, preload: &str, ldconfig: &str) -> Option<PathBuf> {
    let mut queue: VecDeque<PathBuf> = VecDeque::from([program.to_owned()]);
    queue.extend(
        preload
            .split([' ', ':'])
            .filter(|name| !name.is_empty())
            .filter_map(|name| resolve(name, ldconfig)),
    );
    let mut seen = HashSet::new();
    while let Some(path) = queue.pop_front() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let Ok(data) = fs::read(&path) else {
            continue;
        };
        let Ok(elf) = ElfFile64::<object::Endianness>::parse(&*data) else {
            continue;
        };
        if defines(&elf, MALLOC) {
            return Some(path);
        }
        queue.extend(
            needed(&elf)
                .iter()
                .filter_map(|name| resolve(name, ldconfig)),
        );
    }
    None
}

/// True when the file defines `symbol` (dynamic or static symbol table).
fn defines(elf: &ElfFile64<'_, object::Endianness>, symbol: &str) -> bool {
    elf.dynamic_symbols()
        .chain(elf.symbols())
        .any(|s| s.is_definition() && s.name() == Ok(symbol))
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

/// A library named as `DT_NEEDED` or `LD_PRELOAD` name it: a path, or a
/// soname the linker cache knows.
fn resolve(name: &str, ldconfig: &str) -> Option<PathBuf> {
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

    #[test]
    fn a_program_on_the_c_library_gets_the_c_library() {
        let ldconfig = ldconfig();
        let found = allocator_of(Path::new("/bin/true"), "", &ldconfig).expect("found");
        assert_eq!(
            found.file_name().and_then(|n| n.to_str()),
            Some("libc.so.6"),
            "{found:?}"
        );
    }

    #[test]
    fn a_preloaded_library_defining_malloc_comes_first() {
        let ldconfig = ldconfig();
        let libc = allocator_of(Path::new("/bin/true"), "", &ldconfig).expect("libc");
        let path = libc.to_str().expect("utf-8");
        assert_eq!(
            allocator_of(Path::new("/bin/true"), &format!(" {path} "), &ldconfig),
            Some(libc.clone()),
            "a path preloaded"
        );
        assert_eq!(
            allocator_of(Path::new("/no/such/program"), "libc.so.6", &ldconfig),
            Some(libc),
            "a soname preloaded, the program unreadable"
        );
        assert_eq!(
            allocator_of(Path::new("/no/such/program"), "", &ldconfig),
            None
        );
    }
}
