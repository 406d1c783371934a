//! Running commands with errors that name the command.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

/// Runs `cmd`, failing with the command line when it cannot start or exits non-zero.
pub fn exec(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

/// `$CARGO` when run through cargo, else `cargo`.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `~/.cargo/bin` (or `$CARGO_HOME/bin`), where `cargo install` puts bpf-linker.
pub fn cargo_bin_dir() -> PathBuf {
    crate::ebpf_object::toolchain::cargo_home().join("bin")
}

/// PATH with the cargo bin dir first, so nested builds find bpf-linker even under sudo.
pub fn path_with_cargo_bin() -> std::ffi::OsString {
    crate::ebpf_object::toolchain::path_with_cargo_bin()
}
