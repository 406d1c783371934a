//! Finding a toolchain that builds agent-ebpf, by two routes:
//!
//! - **Debian**: Debian's rustc-web (≥ 1.96) ships a prebuilt `core` for bpfel-unknown-none
//!   (`libstd-rust-web-dev-bpf`), so no rust-src is needed. What `cargo xtask setup` installs.
//! - **rustup nightly**: the usual aya route, `-Z build-std=core` with nightly's rust-src.
//!
//! Both need `bpf-linker` on PATH (or in `$CARGO_HOME/bin`). `TRACEGAP_BPF_RUSTC` names the
//! compiler of the Debian route (default /usr/bin/rustc) and turns the nightly route off; a path
//! that does not exist means "no BPF toolchain" (the agent then embeds the prebuilt object).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

pub const BPF_TARGET: &str = "bpfel-unknown-none";
/// Overrides the Debian route's compiler; see the module docs.
pub const RUSTC_ENV: &str = "TRACEGAP_BPF_RUSTC";
pub const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
/// rustc-web 1.96 from bookworm-security (bookworm's own 1.85 has no BPF `core`).
pub const MIN_DEBIAN_MINOR: u32 = 96;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Debian,
    RustupNightly,
}

impl Route {
    pub fn name(self) -> &'static str {
        match self {
            Route::Debian => "debian",
            Route::RustupNightly => "rustup-nightly",
        }
    }
}

/// A compiler that can build for [`BPF_TARGET`].
#[derive(Clone, Debug)]
pub struct Compiler {
    pub route: Route,
    pub rustc: PathBuf,
    /// The cargo to drive it with (nightly's own, for `-Z build-std`); `None`: the outer cargo.
    pub cargo: Option<PathBuf>,
    /// `rustc -V`.
    pub version: String,
    pub sysroot: PathBuf,
}

/// What is installed, per route; each `Err` says what is missing.
pub struct Found {
    pub debian: Result<Compiler, String>,
    pub nightly: Result<Compiler, String>,
    /// bpf-linker's path and `--version`.
    pub linker: Result<(PathBuf, String), String>,
}

/// A complete toolchain: a compiler and bpf-linker.
pub struct Toolchain {
    pub compiler: Compiler,
    pub linker: PathBuf,
    pub linker_version: String,
}

impl Found {
    pub fn detect() -> Self {
        let override_rustc = std::env::var_os(RUSTC_ENV).map(PathBuf::from);
        let debian = debian(override_rustc.as_deref().unwrap_or(Path::new(DEBIAN_RUSTC)));
        let nightly = if override_rustc.is_some() {
            Err(format!("not tried ({RUSTC_ENV} is set)"))
        } else {
            rustup_nightly()
        };
        Self {
            debian,
            nightly,
            linker: bpf_linker(),
        }
    }

    /// The route to build with: Debian's when complete, else rustup nightly's.
    pub fn toolchain(&self) -> Option<Toolchain> {
        let (linker, linker_version) = self.linker.as_ref().ok()?;
        let compiler = self.debian.as_ref().or(self.nightly.as_ref()).ok()?;
        Some(Toolchain {
            compiler: compiler.clone(),
            linker: linker.clone(),
            linker_version: linker_version.clone(),
        })
    }

    /// One line per route and for bpf-linker: what was found, or what is missing.
    pub fn report(&self) -> String {
        let compiler = |c: &Result<Compiler, String>| match c {
            Ok(c) => format!("{} ({})", c.rustc.display(), c.version),
            Err(e) => e.clone(),
        };
        format!(
            "Debian route (rustc-web with a prebuilt BPF core): {}\n\
             rustup nightly route (-Z build-std=core with rust-src): {}\n\
             bpf-linker: {}",
            compiler(&self.debian),
            compiler(&self.nightly),
            match &self.linker {
                Ok((path, version)) => format!("{} ({version})", path.display()),
                Err(e) => e.clone(),
            }
        )
    }

    /// Why there is no complete toolchain, in one line.
    pub fn missing(&self) -> String {
        let mut why = Vec::new();
        if self.debian.is_err() && self.nightly.is_err() {
            why.push(format!(
                "no BPF compiler: Debian route: {}; rustup nightly route: {}",
                self.debian.as_ref().err().map_or("", String::as_str),
                self.nightly.as_ref().err().map_or("", String::as_str)
            ));
        }
        if let Err(e) = &self.linker {
            why.push(e.clone());
        }
        why.join("; ")
    }
}

fn output_line(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok().filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!text.is_empty()).then_some(text)
}

fn version_and_sysroot(rustc: &Path) -> Result<(String, PathBuf), String> {
    let version = output_line(Command::new(rustc).arg("-V"))
        .ok_or_else(|| format!("{} -V failed", rustc.display()))?;
    let sysroot = output_line(Command::new(rustc).args(["--print", "sysroot"]))
        .ok_or_else(|| format!("{} --print sysroot failed", rustc.display()))?;
    Ok((version, PathBuf::from(sysroot)))
}

/// "rustc 1.96.0 (…)" → 96.
fn minor(version: &str) -> Option<u32> {
    version
        .split_whitespace()
        .nth(1)?
        .split('.')
        .nth(1)?
        .parse()
        .ok()
}

fn debian(rustc: &Path) -> Result<Compiler, String> {
    if !rustc.exists() {
        return Err(format!("{} not found", rustc.display()));
    }
    let (version, sysroot) = version_and_sysroot(rustc)?;
    if minor(&version).is_none_or(|m| m < MIN_DEBIAN_MINOR) {
        return Err(format!(
            "{} is {version}, older than 1.{MIN_DEBIAN_MINOR}",
            rustc.display()
        ));
    }
    let core_dir = sysroot.join("lib/rustlib").join(BPF_TARGET).join("lib");
    let has_core = std::fs::read_dir(&core_dir).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
    });
    if !has_core {
        return Err(format!(
            "{} ({version}) has no core for {BPF_TARGET} in {} (package libstd-rust-web-dev-bpf)",
            rustc.display(),
            core_dir.display()
        ));
    }
    Ok(Compiler {
        route: Route::Debian,
        rustc: rustc.to_path_buf(),
        cargo: None,
        version,
        sysroot,
    })
}

fn rustup_nightly() -> Result<Compiler, String> {
    let rustup = find_program("rustup").ok_or("rustup not found")?;
    let which = |tool: &str| {
        output_line(
            Command::new(&rustup)
                .args(["which", "--toolchain", "nightly", tool])
                // Never download a toolchain just to look.
                .env("RUSTUP_AUTO_INSTALL", "0"),
        )
        .map(PathBuf::from)
    };
    let rustc = which("rustc").ok_or("no nightly toolchain in rustup")?;
    let cargo = which("cargo").ok_or("rustup's nightly has no cargo")?;
    let (version, sysroot) = version_and_sysroot(&rustc)?;
    if !sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .is_file()
    {
        return Err(format!(
            "rustup nightly ({version}) has no rust-src component \
             (`rustup component add rust-src --toolchain nightly`)"
        ));
    }
    Ok(Compiler {
        route: Route::RustupNightly,
        rustc,
        cargo: Some(cargo),
        version,
        sysroot,
    })
}

fn bpf_linker() -> Result<(PathBuf, String), String> {
    let linker =
        find_program("bpf-linker").ok_or("bpf-linker not found on PATH or in $CARGO_HOME/bin")?;
    let version = output_line(Command::new(&linker).arg("--version"))
        .ok_or_else(|| format!("{} --version failed", linker.display()))?;
    Ok((linker, version))
}

/// `$CARGO_HOME` (default `~/.cargo`).
pub fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// PATH with `$CARGO_HOME/bin` first: `cargo install` puts bpf-linker there, and sudo may drop
/// it from PATH.
pub fn path_with_cargo_bin() -> std::ffi::OsString {
    let mut paths = vec![cargo_home().join("bin")];
    if let Some(path) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

/// The first `name` in [`path_with_cargo_bin`].
pub fn find_program(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&path_with_cargo_bin())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_versions() {
        assert_eq!(
            minor("rustc 1.96.0 (ac68faa20 2026-05-25) (built from a source tarball)"),
            Some(96)
        );
        assert_eq!(minor("rustc 1.97.0-nightly (abc 2026-06-01)"), Some(97));
        assert_eq!(minor("garbage"), None);
    }

    #[test]
    fn a_missing_override_is_no_compiler() {
        let err = debian(Path::new("/nonexistent/rustc")).expect_err("no compiler there");
        assert!(err.contains("not found"), "{err}");
    }
}
