//! A process's executable file mappings, from /proc/PID/maps: pure parsing
//! and address normalization to (file, build id, file offset).

use std::{ops::Range, path::Path, sync::Arc};

use serde::{Deserialize, Serialize};

use super::files::MappedFile;

/// One executable, file-backed mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Offset in the file of `start`.
    pub file_offset: u64,
    /// The mapped file.
    pub path: Arc<Path>,
    /// The file's device, as `stat` gives it.
    pub device: u64,
    /// The file's inode (with its path, it names one version of the file).
    pub inode: u64,
    /// The file's GNU build id, once read ([`super::SiteResolver`] fills it in).
    pub build_id: Option<Arc<[u8]>>,
    /// The file as the process maps it, once opened ([`super::SiteResolver`]
    /// opens it).
    pub file: Option<Arc<MappedFile>>,
}

/// Where a file is mapped: the addresses, and the file offset of the first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappedRange {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub limit: u64,
    /// The file offset mapped at `start`.
    pub file_offset: u64,
}

/// Where a return address lies in a mapped file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file, as the process named it.
    pub path: Arc<Path>,
    /// The file's GNU build id, when it has one.
    pub build_id: Option<Arc<[u8]>>,
    /// The offset in the file.
    pub offset: u64,
    /// The mapping holding the address.
    pub mapping: MappedRange,
    /// The file as the process mapped it, held open: its symbols are read
    /// from it, not from whatever the path names now.
    pub file: Option<Arc<MappedFile>>,
}

/// The executable file mappings listed in a /proc/PID/maps text.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

/// The address ranges of every executable mapping in a /proc/PID/maps
/// text, files' or not (code a JIT compiler wrote, the vDSO): where a
/// return address can lie.
pub fn code_ranges(text: &str) -> Vec<Range<u64>> {
    text.lines()
        .filter_map(|line| {
            let (range, rest) = line.split_once(' ')?;
            if !rest.split(' ').next()?.contains('x') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some(u64::from_str_radix(start, 16).ok()?..u64::from_str_radix(end, 16).ok()?)
        })
        .collect()
}

/// What the kernel appends to the path of a file deleted since it was mapped.
const DELETED: &str = " (deleted)";

fn parse_line(line: &str) -> Option<Mapping> {
    // Fields are one space apart; the path, padded, is the rest of the line
    // and may hold spaces.
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let device = fields.next()?;
    let inode = fields.next()?;
    let path = fields.next()?.trim_start();
    let path = path.strip_suffix(DELETED).unwrap_or(path);
    if !perms.contains('x') || !path.starts_with('/') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        file_offset: u64::from_str_radix(offset, 16).ok()?,
        path: Arc::from(Path::new(path)),
        device: device_number(device)?,
        inode: inode.parse().ok()?,
        build_id: None,
        file: None,
    })
}

/// A device as /proc/PID/maps writes it (`major:minor` in hex), as `stat`
/// numbers it.
fn device_number(text: &str) -> Option<u64> {
    let (major, minor) = text.split_once(':')?;
    let major = u32::from_str_radix(major, 16).ok()?;
    let minor = u32::from_str_radix(minor, 16).ok()?;
    Some(libc::makedev(major, minor))
}

/// The file, build id and file offset of `address`, if a mapping holds it.
pub fn normalize(mappings: &[Mapping], address: u64) -> Option<Location> {
    mappings
        .iter()
        .find(|m| (m.start..m.end).contains(&address))
        .map(|m| Location {
            path: Arc::clone(&m.path),
            build_id: m.build_id.clone(),
            offset: address - m.start + m.file_offset,
            mapping: MappedRange {
                start: m.start,
                limit: m.end,
                file_offset: m.file_offset,
            },
            file: m.file.clone(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
5581a2a00000-5581a2a01000 r--p 00000000 fe:01 2345 /tmp/leak
5581a2a01000-5581a2a02000 r-xp 00001000 fe:01 2345 /tmp/leak
7f00aa228000-7f00aa3bd000 r-xp 00028000 fe:01 401 /usr/lib/x86_64-linux-gnu/libc.so.6
7f00aa400000-7f00aa421000 rw-p 00000000 00:00 0 [heap]
7ffd0e1f0000-7ffd0e211000 r-xp 00000000 00:00 0 [vdso]
";

    #[test]
    fn keeps_executable_file_mappings_only() {
        let maps = parse_maps(MAPS);
        assert_eq!(maps.len(), 2);
        assert_eq!(maps[0].start, 0x5581a2a01000);
        assert_eq!((maps[0].file_offset, maps[0].inode), (0x1000, 2345));
        assert_eq!(maps[0].device, libc::makedev(0xfe, 1));
        assert_eq!(
            &*maps[1].path,
            Path::new("/usr/lib/x86_64-linux-gnu/libc.so.6")
        );
    }

    #[test]
    fn normalizes_to_file_offsets() {
        let maps = parse_maps(MAPS);
        let mut maps = maps;
        maps[0].build_id = Some(Arc::from(&[0xab, 0xcd][..]));
        let at = normalize(&maps, 0x5581a2a01136).expect("in the program's text");
        assert_eq!((&*at.path, at.offset), (Path::new("/tmp/leak"), 0x1136));
        assert_eq!(at.build_id.as_deref(), Some(&[0xab, 0xcd][..]));
        let at = normalize(&maps, 0x7f00aa228010).expect("in libc's text");
        assert_eq!((at.offset, at.build_id), (0x28010, None));
        assert_eq!(normalize(&maps, 0x5581a2a00010), None);
        assert_eq!(normalize(&maps, 0x7ffd0e1f0000), None);
    }

    #[test]
    fn paths_keep_their_spaces_and_lose_the_deleted_mark() {
        let maps = parse_maps(
            "1000-2000 r-xp 00000000 fe:01 7 /tmp/a b/prog (deleted)\n\
             3000-4000 r-xp 00000000 fe:01 8 /tmp/c\n",
        );
        assert_eq!(&*maps[0].path, Path::new("/tmp/a b/prog"));
        assert_eq!(&*maps[1].path, Path::new("/tmp/c"));
    }

    #[test]
    fn code_is_every_executable_mapping() {
        let code = code_ranges(MAPS);
        assert_eq!(
            code,
            [
                0x5581a2a01000..0x5581a2a02000,
                0x7f00aa228000..0x7f00aa3bd000,
                0x7ffd0e1f0000..0x7ffd0e211000,
            ]
        );
        assert!(code_ranges("zz-yy r-xp 0 0 0 /x\nno\n").is_empty());
    }

    #[test]
    fn tolerates_garbage() {
        assert!(parse_maps("not a maps line\nzz-yy r-xp 0 0 0 /x\n").is_empty());
    }
}
