//! Silent SDKs (issue 23): Go programs built from tests/go with the Go on PATH, judged by what
//! their executables link (`.go.buildinfo`) and what they export.
//!
//! - `sdkclient` builds a TracerProvider (OTLP/HTTP exporter, batcher) and calls through an
//!   otelhttp transport, but never calls `otel.SetTracerProvider`: the global provider stays the
//!   no-op, its calls carry no context and it exports nothing → `sdk_not_wired`, with or
//!   without OTEL_* variables (before: `missing_traceparent` / `uninstrumented_client`).
//! - `sdkclient -wired` registers it: context on every call, spans exported → no finding.
//! - `plainclient` links no OpenTelemetry module → `uninstrumented_client`, as before.
//! - `sdkclient-skew` is `sdkclient -wired` built with tests/go/go.skew.mod, whose `replace`
//!   links go.opentelemetry.io/otel/sdk below the version the build requires →
//!   `otel_version_skew`; the requirement is checked here against the modules' own go.mod
//!   files (`go mod graph`).

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tracegap_tests::{
    findings_of, go_bin, kinds_of, last_counters, show, Agent, ChildGuard, HttpServer,
};

/// Span grace of the agent here: the window a process with a linked SDK has to export a span.
const GRACE: &str = "2s";
/// Requests each client sends.
const N: u64 = 5;
const PATH: &str = "/silent";

fn agent() -> Agent {
    Agent::start(&[
        "--otlp-grpc-listen",
        "127.0.0.1:0",
        "--otlp-http-listen",
        "127.0.0.1:0",
        "--span-grace",
        GRACE,
    ])
}

/// A Go client of tests/go calling `server` N times; with `otel_env`, the standard OTEL_*
/// variables naming it and pointing its exporter at the agent (as a deployment would set
/// them); without, no OTEL_* variable at all (what the rules of before call uninstrumented).
fn client(name: &str, server: &HttpServer, agent: &Agent, otel_env: bool) -> Command {
    let mut cmd = Command::new(go_bin(name));
    cmd.arg("-target")
        .arg(server.url(PATH))
        .arg("-n")
        .arg(N.to_string())
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES")
        .env_remove("OTEL_TRACES_EXPORTER")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_BSP_SCHEDULE_DELAY");
    if otel_env {
        cmd.env("OTEL_SERVICE_NAME", name)
            .env(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                format!("http://{}/v1/traces", agent.otlp_http_addr()),
            )
            .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    }
    cmd
}

/// Starts a client and waits until it printed "sent N" (its calls are done; it stays up, as a
/// service does, until the guard kills it).
#[track_caller]
fn start(cmd: &mut Command) -> ChildGuard {
    let mut child = ChildGuard::spawn(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("read the client's first line");
    assert_eq!(line.trim(), format!("sent {N}"), "{cmd:?}");
    child
}

/// Waits for `pid`'s finding of `kind` with all N requests.
#[track_caller]
fn wait_for(agent: &Agent, pid: u32, kind: &str) {
    agent.wait_for(kind, Duration::from_secs(30), |lines| {
        findings_of(lines, pid)
            .iter()
            .any(|f| f["kind"] == kind && f["count"] == N)
    });
}

/// The one finding of `pid`, of `kind`, for the N calls to `server`.
#[track_caller]
fn the_finding<'a>(lines: &'a [Value], pid: u32, kind: &str, server: &HttpServer) -> &'a Value {
    assert_eq!(kinds_of(lines, pid), [kind], "{}", show(lines));
    let all = findings_of(lines, pid);
    assert_eq!(all.len(), 1, "{all:?}");
    let f = all[0];
    assert_eq!(f["peer"], server.addr().to_string(), "{f}");
    assert_eq!(f["method"], "GET", "{f}");
    assert_eq!(f["path"], PATH, "{f}");
    assert_eq!(f["count"], N, "{f}");
    f
}

/// The Go version the test binaries were built with, as their build information says.
fn go_version() -> String {
    let out = Command::new("go")
        .args(["version"])
        .arg(go_bin("sdkclient"))
        .output()
        .expect("`go` on PATH");
    String::from_utf8_lossy(&out.stdout)
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The name of every OpenTelemetry component in a finding's or coverage line's inventory.
fn components(v: &Value) -> Vec<(&str, &str)> {
    v["otel"]["components"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default(),
                c["role"].as_str().unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn silent_sdk_linked_but_never_registered_is_sdk_not_wired_with_or_without_otel_variables() {
    let server = HttpServer::start(Duration::from_millis(10));
    let agent = agent();
    let with_env = start(&mut client("sdkclient", &server, &agent, true));
    let without_env = start(&mut client("sdkclient", &server, &agent, false));
    for pid in [with_env.pid(), without_env.pid()] {
        wait_for(&agent, pid, "sdk_not_wired");
    }
    let lines = agent.stop();

    let version = go_version();
    for pid in [with_env.pid(), without_env.pid()] {
        let f = the_finding(&lines, pid, "sdk_not_wired", &server);
        assert_eq!(f["severity"], "error", "{f}");
        assert_eq!(f["comm"], "sdkclient", "{f}");
        let evidence = &f["evidence"];
        assert_eq!(evidence["runtime"], version.as_str(), "{f}");
        assert_eq!(evidence["spans_exported"], "0", "{f}");
        let modules = evidence["otel_components"].as_str().unwrap_or_default();
        for linked in [
            "go.opentelemetry.io/otel@v1.47.0",
            "go.opentelemetry.io/otel/sdk@v1.47.0",
            "go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp@v1.47.0",
            "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp@v0.72.0",
        ] {
            assert!(modules.split(' ').any(|m| m == linked), "{linked} in {f}");
        }
        assert_eq!(f["runtime"]["name"], "go", "{f}");
        assert_eq!(f["runtime"]["version"], version.as_str(), "{f}");
        assert_eq!(f["otel"]["sdk"], true, "{f}");
        assert_eq!(f["otel"]["expects_span_exports"], true, "{f}");
        let c = components(f);
        assert!(
            c.contains(&("go.opentelemetry.io/otel/sdk", "sdk")),
            "{c:?}"
        );
        assert!(
            c.contains(&(
                "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp",
                "instrumentation"
            )),
            "{c:?}"
        );
        // Nothing but OpenTelemetry modules: grpc, x/net and the main module stay on the host.
        assert!(c
            .iter()
            .all(|(name, _)| name.starts_with("go.opentelemetry.io/")));
    }
    let counters = last_counters(&lines);
    assert_eq!(
        counters["agent"]["export_batches"], 0,
        "neither client exported a span: {counters}"
    );
    assert!(
        counters["agent"]["inventory_executables_read"].as_u64() >= Some(1),
        "{counters}"
    );
    drop((with_env, without_env));
}

#[test]
fn silent_sdk_registered_with_set_tracer_provider_has_no_finding() {
    let server = HttpServer::start(Duration::from_millis(10));
    let agent = agent();
    let wired = start(client("sdkclient", &server, &agent, true).arg("-wired"));
    let pid = wired.pid();
    // Its client spans reach the agent; then every context has had its grace window.
    agent.wait_for("span exports", Duration::from_secs(20), |lines| {
        lines
            .iter()
            .any(|l| l["kind"] == "counters" && l["agent"]["export_batches"].as_u64() >= Some(1))
            || !findings_of(lines, pid).is_empty()
    });
    std::thread::sleep(Duration::from_millis(3500));
    let lines = agent.stop();
    assert_eq!(
        kinds_of(&lines, pid),
        Vec::<String>::new(),
        "{}",
        show(&lines)
    );
    let coverage = lines
        .iter()
        .rev()
        .find(|l| l["kind"] == "coverage" && l["pid"] == pid)
        .unwrap_or_else(|| panic!("no coverage line for {pid}:\n{}", show(&lines)));
    assert_eq!(coverage["with_context"], N, "{coverage}");
    assert_eq!(coverage["runtime"]["name"], "go", "{coverage}");
    assert_eq!(coverage["otel"]["expects_span_exports"], true, "{coverage}");
    let counters = last_counters(&lines);
    assert!(
        counters["agent"]["export_batches"].as_u64() >= Some(1),
        "{counters}"
    );
    assert_eq!(counters["agent"]["traces"]["judged"], N, "{counters}");
}

#[test]
fn silent_sdk_go_binary_without_opentelemetry_is_uninstrumented_client() {
    let server = HttpServer::start(Duration::from_millis(10));
    let agent = agent();
    let plain = start(&mut client("plainclient", &server, &agent, false));
    let pid = plain.pid();
    wait_for(&agent, pid, "uninstrumented_client");
    let lines = agent.stop();
    let f = the_finding(&lines, pid, "uninstrumented_client", &server);
    assert_eq!(f["severity"], "info", "{f}");
    assert_eq!(f["runtime"]["name"], "go", "{f}");
    assert_eq!(f["otel"]["sdk"], false, "{f}");
    assert_eq!(f["otel"]["components"], serde_json::json!([]), "{f}");
}

/// Every version of go.opentelemetry.io/otel/sdk some module of the skew build requires, from
/// the `go mod graph` that `cargo xtask go-build` wrote beside the binary.
fn sdk_requirements() -> Vec<(String, String)> {
    let graph = go_bin("sdkclient-skew.modgraph");
    std::fs::read_to_string(&graph)
        .unwrap_or_else(|e| panic!("reading {}: {e}", graph.display()))
        .lines()
        .filter_map(|l| {
            let (from, to) = l.split_once(' ')?;
            let version = to.strip_prefix("go.opentelemetry.io/otel/sdk@")?;
            Some((from.to_owned(), version.to_owned()))
        })
        .collect()
}

/// `v1.47.0` → (1, 47, 0).
fn release(version: &str) -> (u64, u64, u64) {
    let mut parts = version.trim_start_matches('v').split('.').map(|p| {
        p.parse()
            .unwrap_or_else(|_| panic!("not a release: {version}"))
    });
    let mut next = || {
        parts
            .next()
            .unwrap_or_else(|| panic!("not a release: {version}"))
    };
    (next(), next(), next())
}

#[test]
fn silent_sdk_replace_below_what_the_build_requires_is_otel_version_skew() {
    // The premise, from the modules' own go.mod files: the OTLP trace exporter (and otelhttp)
    // require otel/sdk v1.47.0, the highest requirement, which MVS selects; go.skew.mod links
    // v1.46.0 in its place.
    let requirements = sdk_requirements();
    let required = "v1.47.0";
    assert!(
        requirements.iter().any(|(from, v)| {
            from == "go.opentelemetry.io/otel/exporters/otlp/otlptrace@v1.47.0" && v == required
        }),
        "{requirements:?}"
    );
    assert!(
        requirements
            .iter()
            .all(|(_, v)| release(v) <= release(required)),
        "{required} is the highest requirement: {requirements:?}"
    );
    let skew_mod = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/go/go.skew.mod"))
        .expect("read go.skew.mod");
    assert!(skew_mod
        .contains("replace go.opentelemetry.io/otel/sdk => go.opentelemetry.io/otel/sdk v1.46.0"));

    let server = HttpServer::start(Duration::from_millis(10));
    let agent = agent();
    let skewed = start(client("sdkclient-skew", &server, &agent, true).arg("-wired"));
    let pid = skewed.pid();
    agent.wait_for("otel_version_skew", Duration::from_secs(20), |lines| {
        findings_of(lines, pid)
            .iter()
            .any(|f| f["kind"] == "otel_version_skew")
    });
    std::thread::sleep(Duration::from_millis(3500));
    let lines = agent.stop();
    assert_eq!(
        kinds_of(&lines, pid),
        ["otel_version_skew"],
        "wired, so nothing else: {}",
        show(&lines)
    );
    let f = findings_of(&lines, pid)[0];
    assert_eq!(f["severity"], "warning", "{f}");
    assert_eq!(f["count"], 1, "one finding per process: {f}");
    assert_eq!(f["peer"], Value::Null, "{f}");
    assert_eq!(
        f["evidence"]["go.opentelemetry.io/otel/sdk"],
        format!("linked v1.46.0, required {required}"),
        "{f}"
    );
    let sdk = f["otel"]["components"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "go.opentelemetry.io/otel/sdk")
        .unwrap_or_else(|| panic!("otel/sdk in {f}"));
    assert_eq!(sdk["version"], required, "{f}");
    assert_eq!(
        sdk["replaced_by"],
        serde_json::json!({"path": "go.opentelemetry.io/otel/sdk", "version": "v1.46.0"}),
        "{f}"
    );
}
