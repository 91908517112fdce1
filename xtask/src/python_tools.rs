//! The Python tools the tests run, in a virtualenv inside the project
//! (`target/tools/venv`): kubernetes-validate, whose offline schemas check
//! the Kubernetes manifest, and PyYAML, which reads it for tests/deploy.rs.
//! Installed only when missing or when the pins below change.

use std::{fs, path::Path, process::Command};

use anyhow::{Context, Result};

use crate::{run::workspace_root, toolchain::run};

/// The virtualenv, under the workspace's root (tests/deploy.rs looks there).
const VENV: &str = "target/tools/venv";

/// What pip installs. kubernetes-validate is pinned: the schemas a release
/// ships decide which Kubernetes versions the tests can name.
const REQUIREMENTS: &[&str] = &["kubernetes-validate==1.37.0", "pyyaml"];

/// Written into the virtualenv once pip has installed [`REQUIREMENTS`].
const STAMP: &str = "heapwatch-requirements.txt";

/// Creates the virtualenv and installs the tools, unless they are there.
pub fn ensure() -> Result<()> {
    let venv = workspace_root().join(VENV);
    let wanted = REQUIREMENTS.join("\n");
    let stamp = venv.join(STAMP);
    if fs::read_to_string(&stamp).is_ok_and(|installed| installed == wanted) {
        return Ok(());
    }
    eprintln!(
        "xtask: installing {} into {}",
        REQUIREMENTS.join(" "),
        venv.display()
    );
    if !venv.join("bin/pip").is_file() {
        create_venv(&venv)?;
    }
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet"])
        .args(REQUIREMENTS))
    .with_context(|| format!("pip install into {}", venv.display()))?;
    fs::write(&stamp, wanted).with_context(|| format!("write {}", stamp.display()))
}

/// Debian's python3, whose venv module (and pip in it) python3-venv brings:
/// not whichever python3 comes first on PATH.
fn create_venv(venv: &Path) -> Result<()> {
    run(Command::new("/usr/bin/python3")
        .args(["-m", "venv"])
        .arg(venv))
    .with_context(|| {
        format!(
            "create a virtualenv at {} (Debian's python3-venv)",
            venv.display()
        )
    })
}
