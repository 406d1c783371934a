//! The committed eBPF object (agent-ebpf/prebuilt/): `cargo xtask prebuilt` refreshes it, and
//! `cargo xtask test` checks it against a rebuild from source.
//!
//! The check is byte equality, not only the recorded sources hash: the build is reproducible
//! (the same object from any checkout path, see `ebpf_object::build_command`), so a rebuild with
//! the recorded toolchain must give the committed bytes. That also catches what a hash of the
//! sources cannot: an object built from uncommitted changes, with other flags, or by hand.

use std::{fs, path::Path};

use anyhow::{bail, Context as _, Result};

use crate::{
    build::{self, Built},
    ebpf_object::{self, Manifest},
    exec::workspace_root,
    setup,
};

const REFRESH: &str = "Refresh it with `cargo xtask prebuilt` (on a machine with the BPF \
                       toolchain: `cargo xtask setup --scope run`) and commit agent-ebpf/prebuilt/.";

/// `cargo xtask prebuilt`: builds the object from source and writes it and its manifest to
/// agent-ebpf/prebuilt/.
pub fn run() -> Result<()> {
    setup::bpf_toolchain(setup::Mode::Quiet)?;
    // `check` runs the agent's build script (which builds the object) without compiling the
    // agent itself.
    let built = build::build_with("check", &build::Options::default())?;
    if !built.built_from_source()? {
        bail!(
            "the agent's build script did not build the eBPF object from source (no BPF \
             toolchain: see its warning above)"
        );
    }
    let manifest = built.manifest()?;
    let object = fs::read(built.object())
        .with_context(|| format!("reading {}", built.object().display()))?;
    let root = workspace_root();
    let (object_path, manifest_path) = (
        root.join(ebpf_object::PREBUILT_OBJECT),
        root.join(ebpf_object::PREBUILT_MANIFEST),
    );
    let rendered = manifest.render();
    if fs::read(&object_path).is_ok_and(|old| old == object)
        && fs::read_to_string(&manifest_path).is_ok_and(|old| old == rendered)
    {
        eprintln!(
            "prebuilt: {} is up to date (SHA-256 {}, sources {})",
            ebpf_object::PREBUILT_OBJECT,
            ebpf_object::short(&manifest.object_sha256),
            ebpf_object::short(&manifest.sources_sha256)
        );
        return Ok(());
    }
    if let Some(dir) = object_path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&object_path, &object)
        .with_context(|| format!("writing {}", object_path.display()))?;
    fs::write(&manifest_path, rendered)
        .with_context(|| format!("writing {}", manifest_path.display()))?;
    eprintln!(
        "prebuilt: wrote {} ({} bytes, SHA-256 {}) and {} (sources {}, {}); commit them",
        ebpf_object::PREBUILT_OBJECT,
        object.len(),
        ebpf_object::short(&manifest.object_sha256),
        ebpf_object::PREBUILT_MANIFEST,
        ebpf_object::short(&manifest.sources_sha256),
        manifest.toolchain()
    );
    Ok(())
}

/// CI's check: the object `built` embeds was built from source here, and is byte-identical to
/// the committed one.
pub fn verify(built: &Built) -> Result<()> {
    if !built.built_from_source()? {
        bail!(
            "the agent embeds the committed eBPF object instead of one built from source: no BPF \
             toolchain (run `cargo xtask setup`)"
        );
    }
    let fresh = built.manifest()?;
    let object = fs::read(built.object())
        .with_context(|| format!("reading {}", built.object().display()))?;
    compare(&fresh, &object, &workspace_root())?;
    eprintln!(
        "test: the committed eBPF object is byte-identical to the one rebuilt from source \
         (SHA-256 {}, {})",
        ebpf_object::short(&fresh.object_sha256),
        fresh.toolchain()
    );
    Ok(())
}

/// The committed object under `root` against `object`, just built from source as `fresh` says.
fn compare(fresh: &Manifest, object: &[u8], root: &Path) -> Result<()> {
    let committed = Manifest::read(&root.join(ebpf_object::PREBUILT_MANIFEST))
        .with_context(|| format!("no usable committed eBPF object. {REFRESH}"))?;
    let committed_path = root.join(ebpf_object::PREBUILT_OBJECT);
    let committed_object = fs::read(&committed_path)
        .with_context(|| format!("reading {}. {REFRESH}", committed_path.display()))?;
    let committed_sha = ebpf_object::sha256_hex(&committed_object);
    if committed_sha != committed.object_sha256 {
        bail!(
            "{} has SHA-256 {committed_sha}, its manifest says {}. {REFRESH}",
            ebpf_object::PREBUILT_OBJECT,
            committed.object_sha256
        );
    }
    if committed.sources_sha256 != fresh.sources_sha256 {
        bail!(
            "the committed eBPF object is stale: it was built from sources with hash {}, the \
             sources now hash to {} (agent-ebpf or agent-common changed). {REFRESH}",
            ebpf_object::short(&committed.sources_sha256),
            ebpf_object::short(&fresh.sources_sha256)
        );
    }
    if !committed.same_toolchain(fresh) {
        bail!(
            "the committed eBPF object was built with {}; this machine builds with {}, so the \
             bytes cannot be compared. If this machine's toolchain is the project's, {}",
            committed.toolchain(),
            fresh.toolchain(),
            REFRESH.replacen("Refresh", "refresh", 1)
        );
    }
    if object != committed_object.as_slice() {
        bail!(
            "the eBPF object rebuilt from the same sources with the same toolchain ({}) differs \
             from the committed one (SHA-256 {} rebuilt, {} committed{}): the build is not \
             reproducible here, or the committed object was not made by `cargo xtask prebuilt` \
             from committed sources. {REFRESH}",
            fresh.toolchain(),
            ebpf_object::short(&fresh.object_sha256),
            ebpf_object::short(&committed.object_sha256),
            if fresh.cargo == committed.cargo {
                String::new()
            } else {
                format!("; cargo {} here, {} then", fresh.cargo, committed.cargo)
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository root with a committed object and manifest, removed on drop.
    struct Repo(std::path::PathBuf);

    impl Repo {
        fn with(object: &[u8], manifest: &Manifest) -> Self {
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let root = workspace_root()
                .join("target/xtask-tests")
                .join(format!("prebuilt-{}-{n}", std::process::id()));
            let dir = root.join("agent-ebpf/prebuilt");
            fs::create_dir_all(&dir).expect("create prebuilt dir");
            fs::write(root.join(ebpf_object::PREBUILT_OBJECT), object).expect("object");
            fs::write(root.join(ebpf_object::PREBUILT_MANIFEST), manifest.render())
                .expect("manifest");
            Self(root)
        }
    }

    impl Drop for Repo {
        fn drop(&mut self) {
            if let Err(e) = fs::remove_dir_all(&self.0) {
                eprintln!("leaving {}: {e}", self.0.display());
            }
        }
    }

    fn manifest_of(object: &[u8]) -> Manifest {
        Manifest {
            object_sha256: ebpf_object::sha256_hex(object),
            sources_sha256: "5".repeat(64),
            route: "debian".into(),
            rustc: "rustc 1.96.0".into(),
            bpf_linker: "bpf-linker 0.13.0".into(),
            aya_ebpf: "0.2.1".into(),
            cargo: "cargo 1.95.0".into(),
        }
    }

    fn failure(fresh: &Manifest, object: &[u8], committed: &[u8], manifest: &Manifest) -> String {
        let repo = Repo::with(committed, manifest);
        let err = compare(fresh, object, &repo.0).expect_err("the check fails");
        let text = format!("{err:#}");
        assert!(text.contains("cargo xtask prebuilt"), "no remedy: {text}");
        text
    }

    #[test]
    fn identical_bytes_pass() {
        let object = b"\x7fELF same".as_slice();
        let repo = Repo::with(object, &manifest_of(object));
        compare(&manifest_of(object), object, &repo.0).expect("identical");
    }

    #[test]
    fn each_kind_of_mismatch_fails_with_the_remedy() {
        let object = b"\x7fELF committed".as_slice();
        let committed = manifest_of(object);

        // Stale: the sources changed and the object was not refreshed.
        let rebuilt = b"\x7fELF rebuilt".as_slice();
        let mut fresh = manifest_of(rebuilt);
        fresh.sources_sha256 = "6".repeat(64);
        assert!(failure(&fresh, rebuilt, object, &committed).contains("stale"));

        // Same sources and toolchain, other bytes: not reproducible, or not made by xtask.
        let fresh = manifest_of(rebuilt);
        let text = failure(&fresh, rebuilt, object, &committed);
        assert!(text.contains("differs from the committed one"), "{text}");

        // Another compiler: the bytes cannot be compared.
        let mut other = manifest_of(rebuilt);
        other.rustc = "rustc 1.97.0-nightly".into();
        let text = failure(&other, rebuilt, object, &committed);
        assert!(text.contains("cannot be compared"), "{text}");

        // A manifest that does not describe the committed object.
        let text = failure(&manifest_of(object), object, b"edited", &committed);
        assert!(text.contains("its manifest says"), "{text}");
    }
}
