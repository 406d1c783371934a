//! Builds agent-ebpf for bpfel-unknown-none with Debian's rustc and embeds the object.
//!
//! rustup has no rust-src here, so `-Z build-std` is impossible; Debian's rustc-web ships a
//! prebuilt `core` for the BPF targets (shared/EBPF-TOOLCHAIN.md). Without that toolchain a plain
//! host build still works (an empty object is embedded and the agent says how to build it) unless
//! TRACEGAP_REQUIRE_EBPF is set, as `cargo xtask build` does.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

const BPF_RUSTC: &str = "/usr/bin/rustc";
const BPF_TARGET: &str = "bpfel-unknown-none";

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../agent-ebpf").canonicalize()?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let object = out_dir.join("tracegap.bpf.o");

    println!("cargo:rerun-if-env-changed=TRACEGAP_REQUIRE_EBPF");
    for dir in ["src", "../agent-common/src"] {
        println!("cargo:rerun-if-changed={}", ebpf_dir.join(dir).display());
    }
    for file in ["Cargo.toml", "Cargo.lock", ".cargo/config.toml"] {
        println!("cargo:rerun-if-changed={}", ebpf_dir.join(file).display());
    }

    let required = env::var_os("TRACEGAP_REQUIRE_EBPF").is_some();
    match build_ebpf(&ebpf_dir, &out_dir) {
        Ok(built) => {
            std::fs::copy(&built, &object)
                .with_context(|| format!("copying {} to {}", built.display(), object.display()))?;
        }
        Err(e) if !required => {
            println!(
                "cargo:warning=eBPF object not built ({e:#}); the agent will refuse to start. \
                 Run `cargo xtask build`."
            );
            std::fs::write(&object, b"")?;
        }
        Err(e) => return Err(e),
    }
    println!("cargo:rustc-env=TRACEGAP_BPF_OBJECT={}", object.display());
    Ok(())
}

fn build_ebpf(ebpf_dir: &Path, out_dir: &Path) -> Result<PathBuf> {
    if !Path::new(BPF_RUSTC).exists() {
        bail!("{BPF_RUSTC} (Debian rustc-web) is missing: run `cargo xtask setup`");
    }
    // A target dir of its own: sharing the outer one deadlocks on cargo's artifact lock.
    let target_dir = out_dir.join("ebpf-target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(ebpf_dir)
        .args(["build", "--release", "--target", BPF_TARGET])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTC", BPF_RUSTC)
        // aya-ebpf uses #![feature(...)]; Debian's rustc is a stable compiler.
        .env("RUSTC_BOOTSTRAP", "1")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            ["-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f"),
        )
        .env("PATH", path_with_cargo_bin())
        // The outer cargo leaks these into build scripts; the nested build must not see them.
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_ENCODED_RUSTFLAGS_HOST")
        .env_remove("CARGO_PROFILE_RELEASE_DEBUG");
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_CFG_") || key.starts_with("CARGO_FEATURE_") {
            cmd.env_remove(key.as_ref());
        }
    }
    // The outer cargo reads build-script stdout for `cargo:` lines.
    cmd.stdout(Stdio::from(std::io::stderr()));
    let status = cmd.status().context("failed to run cargo for agent-ebpf")?;
    if !status.success() {
        bail!("building agent-ebpf failed ({status}); see the output above");
    }
    Ok(target_dir.join(BPF_TARGET).join("release").join("tracegap"))
}

fn path_with_cargo_bin() -> std::ffi::OsString {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    let mut paths = vec![home.join("bin")];
    if let Some(path) = env::var_os("PATH") {
        paths.extend(env::split_paths(&path));
    }
    env::join_paths(paths).unwrap_or_default()
}
