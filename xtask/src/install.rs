//! `cargo xtask install`: the binary, the systemd unit and the config.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::{run::workspace_root, toolchain::run};

/// Installs under `root` ("/" for the machine itself).
pub fn install(root: &Path) -> Result<()> {
    let source = workspace_root();
    let files = [
        ("target/release/heapwatch", "usr/local/bin/heapwatch", 0o755),
        (
            "deploy/heapwatch.service",
            "etc/systemd/system/heapwatch.service",
            0o644,
        ),
        (
            "README.md",
            "usr/local/share/doc/heapwatch/README.md",
            0o644,
        ),
    ];
    for (from, to, mode) in files {
        copy(&source.join(from), &root.join(to), mode)?;
    }
    let config = root.join("etc/heapwatch/config.toml");
    if config.exists() {
        println!(
            "kept {} (it exists; the example is deploy/config.toml)",
            config.display()
        );
    } else {
        copy(&source.join("deploy/config.toml"), &config, 0o644)?;
    }
    if root == Path::new("/") && systemd_runs() {
        run(Command::new("systemctl").arg("daemon-reload"))?;
        println!("next: systemctl enable --now heapwatch");
    }
    Ok(())
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let dir = to.parent().context("a destination without a directory")?;
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    fs::copy(from, to).with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("set the mode of {}", to.display()))?;
    println!("installed {}", to.display());
    Ok(())
}

/// True when PID 1 is systemd.
fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// The default root: the machine itself.
pub fn default_root() -> PathBuf {
    PathBuf::from("/")
}
