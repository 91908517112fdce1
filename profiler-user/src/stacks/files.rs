//! Mapped files as their process sees them: opened through
//! /proc/PID/map_files (or the process's root), so that a container's own
//! libc, a binary replaced on disk and a deleted one are read as mapped,
//! and kept open while a site refers to them, even after the process ends.

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use super::Mapping;

/// One mapped file, open.
#[derive(Debug)]
pub struct MappedFile {
    file: File,
    /// The file's device and inode: its identity.
    pub id: FileId,
}

/// A file's device and inode.
pub type FileId = (u64, u64);

/// The device and inode of the file at `path`, following links.
pub fn file_id(path: &Path) -> Option<FileId> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.dev(), meta.ino()))
}

impl MappedFile {
    /// A path that opens this very file for as long as it is held.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

impl PartialEq for MappedFile {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for MappedFile {}

/// Opens the file `mapping` of process `tgid` maps: through its map_files
/// entry (the very file mapped), else through the process's root, taken
/// only if it is the inode the mapping names. `None` when neither opens
/// (the process is gone, or heapwatch lacks the privilege).
pub fn open_mapped(tgid: u32, mapping: &Mapping) -> Option<MappedFile> {
    let by_range = format!(
        "/proc/{tgid}/map_files/{:x}-{:x}",
        mapping.start, mapping.end
    );
    if let Some(file) = open_checked(&by_range, None) {
        return Some(file);
    }
    let by_root = format!("/proc/{tgid}/root{}", mapping.path.display());
    open_checked(&by_root, Some(mapping.inode))
}

fn open_checked(path: &str, inode: Option<u64>) -> Option<MappedFile> {
    let file = File::open(path).ok()?;
    let meta = file.metadata().ok()?;
    if inode.is_some_and(|inode| inode != meta.ino()) {
        return None;
    }
    Some(MappedFile {
        id: (meta.dev(), meta.ino()),
        file,
    })
}

/// Shares one open file among every mapping of it.
#[derive(Default)]
pub struct OpenFiles {
    files: std::collections::HashMap<FileId, std::sync::Weak<MappedFile>>,
}

impl OpenFiles {
    /// The shared handle of `file`: one already held if the same file is,
    /// else `file` itself. Handles no longer held are dropped from the table.
    pub fn share(&mut self, file: MappedFile) -> Arc<MappedFile> {
        if let Some(held) = self.files.get(&file.id).and_then(std::sync::Weak::upgrade) {
            return held;
        }
        self.files.retain(|_, weak| weak.strong_count() > 0);
        let file = Arc::new(file);
        self.files.insert(file.id, Arc::downgrade(&file));
        file
    }

    /// True when the file `id` is held.
    pub fn holds(&self, id: &FileId) -> bool {
        self.files
            .get(id)
            .is_some_and(|weak| weak.strong_count() > 0)
    }

    /// Files the table refers to (held or not yet swept).
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// True when the table refers to no file.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stacks::parse_maps;

    fn own_mappings() -> Vec<Mapping> {
        parse_maps(&std::fs::read_to_string("/proc/self/maps").expect("own maps"))
    }

    #[test]
    fn a_mapping_opens_as_the_file_mapped_and_is_shared() {
        let mappings = own_mappings();
        let exe = std::fs::metadata("/proc/self/exe").expect("own executable");
        let mut table = OpenFiles::default();
        let pid = std::process::id();
        let opened: Vec<Arc<MappedFile>> = mappings
            .iter()
            .filter_map(|m| open_mapped(pid, m))
            .map(|file| table.share(file))
            .collect();
        assert_eq!(opened.len(), mappings.len(), "each mapping opens");
        let own: Vec<&Arc<MappedFile>> = opened
            .iter()
            .filter(|f| f.id == (exe.dev(), exe.ino()))
            .collect();
        assert!(!own.is_empty(), "the executable is among them");
        assert!(
            own.windows(2).all(|w| Arc::ptr_eq(w[0], w[1])),
            "one handle a file"
        );
        let through = std::fs::metadata(own[0].path()).expect("the handle's path opens");
        assert_eq!((through.dev(), through.ino()), (exe.dev(), exe.ino()));
    }

    #[test]
    fn a_file_let_go_everywhere_leaves_the_table() {
        let mapping = own_mappings().remove(0);
        let mut table = OpenFiles::default();
        let pid = std::process::id();
        let first = table.share(open_mapped(pid, &mapping).expect("opens"));
        drop(first);
        let again = table.share(open_mapped(pid, &mapping).expect("opens"));
        assert_eq!(table.len(), 1);
        assert_eq!(Arc::strong_count(&again), 1);
    }

    #[test]
    fn maps_name_files_as_stat_does() {
        let exe = std::fs::metadata("/proc/self/exe").expect("own executable");
        assert!(
            own_mappings()
                .iter()
                .any(|m| (m.device, m.inode) == (exe.dev(), exe.ino()))
        );
    }

    #[test]
    fn a_root_path_of_another_inode_is_refused() {
        let mut mapping = own_mappings().remove(0);
        mapping.inode += 1;
        mapping.start = 0;
        mapping.end = 1;
        assert!(open_mapped(std::process::id(), &mapping).is_none());
    }
}
