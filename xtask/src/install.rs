//! `cargo xtask install`: the binary, the systemd unit, its group and the
//! config.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

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
        ("deploy/heapwatch.sysusers", SYSUSERS_ENTRY, 0o644),
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
    if root == Path::new("/") {
        create_group()?;
        if systemd_runs() {
            run(Command::new("systemctl").arg("daemon-reload"))?;
            println!("next: systemctl enable --now heapwatch");
        }
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

/// Where systemd-sysusers reads the group's entry, under the root: at boot
/// (systemd-sysusers.service) it makes the group on a host where the unit is
/// installed but the group is not yet made.
const SYSUSERS_ENTRY: &str = "usr/lib/sysusers.d/heapwatch.conf";

/// Makes the unit's group (`Group=heapwatch`) on this machine now, so that
/// the unit can start without a reboot: by systemd-sysusers from the entry
/// just installed (it needs no systemd as PID 1), or by groupadd where
/// systemd-sysusers is absent. Both leave an existing group as it is.
fn create_group() -> Result<()> {
    let entry = Path::new("/").join(SYSUSERS_ENTRY);
    if let Some(sysusers) = find_program("systemd-sysusers") {
        run(Command::new(sysusers).arg(&entry)).with_context(|| {
            format!(
                "create the group heapwatch from {} (check that /etc/group is writable)",
                entry.display()
            )
        })?;
        println!(
            "group heapwatch in place (systemd-sysusers {})",
            entry.display()
        );
        return Ok(());
    }
    if group_exists()? {
        println!("kept the group heapwatch (it exists)");
        return Ok(());
    }
    run(Command::new("groupadd").args(["--system", "heapwatch"])).context(
        "create the group heapwatch with groupadd (no systemd-sysusers here; \
         install the passwd package for groupadd, or create the group by hand)",
    )?;
    println!("created the group heapwatch (groupadd --system)");
    Ok(())
}

/// Whether the group heapwatch exists (getent, so that NSS sources count).
fn group_exists() -> Result<bool> {
    let output = Command::new("getent")
        .args(["group", "heapwatch"])
        .output()
        .context("run getent group heapwatch (libc-bin provides getent)")?;
    // getent exits 2 for a key it does not find, 1 or 3 for its own errors.
    match output.status.code() {
        Some(0) => Ok(true),
        Some(2) => Ok(false),
        _ => bail!(
            "getent group heapwatch failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    }
}

/// The first executable `name` on PATH (or in the sbin directories, which a
/// user's PATH may lack).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| {
            fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// True when PID 1 is systemd.
fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// The default root: the machine itself.
pub fn default_root() -> PathBuf {
    PathBuf::from("/")
}
