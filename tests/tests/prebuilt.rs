//! Build anywhere: in a clean clone of the committed state, with stable Rust alone — a PATH with
//! rustup's stable cargo and rustc, no bpf-linker, no BPF target, and the Debian toolchain hidden
//! from agent/build.rs (`TRACEGAP_BPF_RUSTC=/nonexistent`) — `cargo build --release -p agent`
//! embeds the committed eBPF object (agent-ebpf/prebuilt/), and that binary attaches and
//! captures. In the same clone, `cargo xtask setup --scope run` installs nothing, and a changed
//! eBPF source without a refreshed object is a build error naming both remedies.
//!
//! The clone's builds use target/prebuilt-e2e/target, kept between runs so that only the
//! workspace's own crates are rebuilt; the clone itself is removed at the end.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use tracegap_tests::{
    findings_of, require_root, run_client, show, Agent, HttpServer, RECEIVERS_OFF,
};

/// A directory removed on drop (and before use, if a previous run left it).
struct RemoveOnDrop(PathBuf);

impl RemoveOnDrop {
    fn fresh(path: PathBuf) -> Self {
        if path.exists() {
            std::fs::remove_dir_all(&path).expect("remove the previous run's clone");
        }
        Self(path)
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("could not remove {}: {e}", self.0.display());
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

#[track_caller]
fn output(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("failed to start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[track_caller]
fn stdout_line(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&output(cmd).stdout)
        .trim()
        .to_owned()
}

/// A stable toolchain from rustup, run directly (no rustup proxy between).
struct Stable {
    cargo: PathBuf,
    rustc: PathBuf,
}

impl Stable {
    fn find() -> Self {
        let which = |tool: &str| {
            PathBuf::from(stdout_line(Command::new("rustup").args([
                "which",
                "--toolchain",
                "stable",
                tool,
            ])))
        };
        let stable = Self {
            cargo: which("cargo"),
            rustc: which("rustc"),
        };
        assert!(
            !stable.rustc.starts_with("/usr/bin"),
            "rustup's stable rustc, not Debian's: {}",
            stable.rustc.display()
        );
        let sysroot = stable_sysroot(&stable.rustc);
        assert!(
            !sysroot.join("lib/rustlib/bpfel-unknown-none").exists(),
            "rustup's stable has a BPF target in {}",
            sysroot.display()
        );
        stable
    }
}

fn stable_sysroot(rustc: &Path) -> PathBuf {
    PathBuf::from(stdout_line(
        Command::new(rustc).args(["--print", "sysroot"]),
    ))
}

/// The system directories of a Debian PATH, after `bin`.
fn stable_path(bin: &Path) -> OsString {
    let mut path = OsString::from(bin);
    path.push(":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path
}

/// Environment of a user with stable Rust only: `bin` (cargo and rustc) and the system
/// directories on PATH; nothing `cargo test` or `cargo xtask test` set for this test binary.
fn stable_only(cmd: &mut Command, bin: &Path, stable: &Stable, target_dir: &Path) {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let from_the_harness = (key.starts_with("CARGO") && key != "CARGO_HOME")
            || key.starts_with("RUSTUP")
            || key.starts_with("RUSTC")
            || key.starts_with("RUST_")
            || key.starts_with("TRACEGAP_")
            || matches!(key.as_str(), "RUSTFLAGS" | "MAKEFLAGS" | "MFLAGS");
        if from_the_harness {
            cmd.env_remove(&key);
        }
    }
    cmd.env("PATH", stable_path(bin))
        .env("RUSTC", &stable.rustc)
        .env("CARGO_TARGET_DIR", target_dir)
        // Debian's rustc-web is installed on this machine: build.rs must not find it.
        .env("TRACEGAP_BPF_RUSTC", "/nonexistent");
}

#[test]
fn the_agent_builds_with_stable_rust_alone_and_captures() {
    require_root();
    let root = workspace_root();
    let work = root.join("target/prebuilt-e2e");
    std::fs::create_dir_all(&work).expect("create target/prebuilt-e2e");
    let head = stdout_line(
        Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(["rev-parse", "HEAD"]),
    );
    let clone = RemoveOnDrop::fresh(work.join("checkout"));
    output(
        Command::new("git")
            .args(["clone", "--quiet", "--no-checkout"])
            .arg(&root)
            .arg(&clone.0),
    );
    output(
        Command::new("git")
            .arg("-C")
            .arg(&clone.0)
            .args(["checkout", "--quiet", "--detach", &head]),
    );

    let stable = Stable::find();
    let bin = work.join("bin");
    std::fs::create_dir_all(&bin).expect("create bin dir");
    for (name, target) in [("cargo", &stable.cargo), ("rustc", &stable.rustc)] {
        let link = bin.join(name);
        let _absent = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link).expect("link the stable toolchain");
    }
    let target_dir = work.join("target");
    let cargo = |args: &[&str]| {
        let mut cmd = Command::new(bin.join("cargo"));
        cmd.args(args).current_dir(&clone.0);
        stable_only(&mut cmd, &bin, &stable, &target_dir);
        cmd
    };
    assert!(
        !std::env::split_paths(&stable_path(&bin)).any(|dir| dir.join("bpf-linker").exists()),
        "bpf-linker is on the test's PATH"
    );

    // The README's command.
    let started = Instant::now();
    let build = output(&mut cargo(&["build", "--release", "-p", "agent"]));
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&build.stderr);
    // The first run builds every dependency (minutes); later runs only the workspace's crates.
    eprintln!("`cargo build --release -p agent` in a clean clone, stable Rust only: {took:.1?}");
    assert!(
        stderr.contains("using the committed eBPF object"),
        "the build did not say it embeds the committed object:\n{stderr}"
    );
    assert!(
        !stderr.contains("from source"),
        "the build found a BPF toolchain:\n{stderr}"
    );

    // That binary attaches and captures.
    let binary = target_dir.join("release/tracegap");
    let server = HttpServer::start(Duration::from_millis(200));
    let mut cmd = Command::new(&binary);
    cmd.args(["--output", "json"])
        .args(RECEIVERS_OFF)
        .env("RUST_LOG", "info");
    let agent = Agent::start_command_within(cmd, Duration::from_secs(30), false);
    let client = run_client(Command::new("python3").args([
        "-c",
        "import sys, time, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10).read(); time.sleep(1)",
        &server.url("/built-anywhere"),
    ]));
    agent.wait_for(
        "the client's uninstrumented_client finding",
        Duration::from_secs(30),
        |lines| !findings_of(lines, client).is_empty(),
    );
    let lines = agent.stop();
    let found = findings_of(&lines, client);
    assert_eq!(found.len(), 1, "{}", show(&lines));
    let f = found[0];
    assert_eq!(f["kind"], "uninstrumented_client", "{f}");
    assert_eq!(f["path"], "/built-anywhere", "{f}");
    assert_eq!(f["peer"], server.addr().to_string(), "{f}");
    assert_eq!(f["comm"], "python3", "{f}");

    // Running the agent from this clone needs no BPF toolchain: setup installs none of it.
    let setup = output(&mut cargo(&["xtask", "setup", "--scope", "run"]));
    let said = String::from_utf8_lossy(&setup.stderr);
    assert!(
        said.contains("none needed")
            && !said.contains("apt-get")
            && !said.contains("setup: installing")
            && !said.contains("cargo install"),
        "`cargo xtask setup --scope run` with a fresh prebuilt object:\n{said}"
    );

    // An eBPF source changed without a refreshed object: an error naming both remedies.
    let main_rs = clone.0.join("agent-ebpf/src/main.rs");
    let mut source = std::fs::read_to_string(&main_rs).expect("read agent-ebpf/src/main.rs");
    source.push_str("\n// changed without refreshing the prebuilt object\n");
    std::fs::write(&main_rs, source).expect("write agent-ebpf/src/main.rs");
    let stale = cargo(&["build", "--release", "-p", "agent"])
        .stdin(Stdio::null())
        .output()
        .expect("run cargo build");
    let stderr = String::from_utf8_lossy(&stale.stderr);
    assert!(
        !stale.status.success(),
        "a stale object was embedded:\n{stderr}"
    );
    for needed in [
        "sources changed",
        "cargo xtask setup --scope run",
        "cargo xtask prebuilt",
    ] {
        assert!(
            stderr.contains(needed),
            "the error lacks `{needed}`:\n{stderr}"
        );
    }
}
