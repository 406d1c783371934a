//! The eBPF object: its inputs and their hash, the manifest of the committed (prebuilt) object,
//! and how the object is built reproducibly. One definition, included by agent/build.rs
//! (`#[path]`) and by xtask, so that the build and CI agree on what "fresh" means.
//!
//! Only std and anyhow: agent/build.rs must build with stable Rust alone.

use std::{
    ffi::{OsStr, OsString},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

#[path = "bpf_toolchain.rs"]
pub mod toolchain;

/// The committed object and its manifest, relative to the repository root.
pub const PREBUILT_OBJECT: &str = "agent-ebpf/prebuilt/tracegap.bpf.o";
pub const PREBUILT_MANIFEST: &str = "agent-ebpf/prebuilt/tracegap.bpf.toml";
/// What agent/build.rs leaves in its OUT_DIR: the object it embeds, the manifest of that object,
/// and where it came from ([`ORIGIN_SOURCE`] or [`ORIGIN_PREBUILT`]).
pub const OUT_OBJECT: &str = "tracegap.bpf.o";
pub const OUT_MANIFEST: &str = "tracegap.bpf.toml";
pub const OUT_ORIGIN: &str = "tracegap.bpf.origin";
pub const ORIGIN_SOURCE: &str = "source";
pub const ORIGIN_PREBUILT: &str = "prebuilt";

/// Everything the object is built from, relative to the repository root; a directory stands for
/// every file below it. The compiler, bpf-linker and the registry crates (pinned by Cargo.lock)
/// are recorded in the manifest instead.
pub const INPUTS: &[&str] = &[
    "agent-ebpf/src",
    "agent-ebpf/Cargo.toml",
    "agent-ebpf/Cargo.lock",
    "agent-ebpf/.cargo/config.toml",
    "agent-common/src",
    "agent-common/Cargo.toml",
];

/// The codegen flags of the eBPF build (BTF comes from the DWARF debuginfo). Part of the
/// sources hash: changing them changes the object.
pub const RUSTFLAGS: &[&str] = &["-Cdebuginfo=2", "-Clink-arg=--btf"];

/// Set (to "1") in the nested cargo's environment: the program it names as RUSTC_WRAPPER
/// (agent/build.rs's own executable) then acts as [`wrap_rustc`].
pub const WRAPPER_ENV: &str = "TRACEGAP_EBPF_RUSTC_WRAPPER";

/// Editor and merge leftovers inside an input directory, which no build reads.
fn is_scratch_file(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || [".swp", ".swo", ".orig", ".rej"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

/// The input files: (path relative to `root` with `/` separators, absolute path), sorted by the
/// relative path. A listed file that does not exist is left out (and so changes the hash).
pub fn input_files(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    for input in INPUTS {
        let path = root.join(input);
        if path.is_dir() {
            walk(&path, input, &mut files)?;
        } else if path.is_file() {
            files.push(((*input).to_owned(), path));
        }
    }
    files.sort();
    Ok(files)
}

fn walk(dir: &Path, rel: &str, files: &mut Vec<(String, PathBuf)>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            bail!("{}: file name is not UTF-8", entry.path().display());
        };
        if is_scratch_file(name) {
            continue;
        }
        let path = entry.path();
        let rel = format!("{rel}/{name}");
        if path.is_dir() {
            walk(&path, &rel, files)?;
        } else {
            files.push((rel, path));
        }
    }
    Ok(())
}

/// SHA-256 (hex) of the inputs: the rustflags, then each file as `path NUL length NUL bytes`
/// in path order. Paths are relative, so the hash is the same in every checkout.
pub fn sources_sha256(root: &Path) -> Result<String> {
    let mut data = Vec::new();
    data.extend_from_slice(b"rustflags\0");
    data.extend_from_slice(RUSTFLAGS.join("\x1f").as_bytes());
    data.push(0);
    for (rel, path) in input_files(root)? {
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        data.extend_from_slice(rel.as_bytes());
        data.push(0);
        data.extend_from_slice(bytes.len().to_string().as_bytes());
        data.push(0);
        data.extend_from_slice(&bytes);
    }
    Ok(sha256_hex(&data))
}

/// What a committed object was built from, as written beside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub object_sha256: String,
    pub sources_sha256: String,
    /// Which toolchain route built it ([`toolchain::Route::name`]).
    pub route: String,
    /// `rustc -V` of the compiler that built the eBPF crate.
    pub rustc: String,
    /// `bpf-linker --version`.
    pub bpf_linker: String,
    /// aya-ebpf's version in agent-ebpf/Cargo.lock.
    pub aya_ebpf: String,
    /// `cargo -V` of the cargo that drove the build (informational: the build normalises what
    /// cargo's own hashing would put in the object, see [`wrap_rustc`]).
    pub cargo: String,
}

impl Manifest {
    const FIELDS: [&'static str; 7] = [
        "object_sha256",
        "sources_sha256",
        "route",
        "rustc",
        "bpf_linker",
        "aya_ebpf",
        "cargo",
    ];

    fn values(&self) -> [&str; 7] {
        [
            &self.object_sha256,
            &self.sources_sha256,
            &self.route,
            &self.rustc,
            &self.bpf_linker,
            &self.aya_ebpf,
            &self.cargo,
        ]
    }

    /// The manifest as a small TOML file.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# The committed eBPF object beside this file, and what it was built from.\n\
             # Written by `cargo xtask prebuilt`. agent/build.rs embeds the object when no BPF\n\
             # toolchain is installed and sources_sha256 equals the hash of the current sources\n\
             # (defined in xtask/src/ebpf_object.rs); `cargo xtask test` rebuilds it from source\n\
             # and fails unless the bytes are identical.\n",
        );
        for (key, value) in Self::FIELDS.iter().zip(self.values()) {
            // Version strings and hex digests: nothing to escape.
            let value = value.replace(['"', '\\', '\n'], "?");
            out.push_str(&format!("{key} = \"{value}\"\n"));
        }
        out
    }

    /// Parses what [`Manifest::render`] writes (comments, `key = "value"` lines).
    pub fn parse(text: &str) -> Result<Self> {
        let mut values: [Option<String>; 7] = Default::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                bail!("line {}: expected `key = \"value\"`", n + 1);
            };
            let (key, value) = (key.trim(), value.trim());
            let Some(value) = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .filter(|v| !v.contains('"'))
            else {
                bail!("line {}: {key}: expected a quoted string", n + 1);
            };
            let Some(i) = Self::FIELDS.iter().position(|f| *f == key) else {
                bail!("line {}: unknown key {key}", n + 1);
            };
            values[i] = Some(value.to_owned());
        }
        let mut take = |i: usize| {
            values[i]
                .take()
                .with_context(|| format!("{} is missing", Self::FIELDS[i]))
        };
        Ok(Self {
            object_sha256: take(0)?,
            sources_sha256: take(1)?,
            route: take(2)?,
            rustc: take(3)?,
            bpf_linker: take(4)?,
            aya_ebpf: take(5)?,
            cargo: take(6)?,
        })
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The toolchain, in one line for messages.
    pub fn toolchain(&self) -> String {
        format!(
            "{} ({} route), {}, aya-ebpf {}",
            self.rustc, self.route, self.bpf_linker, self.aya_ebpf
        )
    }

    /// Same compiler, linker and aya-ebpf: a rebuild must then give the same bytes.
    pub fn same_toolchain(&self, other: &Self) -> bool {
        self.rustc == other.rustc
            && self.bpf_linker == other.bpf_linker
            && self.aya_ebpf == other.aya_ebpf
    }
}

/// The committed object, if its manifest says it was built from `sources_sha256` and the
/// object's bytes are the ones the manifest names; else why not.
pub fn fresh_prebuilt(root: &Path, sources_sha256: &str) -> Result<(Manifest, PathBuf), String> {
    let manifest_path = root.join(PREBUILT_MANIFEST);
    if !manifest_path.exists() {
        return Err(format!("there is none ({PREBUILT_MANIFEST} is missing)"));
    }
    let manifest = Manifest::read(&manifest_path).map_err(|e| format!("{e:#}"))?;
    let object = root.join(PREBUILT_OBJECT);
    let bytes = fs::read(&object).map_err(|e| format!("reading {}: {e}", object.display()))?;
    let actual = sha256_hex(&bytes);
    if actual != manifest.object_sha256 {
        return Err(format!(
            "{PREBUILT_OBJECT} has SHA-256 {actual}, its manifest says {}",
            manifest.object_sha256
        ));
    }
    if manifest.sources_sha256 != sources_sha256 {
        return Err(format!(
            "the sources changed since it was built (sources hash {} recorded, {} now)",
            short(&manifest.sources_sha256),
            short(sources_sha256)
        ));
    }
    Ok((manifest, object))
}

/// The first 12 hex digits, for messages.
pub fn short(hex: &str) -> &str {
    hex.get(..12).unwrap_or(hex)
}

/// aya-ebpf's version as locked in agent-ebpf/Cargo.lock.
pub fn aya_ebpf_version(root: &Path) -> Result<String> {
    let path = root.join("agent-ebpf/Cargo.lock");
    let lock = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "name = \"aya-ebpf\"" {
            if let Some(version) = lines
                .next()
                .and_then(|l| l.trim().strip_prefix("version = \""))
                .and_then(|v| v.strip_suffix('"'))
            {
                return Ok(version.to_owned());
            }
        }
    }
    bail!("no aya-ebpf package in {}", path.display())
}

/// Where the nested build runs and what it may see.
pub struct BuildDirs<'a> {
    /// The repository root (agent-ebpf/ and agent-common/ are below it).
    pub root: &'a Path,
    /// The nested build's own target dir (sharing the outer one deadlocks on cargo's lock).
    pub target_dir: &'a Path,
    /// `$CARGO_HOME` (its registry sources appear in the debuginfo).
    pub cargo_home: &'a Path,
    /// The executable cargo runs as RUSTC_WRAPPER (it must call [`wrap_rustc`]).
    pub wrapper: &'a Path,
}

/// The object the nested build writes.
pub fn built_object(target_dir: &Path) -> PathBuf {
    target_dir
        .join(toolchain::BPF_TARGET)
        .join("release")
        .join("tracegap")
}

/// The nested cargo that builds agent-ebpf, reproducibly: the debuginfo (and the BTF made
/// from it) names files under `/tracegap`, `/cargo` and `/target` instead of this checkout,
/// this `$CARGO_HOME` and this target dir, and [`wrap_rustc`] takes the checkout path out of
/// the crate hashes that appear in symbol names.
pub fn build_command(tc: &toolchain::Toolchain, dirs: &BuildDirs<'_>) -> Command {
    let mut rustflags: Vec<String> = RUSTFLAGS.iter().map(|f| (*f).to_owned()).collect();
    // Later mappings win over earlier ones (the target dir may lie inside the checkout).
    let mut remaps = vec![
        (dirs.root.to_path_buf(), "/tracegap"),
        (dirs.cargo_home.to_path_buf(), "/cargo"),
        // Cargo names registry sources by their real path: a symlinked registry or git dir.
        (dirs.cargo_home.join("registry"), "/cargo/registry"),
        (dirs.cargo_home.join("git"), "/cargo/git"),
        (dirs.target_dir.to_path_buf(), "/target"),
    ];
    if tc.compiler.route == toolchain::Route::RustupNightly {
        remaps.push((tc.compiler.sysroot.clone(), "/rustc-sysroot"));
    }
    for (from, to) in remaps {
        // The path as given and, if it differs (a symlink on the way), as it really is.
        let real = fs::canonicalize(&from).ok().filter(|real| *real != from);
        for from in std::iter::once(from).chain(real) {
            rustflags.push(format!("--remap-path-prefix={}={to}", from.display()));
        }
    }

    let cargo = tc
        .compiler
        .cargo
        .clone()
        .map_or_else(outer_cargo, OsString::from);
    let mut cmd = Command::new(cargo);
    cmd.current_dir(dirs.root.join("agent-ebpf"))
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            toolchain::BPF_TARGET,
        ])
        .arg("--target-dir")
        .arg(dirs.target_dir);
    if tc.compiler.route == toolchain::Route::RustupNightly {
        cmd.args(["-Z", "build-std=core"]);
    }
    cmd.env("RUSTC", &tc.compiler.rustc)
        // aya-ebpf uses #![feature(...)]; Debian's rustc is a stable compiler.
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTC_WRAPPER", dirs.wrapper)
        .env(WRAPPER_ENV, "1")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\x1f"))
        .env("PATH", toolchain::path_with_cargo_bin())
        // The outer cargo leaks these into build scripts; the nested build must not see them.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_ENCODED_RUSTFLAGS_HOST")
        .env_remove("CARGO_PROFILE_RELEASE_DEBUG");
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_CFG_")
            || key.starts_with("CARGO_FEATURE_")
            || key.starts_with("CARGO_PROFILE_")
        {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd
}

/// `$CARGO` (the cargo running this build) or `cargo`.
pub fn outer_cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// `rustc ARGS` with the crate hash of every crate compiled for the BPF target replaced by
/// `tracegap-<crate>-<version>`. Cargo derives `-C metadata` from, among others, the absolute
/// path of a path dependency outside the package's workspace (`../agent-common`) and its own
/// hashing scheme; rustc puts the hash into every mangled symbol name (the object's `.symtab`
/// and debuginfo), so without this two checkouts give two objects. Name and version keep crates
/// apart as cargo's hash did: one graph never holds two copies of a crate at one version.
/// Host crates (build scripts, proc-macros) are left alone: they are not in the object.
pub fn normalized_rustc_args(args: &[OsString], pkg_version: &str) -> Vec<OsString> {
    let target_arg = args
        .iter()
        .position(|a| a == "--target")
        .and_then(|i| args.get(i + 1));
    let for_bpf = target_arg.is_some_and(|t| t == toolchain::BPF_TARGET);
    let crate_name = args
        .iter()
        .position(|a| a == "--crate-name")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.to_string_lossy().into_owned());
    let (true, Some(name)) = (for_bpf, crate_name) else {
        return args.to_vec();
    };
    let metadata = format!("metadata=tracegap-{name}-{pkg_version}");
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.iter().peekable();
    while let Some(arg) = iter.next() {
        let is_metadata = |a: &OsStr| a.to_str().is_some_and(|s| s.starts_with("metadata="));
        if arg == "-C" && iter.peek().is_some_and(|next| is_metadata(next)) {
            iter.next();
            out.push("-C".into());
            out.push(metadata.clone().into());
        } else if arg.to_str().is_some_and(|s| s.starts_with("-Cmetadata=")) {
            out.push(format!("-C{metadata}").into());
        } else {
            out.push(arg.clone());
        }
    }
    out
}

/// RUSTC_WRAPPER mode (`$WRAPPER_ENV` set): run `rustc ARGS` (the wrapper's arguments) with
/// [`normalized_rustc_args`]. Returns only on failure to start rustc.
pub fn wrap_rustc() -> Result<()> {
    use std::os::unix::process::CommandExt as _;

    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let Some((rustc, rest)) = args.split_first() else {
        bail!("{WRAPPER_ENV} is set but no rustc was given to wrap");
    };
    // Cargo sets CARGO_PKG_VERSION for every rustc it runs for a package.
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let err = Command::new(rustc)
        .args(normalized_rustc_args(rest, &version))
        .exec();
    Err(err).with_context(|| format!("running {}", Path::new(rustc).display()))
}

/// SHA-256 of `data`, as 64 lowercase hex digits (FIPS 180-4). Hand-written so that the
/// agent's build script needs no dependency beyond anyhow; tested against the standard's
/// vectors and `sha256sum`.
pub fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a_2f98,
        0x7137_4491,
        0xb5c0_fbcf,
        0xe9b5_dba5,
        0x3956_c25b,
        0x59f1_11f1,
        0x923f_82a4,
        0xab1c_5ed5,
        0xd807_aa98,
        0x1283_5b01,
        0x2431_85be,
        0x550c_7dc3,
        0x72be_5d74,
        0x80de_b1fe,
        0x9bdc_06a7,
        0xc19b_f174,
        0xe49b_69c1,
        0xefbe_4786,
        0x0fc1_9dc6,
        0x240c_a1cc,
        0x2de9_2c6f,
        0x4a74_84aa,
        0x5cb0_a9dc,
        0x76f9_88da,
        0x983e_5152,
        0xa831_c66d,
        0xb003_27c8,
        0xbf59_7fc7,
        0xc6e0_0bf3,
        0xd5a7_9147,
        0x06ca_6351,
        0x1429_2967,
        0x27b7_0a85,
        0x2e1b_2138,
        0x4d2c_6dfc,
        0x5338_0d13,
        0x650a_7354,
        0x766a_0abb,
        0x81c2_c92e,
        0x9272_2c85,
        0xa2bf_e8a1,
        0xa81a_664b,
        0xc24b_8b70,
        0xc76c_51a3,
        0xd192_e819,
        0xd699_0624,
        0xf40e_3585,
        0x106a_a070,
        0x19a4_c116,
        0x1e37_6c08,
        0x2748_774c,
        0x34b0_bcb5,
        0x391c_0cb3,
        0x4ed8_aa4a,
        0x5b9c_ca4f,
        0x682e_6ff3,
        0x748f_82ee,
        0x78a5_636f,
        0x84c8_7814,
        0x8cc7_0208,
        0x90be_fffa,
        0xa450_6ceb,
        0xbef9_a3f7,
        0xc671_78f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09_e667,
        0xbb67_ae85,
        0x3c6e_f372,
        0xa54f_f53a,
        0x510e_527f,
        0x9b05_688c,
        0x1f83_d9ab,
        0x5be0_cd19,
    ];
    // Padding: 0x80, zeros to 56 mod 64, then the length in bits as a big-endian u64.
    let mut message = data.to_vec();
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    let bits = (data.len() as u64).wrapping_mul(8);
    message.extend_from_slice(&bits.to_be_bytes());

    for block in message.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (state, v) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *state = state.wrapping_add(v);
        }
    }
    h.iter().map(|v| format!("{v:08x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_the_standard_vectors() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            sha256_hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }

    #[test]
    fn sha256_matches_sha256sum_at_every_padding_boundary() {
        use std::io::Write as _;
        for len in [55, 56, 63, 64, 65, 119, 120, 1000, 100_003] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
            let mut child = Command::new("sha256sum")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("run sha256sum");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(&data)
                .expect("write");
            let out = child.wait_with_output().expect("sha256sum output");
            let expected = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                Some(sha256_hex(&data).as_str()),
                expected.split_whitespace().next(),
                "length {len}"
            );
        }
    }

    fn manifest() -> Manifest {
        Manifest {
            object_sha256: "a".repeat(64),
            sources_sha256: "b".repeat(64),
            route: "debian".into(),
            rustc: "rustc 1.96.0 (ac68faa20 2026-05-25) (built from a source tarball)".into(),
            bpf_linker: "bpf-linker 0.13.0".into(),
            aya_ebpf: "0.2.1".into(),
            cargo: "cargo 1.95.0 (f2d3ce0bd 2026-03-21)".into(),
        }
    }

    #[test]
    fn manifest_round_trips() {
        let m = manifest();
        assert_eq!(Manifest::parse(&m.render()).expect("parse"), m);
    }

    #[test]
    fn manifest_errors_name_the_problem() {
        let text = manifest().render().replace("aya_ebpf", "aya");
        let err = format!("{:#}", Manifest::parse(&text).expect_err("unknown key"));
        assert!(err.contains("unknown key aya"), "{err}");
        let text: String = manifest()
            .render()
            .lines()
            .filter(|l| !l.starts_with("rustc"))
            .map(|l| format!("{l}\n"))
            .collect();
        let err = format!("{:#}", Manifest::parse(&text).expect_err("missing"));
        assert!(err.contains("rustc is missing"), "{err}");
        let err = format!(
            "{:#}",
            Manifest::parse("route = debian").expect_err("unquoted")
        );
        assert!(err.contains("quoted"), "{err}");
    }

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn crate_hashes_of_bpf_crates_are_normalised() {
        let args = os(&[
            "--crate-name",
            "agent_common",
            "--edition=2021",
            "/some/checkout/agent-common/src/lib.rs",
            "-C",
            "metadata=4d97f89f87555e2a",
            "-C",
            "extra-filename=-0c2d5a4b",
            "--target",
            "bpfel-unknown-none",
        ]);
        let out = normalized_rustc_args(&args, "0.1.0");
        assert_eq!(out.len(), args.len());
        assert_eq!(out[5], "metadata=tracegap-agent_common-0.1.0");
        // File names may keep cargo's hash: they do not reach the object.
        assert_eq!(out[7], "extra-filename=-0c2d5a4b");

        let joined = os(&[
            "--crate-name",
            "x",
            "-Cmetadata=ab",
            "--target",
            "bpfel-unknown-none",
        ]);
        assert_eq!(
            normalized_rustc_args(&joined, "1.2.3")[2],
            "-Cmetadata=tracegap-x-1.2.3"
        );
    }

    #[test]
    fn host_crates_and_other_invocations_are_left_alone() {
        let host = os(&["--crate-name", "build_script_build", "-C", "metadata=ab"]);
        assert_eq!(normalized_rustc_args(&host, "1.0.0"), host);
        let version = os(&["-vV"]);
        assert_eq!(normalized_rustc_args(&version, ""), version);
    }

    /// A scratch directory under the target dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/xtask-tests")
                .join(format!("{name}-{}", std::process::id()));
            if dir.exists() {
                fs::remove_dir_all(&dir).expect("remove old scratch dir");
            }
            fs::create_dir_all(&dir).expect("create scratch dir");
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            if let Err(e) = fs::remove_dir_all(&self.0) {
                eprintln!("leaving {}: {e}", self.0.display());
            }
        }
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, text).expect("write");
    }

    fn fake_sources(root: &Path) {
        write(root, "agent-ebpf/src/main.rs", "fn main() {}\n");
        write(root, "agent-ebpf/src/h2/frames.rs", "// nested\n");
        write(root, "agent-ebpf/Cargo.toml", "[package]\n");
        write(root, "agent-ebpf/Cargo.lock", "# lock\n");
        write(root, "agent-ebpf/.cargo/config.toml", "[build]\n");
        write(root, "agent-common/src/lib.rs", "// types\n");
        write(root, "agent-common/Cargo.toml", "[package]\n");
        // Not inputs.
        write(root, "agent/src/main.rs", "// userspace\n");
        write(root, "agent-ebpf/README.md", "docs\n");
    }

    #[test]
    fn the_sources_hash_covers_exactly_the_inputs_and_not_the_checkout_path() {
        let (a, b) = (TempDir::new("hash-a"), TempDir::new("hash-b"));
        let b_root = b.0.join("deeper/path");
        fake_sources(&a.0);
        fake_sources(&b_root);
        let hash = sources_sha256(&a.0).expect("hash");
        assert_eq!(hash, sources_sha256(&b_root).expect("hash"));

        let files: Vec<String> = input_files(&a.0)
            .expect("inputs")
            .into_iter()
            .map(|(rel, _)| rel)
            .collect();
        assert_eq!(
            files,
            [
                "agent-common/Cargo.toml",
                "agent-common/src/lib.rs",
                "agent-ebpf/.cargo/config.toml",
                "agent-ebpf/Cargo.lock",
                "agent-ebpf/Cargo.toml",
                "agent-ebpf/src/h2/frames.rs",
                "agent-ebpf/src/main.rs",
            ]
        );

        // Editor leftovers and files outside the inputs do not count...
        write(&a.0, "agent-ebpf/src/.main.rs.swp", "x");
        write(&a.0, "agent-ebpf/src/main.rs~", "x");
        write(&a.0, "agent/src/main.rs", "// changed\n");
        assert_eq!(sources_sha256(&a.0).expect("hash"), hash);
        // ...every input does: content, a new file, a rename.
        write(&a.0, "agent-common/src/lib.rs", "// types changed\n");
        let changed = sources_sha256(&a.0).expect("hash");
        assert_ne!(changed, hash);
        write(&a.0, "agent-ebpf/src/new.rs", "");
        assert_ne!(sources_sha256(&a.0).expect("hash"), changed);
        fs::rename(
            b_root.join("agent-ebpf/src/h2/frames.rs"),
            b_root.join("agent-ebpf/src/h2/frame.rs"),
        )
        .expect("rename");
        assert_ne!(sources_sha256(&b_root).expect("hash"), hash);
    }

    #[test]
    fn a_prebuilt_object_is_fresh_only_for_its_sources_and_its_own_bytes() {
        let root = TempDir::new("fresh");
        fake_sources(&root.0);
        let sources = sources_sha256(&root.0).expect("hash");
        write(&root.0, PREBUILT_OBJECT, "ELF");
        let mut m = manifest();
        m.object_sha256 = sha256_hex(b"ELF");
        m.sources_sha256.clone_from(&sources);
        write(&root.0, PREBUILT_MANIFEST, &m.render());
        assert!(fresh_prebuilt(&root.0, &sources).is_ok());

        let err = fresh_prebuilt(&root.0, &"c".repeat(64)).expect_err("stale");
        assert!(err.contains("sources changed"), "{err}");
        write(&root.0, PREBUILT_OBJECT, "ELF2");
        let err = fresh_prebuilt(&root.0, &sources).expect_err("other bytes");
        assert!(err.contains("its manifest says"), "{err}");
    }
}
