//! Addresses of the allocator's symbols, to probe each function once even
//! when a library exports it under two names (glibc: aligned_alloc = memalign).

use std::{collections::HashMap, fs, io, path::Path};

use object::{Object, ObjectSymbol};

/// Addresses of the dynamic and static symbols of the ELF file at `path`.
pub fn symbol_addresses(path: &Path) -> io::Result<HashMap<String, u64>> {
    let data = fs::read(path)?;
    let file = object::File::parse(&*data).map_err(io::Error::other)?;
    Ok(file
        .dynamic_symbols()
        .chain(file.symbols())
        .filter(|s| s.is_definition())
        .filter_map(|s| Some((s.name().ok()?.to_owned(), s.address())))
        .collect())
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
        let addresses = symbol_addresses(&libc).expect("libc parses");
        assert!(addresses.get("malloc").is_some_and(|&a| a != 0));
        assert!(addresses.contains_key("free"));
    }
}
