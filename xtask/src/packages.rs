//! Debian packages the tests use, installed with apt-get only when missing.

use std::process::{Command, Stdio};

use anyhow::{Result, bail};

use crate::toolchain::run;

/// What the integration tests run: compilers for the fixtures, readelf
/// (binutils) for their build ids, valgrind to compare with, bpftool to list
/// what is attached and count stack-map entries, a Prometheus server and
/// promtool, systemd-analyze for the unit, useradd and setpriv for the
/// unprivileged-user tests, and other allocators (jemalloc, tcmalloc,
/// mimalloc, static musl) for programs that do not use the C library's,
/// python3-venv for the Python tools' virtualenv (`python_tools`), golang-go
/// for the real `go tool pprof` that reads the profiles, and
/// systemd-nspawn (systemd-container) to boot the unit under a real systemd.
pub const TEST_PACKAGES: &[&str] = &[
    "gcc",
    "g++",
    "binutils",
    "valgrind",
    "bpftool",
    "coreutils",
    "prometheus",
    "systemd",
    "passwd",
    "util-linux",
    "libcap2-bin",
    "bpftrace",
    "libjemalloc-dev",
    "libtcmalloc-minimal4",
    "podman",
    "runc",
    "libmimalloc-dev",
    "musl-tools",
    "python3-venv",
    "golang-go",
    "systemd-container",
];

/// Installs the packages not yet installed (apt-get update first, once).
pub fn ensure(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "Debian packages {} are missing and installing them needs root: run as root",
            missing.join(", ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// True when running as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
