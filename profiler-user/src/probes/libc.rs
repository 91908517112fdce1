//! Finding the libraries to probe: the C library processes map, and
//! libraries by soname from the dynamic linker's cache.

use std::path::{Path, PathBuf};

use crate::stacks::parse_maps;

/// The first executable file mapped in `maps` (the text of a /proc/PID/maps)
/// whose name is the C library's: `libc.so.6`, `libc.so`, or `libc-2.36.so`.
pub fn libc_in_maps(maps: &str) -> Option<PathBuf> {
    parse_maps(maps)
        .into_iter()
        .find(|m| is_libc_name(&m.path))
        .map(|m| m.path.to_path_buf())
}

/// The dynamic linker's cache, as `ldconfig -p` prints it (empty if it cannot run).
pub fn linker_cache() -> String {
    std::process::Command::new("ldconfig")
        .arg("-p")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The path of the 64-bit `soname` in the text of `ldconfig -p`.
pub fn library_in_ldconfig(ldconfig: &str, soname: &str) -> Option<PathBuf> {
    ldconfig.lines().find_map(|line| {
        let (left, path) = line.trim().split_once(" => ")?;
        let (name, kind) = left.split_once(' ')?;
        (name == soname && kind.contains("x86-64")).then(|| PathBuf::from(path.trim()))
    })
}

/// True for a C library's file: glibc's (`libc.so.6`) or musl's (its
/// dynamic linker, `ld-musl-*.so.1`, is its C library).
pub fn is_c_library(path: &Path) -> bool {
    is_libc_name(path)
        || path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with("ld-musl"))
}

fn is_libc_name(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name == "libc.so"
        || name.starts_with("libc.so.")
        || (name.starts_with("libc-") && name.ends_with(".so"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a02000 r--p 00000000 08:01 131 /usr/bin/cat
7f1c2a000000-7f1c2a028000 r--p 00000000 08:01 412 /usr/lib/x86_64-linux-gnu/libcap.so.2
7f1c2a200000-7f1c2a228000 r--p 00000000 08:01 401 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1c2a228000-7f1c2a3bd000 r-xp 00028000 08:01 401 /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd0e1f0000-7ffd0e211000 rw-p 00000000 00:00 0 [stack]
";

    #[test]
    fn finds_libc_not_its_lookalikes() {
        assert_eq!(
            libc_in_maps(MAPS),
            Some(PathBuf::from("/usr/lib/x86_64-linux-gnu/libc.so.6"))
        );
    }

    #[test]
    fn finds_the_64_bit_library_in_the_linker_cache() {
        let cache = "\
1234 libs found in cache `/etc/ld.so.cache'
\tlibstdc++.so.6 (libc6) => /lib/i386-linux-gnu/libstdc++.so.6
\tlibstdc++.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libstdc++.so.6
\tlibstdc++.so (libc6,x86-64) => /lib/x86_64-linux-gnu/libstdc++.so
";
        assert_eq!(
            library_in_ldconfig(cache, "libstdc++.so.6"),
            Some(PathBuf::from("/lib/x86_64-linux-gnu/libstdc++.so.6"))
        );
        assert_eq!(library_in_ldconfig(cache, "libfoo.so.1"), None);
    }

    #[test]
    fn finds_versioned_names_and_nothing_in_static_programs() {
        assert_eq!(
            libc_in_maps("1000-2000 r-xp 0 08:01 1 /lib/libc-2.31.so\n"),
            Some(PathBuf::from("/lib/libc-2.31.so"))
        );
        assert_eq!(
            libc_in_maps("1000-2000 r-xp 0 08:01 1 /usr/bin/static\n"),
            None
        );
        assert_eq!(libc_in_maps(""), None);
    }
}
