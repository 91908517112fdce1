//! The allocator library's symbols: their addresses, to probe each function
//! once even when a library exports it under two names (glibc:
//! aligned_alloc = memalign), and the first bytes of each function's code, to
//! place its entry probe.

use std::{collections::HashMap, fs, io, path::Path};

use object::{Object, ObjectSection, ObjectSymbol};

/// Bytes of code read at the start of each function: enough for a prologue.
pub const PROLOGUE_BYTES: usize = 64;

/// What heapwatch reads from the library's symbol tables.
pub struct SymbolTable {
    /// Address of every defined dynamic and static symbol.
    pub addresses: HashMap<String, u64>,
    /// Where in the file each such symbol's code lies (what a uprobe names).
    pub file_offsets: HashMap<String, u64>,
    /// The first [`PROLOGUE_BYTES`] (fewer at a section's end) of each function asked for.
    pub prologues: HashMap<String, Vec<u8>>,
}

/// Reads the symbols of the ELF file at `path`, and the code at the start of `functions`.
pub fn read_symbols(path: &Path, functions: &[&str]) -> io::Result<SymbolTable> {
    let data = fs::read(path)?;
    let file = object::File::parse(&*data).map_err(io::Error::other)?;
    let mut addresses = HashMap::new();
    let mut file_offsets = HashMap::new();
    let mut prologues = HashMap::new();
    for symbol in file.dynamic_symbols().chain(file.symbols()) {
        let Ok(name) = symbol.name() else {
            continue;
        };
        if !symbol.is_definition() {
            continue;
        }
        addresses.insert(name.to_owned(), symbol.address());
        let section = symbol
            .section_index()
            .and_then(|index| file.section_by_index(index).ok());
        let file_offset = section.and_then(|section| {
            let (start, _) = section.file_range()?;
            Some(symbol.address().checked_sub(section.address())? + start)
        });
        if let Some(offset) = file_offset {
            file_offsets.insert(name.to_owned(), offset);
        }
        if !functions.contains(&name) || prologues.contains_key(name) {
            continue;
        }
        let code = symbol
            .section_index()
            .and_then(|index| file.section_by_index(index).ok())
            .and_then(|section| {
                let data = section.data().ok()?;
                let start =
                    usize::try_from(symbol.address().checked_sub(section.address())?).ok()?;
                let end = data.len().min(start + PROLOGUE_BYTES);
                data.get(start..end).map(<[u8]>::to_vec)
            });
        if let Some(code) = code {
            prologues.insert(name.to_owned(), code);
        }
    }
    Ok(SymbolTable {
        addresses,
        file_offsets,
        prologues,
    })
}

/// For each name in `names` (in order), the earlier name it is an alias of, if any.
pub fn aliases<'a>(
    names: &[&'a str],
    addresses: &HashMap<String, u64>,
) -> HashMap<&'a str, &'a str> {
    let mut first_at: HashMap<u64, &'a str> = HashMap::new();
    let mut aliases = HashMap::new();
    for &name in names {
        let Some(&address) = addresses.get(name) else {
            continue;
        };
        match first_at.get(&address) {
            Some(&first) => {
                aliases.insert(name, first);
            }
            None => {
                first_at.insert(address, name);
            }
        }
    }
    aliases
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_names_at_the_same_address_are_aliases() {
        let addresses: HashMap<String, u64> = [
            ("memalign", 0x10),
            ("aligned_alloc", 0x10),
            ("malloc", 0x20),
        ]
        .into_iter()
        .map(|(n, a)| (n.to_owned(), a))
        .collect();
        let found = aliases(
            &["malloc", "memalign", "aligned_alloc", "missing"],
            &addresses,
        );
        assert_eq!(found, HashMap::from([("aligned_alloc", "memalign")]));
    }

    #[test]
    fn reads_this_machines_c_library() {
        let maps = fs::read_to_string("/proc/self/maps").expect("own maps");
        let libc = super::super::libc_in_maps(&maps).expect("tests link the C library");
        let table = read_symbols(&libc, &["free"]).expect("libc parses");
        assert!(table.addresses.get("malloc").is_some_and(|&a| a != 0));
        assert!(table.addresses.contains_key("free"));
        assert_eq!(table.prologues["free"].len(), PROLOGUE_BYTES);
        assert!(!table.prologues.contains_key("malloc"), "not asked for");
        let offset = table.file_offsets["free"];
        let code = fs::read(&libc).expect("libc reads");
        assert_eq!(
            &code[offset as usize..][..PROLOGUE_BYTES],
            &table.prologues["free"][..],
            "the file offset holds the function's code"
        );
    }
}
