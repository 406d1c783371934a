//! Provides the eBPF object the agent embeds (`TRACEGAP_BPF_OBJECT`).
//!
//! - With a BPF toolchain (Debian's rustc-web with its prebuilt BPF `core`, or rustup nightly
//!   with rust-src; and bpf-linker: xtask/src/bpf_toolchain.rs), agent-ebpf is built from
//!   source, reproducibly (xtask/src/ebpf_object.rs). If the committed object
//!   (agent-ebpf/prebuilt/) no longer matches the sources, a warning says to refresh it.
//! - Without one, the committed object is embedded if the SHA-256 of the sources recorded in its
//!   manifest equals that of the current sources (a warning says so), so the agent builds with
//!   stable Rust alone. Sources changed since then: an error naming both remedies, never a stale
//!   object.
//!
//! Environment: `TRACEGAP_BPF_RUSTC` names the BPF compiler (default /usr/bin/rustc; a path that
//! does not exist means "no BPF toolchain"); `TRACEGAP_REQUIRE_EBPF` makes a missing toolchain
//! an error even when the committed object is fresh.
//!
//! Its own executable doubles as the nested build's RUSTC_WRAPPER (see
//! `ebpf_object::wrap_rustc`).

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{bail, Context as _, Result};

#[path = "../xtask/src/ebpf_object.rs"]
#[allow(
    dead_code,
    reason = "shared with xtask, which uses the parts this build script does not"
)]
mod ebpf_object;

use ebpf_object::{toolchain, Manifest};

const REQUIRE_ENV: &str = "TRACEGAP_REQUIRE_EBPF";

fn main() {
    let outcome = if env::var_os(ebpf_object::WRAPPER_ENV).is_some() {
        ebpf_object::wrap_rustc()
    } else {
        run()
    };
    if let Err(e) = outcome {
        // Plainly, once: cargo shows this under "failed to run custom build command".
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir
        .parent()
        .context("agent/ has no parent directory")?
        .to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    println!("cargo:rerun-if-env-changed={REQUIRE_ENV}");
    println!("cargo:rerun-if-env-changed={}", toolchain::RUSTC_ENV);
    // The prebuilt directory, not its files: a file created there later (the first
    // `cargo xtask prebuilt`) must rerun this script too.
    let prebuilt_dir = Path::new(ebpf_object::PREBUILT_OBJECT)
        .parent()
        .and_then(Path::to_str)
        .unwrap_or(ebpf_object::PREBUILT_OBJECT);
    for path in ebpf_object::INPUTS.iter().chain(&[prebuilt_dir]) {
        // A path that does not exist would make cargo rerun this script on every build.
        if root.join(path).exists() {
            println!("cargo:rerun-if-changed={}", root.join(path).display());
        }
    }

    let sources = ebpf_object::sources_sha256(&root)?;
    let prebuilt = ebpf_object::fresh_prebuilt(&root, &sources);
    let found = toolchain::Found::detect();
    let refresh = format!(
        "refresh it with `cargo xtask prebuilt` and commit {}",
        Path::new(ebpf_object::PREBUILT_OBJECT)
            .parent()
            .map_or(Path::new(""), |p| p)
            .display()
    );

    let (object, manifest, origin) = if let Some(tc) = found.toolchain() {
        for path in [&tc.compiler.rustc, &tc.linker] {
            println!("cargo:rerun-if-changed={}", path.display());
        }
        let (object, manifest) = build_from_source(&tc, &root, &out_dir, &sources)?;
        if let Err(why) = &prebuilt {
            println!(
                "cargo:warning=built the eBPF object from source; the committed one does not \
                 match it ({why}): {refresh}"
            );
        }
        (object, manifest, ebpf_object::ORIGIN_SOURCE)
    } else if env::var_os(REQUIRE_ENV).is_some() {
        bail!(
            "{REQUIRE_ENV} is set and there is no BPF toolchain ({}). Install it with \
             `cargo xtask setup --scope run`.",
            found.missing()
        );
    } else {
        match prebuilt {
            Ok((manifest, path)) => {
                println!(
                    "cargo:warning=no BPF toolchain ({}): using the committed eBPF object {} \
                     (built from these sources, sources hash {}, with {})",
                    found.missing(),
                    ebpf_object::PREBUILT_OBJECT,
                    ebpf_object::short(&sources),
                    manifest.toolchain()
                );
                let bytes =
                    fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                (bytes, manifest, ebpf_object::ORIGIN_PREBUILT)
            }
            Err(why) => bail!(
                "the committed eBPF object {} cannot be used: {why}; and there is no BPF \
                 toolchain to build it from source ({}).\n\
                 Either install the toolchain: `cargo xtask setup --scope run` (Debian 12), or \
                 a rustup nightly with rust-src plus `cargo install bpf-linker`;\n\
                 or, on a machine that has it, {refresh}.",
                ebpf_object::PREBUILT_OBJECT,
                found.missing()
            ),
        }
    };

    // Rewritten only when changed: a new mtime would recompile the agent.
    write_if_changed(&out_dir.join(ebpf_object::OUT_OBJECT), &object)?;
    write_if_changed(
        &out_dir.join(ebpf_object::OUT_MANIFEST),
        manifest.render().as_bytes(),
    )?;
    write_if_changed(&out_dir.join(ebpf_object::OUT_ORIGIN), origin.as_bytes())?;
    println!(
        "cargo:rustc-env=TRACEGAP_BPF_OBJECT={}",
        out_dir.join(ebpf_object::OUT_OBJECT).display()
    );
    Ok(())
}

fn build_from_source(
    tc: &toolchain::Toolchain,
    root: &Path,
    out_dir: &Path,
    sources: &str,
) -> Result<(Vec<u8>, Manifest)> {
    let target_dir = out_dir.join("ebpf-target");
    let wrapper = env::current_exe().context("locating the build script's executable")?;
    let cargo_home = toolchain::cargo_home();
    let mut cmd = ebpf_object::build_command(
        tc,
        &ebpf_object::BuildDirs {
            root,
            target_dir: &target_dir,
            cargo_home: &cargo_home,
            wrapper: &wrapper,
        },
    );
    // The outer cargo reads build-script stdout for `cargo:` lines.
    cmd.stdout(Stdio::from(std::io::stderr()));
    let status = cmd
        .status()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    if !status.success() {
        bail!(
            "building agent-ebpf with {} ({} route) failed ({status}); see the output above",
            tc.compiler.version,
            tc.compiler.route.name()
        );
    }
    let built = ebpf_object::built_object(&target_dir);
    let object = fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    let cargo = tc
        .compiler
        .cargo
        .clone()
        .map_or_else(ebpf_object::outer_cargo, Into::into);
    let manifest = Manifest {
        object_sha256: ebpf_object::sha256_hex(&object),
        sources_sha256: sources.to_owned(),
        route: tc.compiler.route.name().to_owned(),
        rustc: tc.compiler.version.clone(),
        bpf_linker: tc.linker_version.clone(),
        aya_ebpf: ebpf_object::aya_ebpf_version(root)?,
        cargo: version_of(&cargo),
    };
    Ok((object, manifest))
}

fn version_of(program: &std::ffi::OsStr) -> String {
    std::process::Command::new(program)
        .arg("-V")
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".to_owned(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        )
}

fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<()> {
    if fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}
