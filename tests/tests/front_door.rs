//! The README's front door, as a newcomer uses it: `cargo xtask run -- --output json` typed in a
//! shell (through cargo, not the agent binary), a request from a real client, Ctrl-C; and every
//! xtask subcommand's `--help`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use tracegap_tests::{
    bpf::{bpf_programs, programs_of},
    findings_of, run_client, show, Agent, HttpServer,
};

/// The workspace root: where a user runs the README's commands.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `cargo xtask ARGS` from the workspace root, with the environment of a user's shell: nothing
/// that `cargo test` or `cargo xtask test` set for this test binary.
fn cargo_xtask(args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("xtask").args(args).current_dir(workspace_root());
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let from_the_harness =
            (key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR")
                || key.starts_with("TRACEGAP_")
                || key.starts_with("RUST_TEST")
                || matches!(key.as_str(), "CARGO" | "MAKEFLAGS" | "MFLAGS" | "RUST_LOG");
        if from_the_harness {
            cmd.env_remove(&key);
        }
    }
    cmd
}

#[test]
fn every_xtask_subcommand_prints_its_help_through_cargo() {
    for sub in [
        "setup", "build", "run", "check", "go-build", "test", "demo", "bench", "fuzz",
    ] {
        let out = cargo_xtask(&[sub, "--help"])
            .stdin(Stdio::null())
            .output()
            .expect("run cargo xtask");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "`cargo xtask {sub} --help` failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("Usage: xtask {sub}")),
            "`cargo xtask {sub} --help` printed:\n{stdout}"
        );
    }
}

#[test]
fn a_bad_agent_flag_is_reported_once_with_the_agents_exit_status() {
    let out = cargo_xtask(&["run", "--", "--no-such-flag"])
        .stdin(Stdio::null())
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run cargo xtask run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap's usage error status:\n{stderr}"
    );
    assert_eq!(
        stderr.matches("--no-such-flag").count(),
        1,
        "the agent says it once, and xtask adds nothing:\n{stderr}"
    );
    assert!(!stderr.contains("Error:"), "{stderr}");
    assert!(!stderr.contains("stack backtrace"), "{stderr}");
}

/// Setup finds everything installed (`cargo xtask test` ran it) and the build is fresh, so this
/// is seconds; the bound is for a loaded machine re-checking the build.
const ATTACH_WITHIN: Duration = Duration::from_secs(300);

#[test]
fn readme_run_command_judges_a_request_and_stops_cleanly_on_ctrl_c() {
    let before: Vec<u64> = bpf_programs().into_iter().map(|(id, _, _)| id).collect();
    let server = HttpServer::start(Duration::ZERO);
    // Exactly the README's command, in its own process group like a shell job, so that the
    // Ctrl-C below reaches cargo, xtask and the agent together.
    let agent = Agent::start_command_within(
        cargo_xtask(&["run", "--", "--output", "json"]),
        ATTACH_WITHIN,
        true,
    );
    // The xtask process (cargo execs it) runs the agent as its child.
    let agent_pids = child_pids(agent.pid());
    assert_eq!(agent_pids.len(), 1, "xtask runs one agent: {agent_pids:?}");
    let programs = programs_of(agent_pids[0], &before);
    assert!(!programs.is_empty(), "the agent holds no programs");

    // The README's first example: a curl, gone in milliseconds.
    let client = run_client(Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        &server.url("/front-door?token=SECRET"),
    ]));
    agent.wait_for(
        "the client's uninstrumented_client finding",
        Duration::from_secs(30),
        |lines| !findings_of(lines, client).is_empty(),
    );
    // Ctrl-C: the agent prints its last report, detaches, and its exit status is xtask's.
    let lines = agent.stop();
    let found = findings_of(&lines, client);
    assert_eq!(found.len(), 1, "{}", show(&lines));
    let f = found[0];
    assert_eq!(f["kind"], "uninstrumented_client", "{f}");
    assert_eq!(f["path"], "/front-door", "{f}");
    assert_eq!(f["peer"], server.addr().to_string(), "{f}");
    assert_eq!(f["comm"], "curl", "{f}");
    assert!(!show(&lines).contains("SECRET"), "{}", show(&lines));
    assert!(
        lines.last().is_some_and(|l| l["kind"] == "counters"),
        "the final counters line comes last:\n{}",
        show(&lines)
    );
    tracegap_tests::bpf::assert_unloaded_within(&programs, Duration::from_secs(1), "Ctrl-C");
}

/// The pids whose parent is `pid`.
fn child_pids(pid: u32) -> Vec<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}
