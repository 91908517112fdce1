//! Finding the command to run, as a shell would.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use thiserror::Error;

/// Why a command cannot be run.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CommandError {
    /// The command's name is an empty string.
    #[error("the command is an empty string: give the program to run after --")]
    Empty,
    /// Not found on PATH or at the path given.
    #[error("{0}: command not found")]
    NotFound(String),
    /// Found, but not an executable file.
    #[error("{0}: not an executable file")]
    NotExecutable(PathBuf),
}

/// The executable `name` names: a path when it has a slash, else the first
/// executable match in `path_var` (PATH's value).
pub fn resolve_command(name: &str, path_var: &str) -> Result<PathBuf, CommandError> {
    if name.is_empty() {
        return Err(CommandError::Empty);
    }
    if name.contains('/') {
        let path = PathBuf::from(name);
        if !path.exists() {
            return Err(CommandError::NotFound(name.to_owned()));
        }
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(CommandError::NotExecutable(path))
        };
    }
    path_var
        .split(':')
        .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(name))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| CommandError::NotFound(name.to_owned()))
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_commands_on_path() {
        let found = resolve_command("sh", "/nonexistent:/bin:/usr/bin").expect("sh on PATH");
        assert!(found.ends_with("sh"));
    }

    #[test]
    fn reports_missing_and_non_executable_commands() {
        assert_eq!(
            resolve_command("no-such-command-xyz", "/bin:/usr/bin"),
            Err(CommandError::NotFound("no-such-command-xyz".to_owned()))
        );
        assert_eq!(
            resolve_command("./no/such/file", "/bin"),
            Err(CommandError::NotFound("./no/such/file".to_owned()))
        );
        assert_eq!(
            resolve_command("/etc/passwd", "/bin"),
            Err(CommandError::NotExecutable(PathBuf::from("/etc/passwd")))
        );
        assert_eq!(
            resolve_command("/", "/bin"),
            Err(CommandError::NotExecutable(PathBuf::from("/")))
        );
        assert_eq!(resolve_command("", "/bin"), Err(CommandError::Empty));
    }
}
