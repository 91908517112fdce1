//! The eBPF toolchain: rustup's `nightly` with rust-src, and bpf-linker built
//! against nightly's own LLVM. Idempotent and quiet when all is present.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

const NIGHTLY: &str = "nightly";

/// Installs whatever of the eBPF toolchain is missing.
pub fn ensure() -> Result<()> {
    ensure_nightly()?;
    ensure_rust_src()?;
    ensure_bpf_linker()
}

fn ensure_nightly() -> Result<()> {
    if quiet_success(Command::new("rustc").args(["+nightly", "--version"])) {
        return Ok(());
    }
    eprintln!("xtask: the `nightly` toolchain is missing; installing it with rustup");
    run(Command::new("rustup").args([
        "toolchain",
        "install",
        NIGHTLY,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

fn ensure_rust_src() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    eprintln!("xtask: installing rust-src for nightly (a slow download)");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
}

fn ensure_bpf_linker() -> Result<()> {
    if bpf_linker_runs() {
        return Ok(());
    }
    let llvm = nightly_libllvm(&nightly_sysroot()?)?;
    let prefix = llvm_prefix_dir()?;
    link_llvm(&prefix, &llvm)?;
    if bpf_linker_runs() {
        return Ok(());
    }
    eprintln!(
        "xtask: building bpf-linker against nightly's LLVM ({})",
        llvm.display()
    );
    run(Command::new("cargo")
        .args(["+nightly", "install", "bpf-linker", "--no-default-features"])
        .args(["--features", "llvm-22", "--force"])
        .env("LLVM_PREFIX", &prefix))?;
    if !bpf_linker_runs() {
        bail!("bpf-linker was installed but does not run; is ~/.cargo/bin on PATH?");
    }
    Ok(())
}

fn bpf_linker_runs() -> bool {
    quiet_success(Command::new("bpf-linker").arg("--version"))
}

/// Makes `prefix/lib` hold nightly's LLVM under the names bpf-linker's build
/// (`libLLVM.so`) and its loader (the library's own soname) look for.
fn link_llvm(prefix: &Path, llvm: &Path) -> Result<()> {
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("create {}", lib.display()))?;
    let soname = llvm
        .file_name()
        .context("nightly's libLLVM has no file name")?;
    for name in [std::ffi::OsStr::new("libLLVM.so"), soname] {
        let link = lib.join(name);
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link).with_context(|| format!("remove {}", link.display()))?;
        }
        std::os::unix::fs::symlink(llvm, &link)
            .with_context(|| format!("symlink {} -> {}", link.display(), llvm.display()))?;
    }
    Ok(())
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("run `rustc +nightly --print sysroot`")?;
    if !out.status.success() {
        bail!(
            "`rustc +nightly --print sysroot` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// nightly's `lib/libLLVM.so.22*`.
fn nightly_libllvm(sysroot: &Path) -> Result<PathBuf> {
    let lib = sysroot.join("lib");
    let entries = fs::read_dir(&lib).with_context(|| format!("list {}", lib.display()))?;
    for entry in entries {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with("libLLVM.so.22") {
            return Ok(path);
        }
    }
    bail!(
        "no libLLVM.so.22* in {}: bpf-linker needs nightly's LLVM 22; update nightly with `rustup update nightly`",
        lib.display()
    )
}

/// A directory that persists: bpf-linker keeps it as its rpath.
fn llvm_prefix_dir() -> Result<PathBuf> {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    Ok(home.join("heapwatch-llvm"))
}

fn quiet_success(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a command, failing with its name when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
