//! CI mode, end to end: `tracegap check -- ./suite.sh` on a small integration suite (a shell
//! script that starts a downstream service and calls it with an instrumented client and curl).
//! The exit status, the summary, and the JUnit, Markdown and JSON reports.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use serde_json::Value;
use tracegap_tests::{agent_bin, require_root, ChildGuard};

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tracegap-check-{name}-{}", std::process::id()));
        let _stale = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _removed = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind port 0")
        .port()
}

/// The suite: a downstream HTTP service, curl to wait for it, then `client` calls it through an
/// application instrumented with the OpenTelemetry Python SDK (tests/fixtures/otel_app.py), and
/// `extra` runs; the downstream is stopped and the script exits with `exit`.
fn suite(dir: &Path, client: &str, extra: &str, exit: i32) -> PathBuf {
    let script = dir.join("suite.sh");
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
# A small integration suite.
python3 -m http.server --bind 127.0.0.1 "$DOWNSTREAM_PORT" >/dev/null 2>&1 &
downstream=$!
i=0
until curl -s -o /dev/null "http://127.0.0.1:$DOWNSTREAM_PORT/ready"; do
  i=$((i+1)); [ $i -gt 100 ] && exit 99; sleep 0.1
done
FIXTURE_SERVICE=cart python3 {fixtures}/otel_app.py {client} "http://127.0.0.1:$DOWNSTREAM_PORT/api/cart"
{extra}
kill $downstream
exit {exit}
"#
        ),
    )
    .expect("write the suite");
    script
}

struct Check {
    output: Output,
    junit: String,
    markdown: String,
    json: Value,
}

impl Check {
    fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    /// Everything, for assertion messages.
    fn show(&self) -> String {
        format!(
            "exit {:?}\nstdout:\n{}\nstderr:\n{}\njson:\n{:#}",
            self.code(),
            self.stdout(),
            String::from_utf8_lossy(&self.output.stderr),
            self.json
        )
    }

    /// The kinds of findings reported, sorted, each once.
    fn finding_kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self.json["findings"]
            .as_array()
            .map(|f| {
                f.iter()
                    .filter_map(|f| f["kind"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        kinds.sort();
        kinds.dedup();
        kinds
    }
}

/// `tracegap check [options] -- sh SUITE`, with its own receiver port and the reports in `dir`.
fn check(dir: &Path, script: &Path, options: &[&str]) -> Check {
    require_root();
    let receiver = free_port();
    let (junit, markdown, json) = (
        dir.join("junit.xml"),
        dir.join("summary.md"),
        dir.join("check.json"),
    );
    let output = Command::new(agent_bin())
        .arg("check")
        .args(["--otlp-grpc-listen", "off", "--otlp-http-listen"])
        .arg(format!("127.0.0.1:{receiver}"))
        .arg("--junit")
        .arg(&junit)
        .arg("--markdown")
        .arg(&markdown)
        .arg("--json")
        .arg(&json)
        .args(options)
        .arg("--")
        .arg("sh")
        .arg(script)
        .env("DOWNSTREAM_PORT", free_port().to_string())
        .env(
            "FIXTURE_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{receiver}"),
        )
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("run tracegap check");
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    Check {
        junit: read(&junit),
        markdown: read(&markdown),
        json: serde_json::from_str(&read(&json)).unwrap_or(Value::Null),
        output,
    }
}

#[test]
fn an_uninstrumented_call_fails_the_build_with_the_finding_in_every_report() {
    let dir = TempDir::new("broken");
    let c = check(&dir.0, &suite(&dir.0, "client-plain", "", 0), &[]);
    assert_eq!(c.code(), Some(1), "{}", c.show());
    // curl, waiting for the downstream, is uninstrumented (info: not a failure).
    assert_eq!(
        c.finding_kinds(),
        ["missing_traceparent", "uninstrumented_client"],
        "{}",
        c.show()
    );
    let f = &c.json["findings"][0];
    assert_eq!(f["service_name"], "cart", "{f}");
    assert_eq!(f["path"], "/api/cart", "{f}");
    assert_eq!(f["fails_check"], true, "{f}");
    assert_eq!(c.json["command_exit_code"], 0, "{}", c.show());
    // The service's coverage, and curl (no service.name) waiting for the downstream.
    let cart = c.json["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["service"] == "cart"))
        .unwrap_or_else(|| panic!("the cart service: {}", c.show()));
    assert_eq!(cart["coverage_percent"], 0.0, "{cart}");
    assert!(c.stdout().contains("result: FAIL (exit 1)"), "{}", c.show());
    assert!(
        c.junit.contains(r#"<failure type="missing_traceparent""#)
            && c.junit.contains("without traceparent"),
        "{}",
        c.junit
    );
    assert!(c.junit.starts_with("<?xml"), "{}", c.junit);
    assert!(
        c.markdown.contains("**missing_traceparent**") && c.markdown.contains("| cart |"),
        "{}",
        c.markdown
    );
}

#[test]
fn the_fixed_suite_passes() {
    let dir = TempDir::new("fixed");
    let c = check(&dir.0, &suite(&dir.0, "client-instrumented", "", 0), &[]);
    assert_eq!(c.code(), Some(0), "{}", c.show());
    assert!(
        !c.finding_kinds().iter().any(|k| k == "missing_traceparent"),
        "{}",
        c.show()
    );
    let cart = c.json["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["service"] == "cart"))
        .unwrap_or_else(|| panic!("the cart service: {}", c.show()));
    assert_eq!(cart["coverage_percent"], 100.0, "{cart}");
    assert!(c.stdout().contains("result: PASS (exit 0)"), "{}", c.show());
    assert!(!c.junit.contains("<failure"), "{}", c.junit);
}

#[test]
fn a_failing_command_fails_with_its_own_status() {
    let dir = TempDir::new("failing");
    let c = check(&dir.0, &suite(&dir.0, "client-instrumented", "", 3), &[]);
    assert_eq!(c.code(), Some(3), "{}", c.show());
    assert!(c.junit.contains(r#"type="command""#), "{}", c.junit);
}

#[test]
fn processes_outside_the_tree_are_ignored_unless_all() {
    let dir = TempDir::new("outside");
    let downstream = free_port();
    let _server = ChildGuard::spawn(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &downstream.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    // Outside the tree: an instrumented process calling without context, over and over
    // while the check runs.
    let outsider = format!(
        "while true; do OTEL_SERVICE_NAME=outsider curl -s -o /dev/null \
         http://127.0.0.1:{downstream}/outside; sleep 0.2; done"
    );
    let _outsider = ChildGuard::spawn(Command::new("sh").args(["-c", &outsider]));
    let script = suite(&dir.0, "client-instrumented", "sleep 1", 0);
    let c = check(&dir.0, &script, &[]);
    assert_eq!(c.code(), Some(0), "{}", c.show());
    assert_eq!(c.finding_kinds(), ["uninstrumented_client"], "{}", c.show());
    assert!(!c.show().contains("outsider"), "{}", c.show());
    let c = check(&dir.0, &script, &["--all"]);
    assert_eq!(c.code(), Some(1), "{}", c.show());
    assert!(
        c.json["findings"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["service_name"] == "outsider")),
        "{}",
        c.show()
    );
}

#[test]
fn coverage_thresholds_both_ways() {
    let dir = TempDir::new("coverage");
    // A service that speaks B3 only: a warning (below the default --fail-on error), and no
    // W3C coverage.
    let legacy = "OTEL_SERVICE_NAME=legacy curl -s -o /dev/null \
                  -H 'b3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1' \
                  http://127.0.0.1:$DOWNSTREAM_PORT/legacy";
    let script = suite(&dir.0, "client-instrumented", legacy, 0);
    let c = check(&dir.0, &script, &["--require-coverage", "0"]);
    assert_eq!(c.code(), Some(0), "{}", c.show());
    assert_eq!(
        c.finding_kinds(),
        ["non_w3c_propagation", "uninstrumented_client"],
        "{}",
        c.show()
    );
    let c = check(&dir.0, &script, &["--require-coverage", "50"]);
    assert_eq!(c.code(), Some(1), "{}", c.show());
    assert!(
        c.stdout().contains("coverage below 50% for legacy"),
        "{}",
        c.show()
    );
    assert!(
        c.junit.contains(r#"<failure type="coverage""#),
        "{}",
        c.junit
    );
    let c = check(&dir.0, &script, &["--fail-on", "warning"]);
    assert_eq!(c.code(), Some(1), "{}", c.show());
}

#[test]
fn check_waits_for_the_verdicts_it_owes() {
    // A check is over in seconds, not the 30 s span grace of the live agent.
    let dir = TempDir::new("timing");
    let started = std::time::Instant::now();
    let c = check(&dir.0, &suite(&dir.0, "client-plain", "", 0), &[]);
    assert_eq!(c.code(), Some(1), "{}", c.show());
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "took {:?}",
        started.elapsed()
    );
}
