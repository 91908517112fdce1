//! Files heapwatch writes its reports to, checked before any tracing so that
//! a run does not end with nowhere to put what it found.

use std::{
    fs::{self, OpenOptions},
    io,
    path::Path,
};

/// Fails unless `path` can be written, and leaves it as it was: an existing
/// file is opened for writing but not truncated; a new one is created and
/// removed again.
pub fn check_writable(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "it is a directory: name a file",
        ));
    }
    if path.exists() {
        return OpenOptions::new().write(true).open(path).map(drop);
    }
    OpenOptions::new().write(true).create_new(true).open(path)?;
    fs::remove_file(path)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("heapwatch-output-{}-{name}", std::process::id()))
    }

    #[test]
    fn a_new_file_is_checked_and_not_left_behind() {
        let path = scratch("new");
        check_writable(&path).expect("writable");
        assert!(!path.exists(), "the check left {}", path.display());
    }

    #[test]
    fn an_existing_file_is_checked_and_kept_as_it_was() {
        let path = scratch("kept");
        fs::write(&path, "before").expect("write");
        check_writable(&path).expect("writable");
        assert_eq!(fs::read_to_string(&path).expect("read"), "before");
        fs::remove_file(&path).expect("remove");
    }

    #[test]
    fn a_directory_or_a_missing_directory_is_refused() {
        let dir = std::env::temp_dir();
        let err = check_writable(&dir).expect_err("a directory");
        assert_eq!(err.kind(), io::ErrorKind::IsADirectory);
        let err = check_writable(&scratch("no-such-dir").join("out")).expect_err("no directory");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
