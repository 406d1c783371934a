//! Processes that live a few milliseconds are judged like servers that live for hours: the
//! kernel's exec records tell the agent who they were, even when they are gone from /proc by
//! the time their request is handled.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use serde_json::Value;
use tracegap_tests::{findings, last_counters, show, Agent, ChildGuard, HttpServer, RECEIVERS_OFF};

/// Keeps the agent busy: one connection sending requests with W3C context at
/// [`BUSY_PER_SECOND`] to a sink that reads and drops them (no findings, many events to
/// handle), well within what the ring buffer holds (an overflowing ring loses exec records
/// too, and those processes are then rightly counted as unknown).
const BUSY_PER_SECOND: u64 = 20_000;

struct BusyLoad {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl BusyLoad {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the sink");
        let addr = listener.local_addr().expect("sink address");
        let stop = Arc::new(AtomicBool::new(false));
        let sink = thread::spawn(move || {
            let Ok((mut conn, _)) = listener.accept() else {
                return;
            };
            let mut buf = [0u8; 65536];
            while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
        });
        let sender = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || send_until(addr, &stop))
        };
        Self {
            stop,
            threads: vec![sender, sink],
        }
    }
}

fn send_until(addr: SocketAddr, stop: &AtomicBool) {
    let Ok(mut conn) = TcpStream::connect(addr) else {
        return;
    };
    let request = format!(
        "GET /busy HTTP/1.1\r\nHost: sink\r\ntraceparent: {}\r\n\r\n",
        tracegap_tests::TRACEPARENT
    );
    // Batches of 200 every 10 ms.
    let batch = BUSY_PER_SECOND / 100;
    while !stop.load(Ordering::Relaxed) {
        let started = std::time::Instant::now();
        for _ in 0..batch {
            if conn.write_all(request.as_bytes()).is_err() {
                return;
            }
        }
        thread::sleep(Duration::from_millis(10).saturating_sub(started.elapsed()));
    }
}

impl Drop for BusyLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _joined = t.join();
        }
    }
}

/// Runs `script` with sh, to completion.
fn sh(script: &str, env: &[(&str, &str)]) {
    let mut child = ChildGuard::spawn(
        Command::new("sh")
            .args(["-c", script])
            .envs(env.iter().copied())
            .stdout(Stdio::null()),
    );
    child.wait_success(Duration::from_secs(300));
}

/// The latest line of every finding of `kind` whose path starts with `prefix`, by path.
fn by_path<'a>(lines: &'a [Value], kind: &str, prefix: &str) -> Vec<&'a Value> {
    let mut latest: std::collections::BTreeMap<String, &Value> = std::collections::BTreeMap::new();
    for f in findings(lines) {
        let path = f["path"].as_str().unwrap_or_default();
        if f["kind"] == kind && path.starts_with(prefix) {
            latest.insert(path.to_owned(), f);
        }
    }
    latest.into_values().collect()
}

#[test]
fn a_thousand_curls_in_a_row_are_each_judged() {
    const CURLS: usize = 1000;
    let server = HttpServer::start(Duration::ZERO);
    let agent = Agent::start(&RECEIVERS_OFF);
    let busy = BusyLoad::start();
    let curl = std::fs::canonicalize(which("curl")).expect("curl is installed");
    sh(
        &format!(
            "i=0; while [ $i -lt {CURLS} ]; do curl -s -o /dev/null {}$i; i=$((i+1)); done",
            server.url("/short/")
        ),
        &[],
    );
    drop(busy);
    assert!(
        server.served() >= CURLS,
        "the server answered {}",
        server.served()
    );
    // Judged once the 5 s instrumentation window has passed.
    agent.wait_for("a verdict on each curl", Duration::from_secs(60), |lines| {
        by_path(lines, "uninstrumented_client", "/short/").len() >= CURLS - 1
    });
    let lines = agent.stop();
    let judged = by_path(&lines, "uninstrumented_client", "/short/");
    assert!(judged.len() >= CURLS - 1, "{} judged", judged.len());
    let mut pids = std::collections::HashSet::new();
    for f in &judged {
        assert_eq!(f["comm"], "curl", "{f}");
        assert_eq!(f["exe"], curl.to_string_lossy().as_ref(), "{f}");
        assert_eq!(f["peer"], server.addr().to_string(), "{f}");
        pids.insert(f["pid"].as_u64());
    }
    assert_eq!(pids.len(), judged.len(), "one process each");
    let counters = last_counters(&lines);
    assert!(
        counters["agent"]["processes_from_records"].as_u64() >= Some(CURLS as u64),
        "{counters}"
    );
    assert!(
        counters["agent"]["events"].as_u64().unwrap_or(0) > 20 * CURLS as u64,
        "the busy load reached the agent: {counters}"
    );
    eprintln!("{} of {CURLS} curls judged; {counters}", judged.len());
}

#[test]
fn two_hundred_one_shot_instrumented_pythons_are_each_judged_with_their_service() {
    const RUNS: usize = 200;
    let server = HttpServer::start(Duration::ZERO);
    let agent = Agent::start(&RECEIVERS_OFF);
    sh(
        &format!(
            "i=0; while [ $i -lt {RUNS} ]; do python3 -c 'import sys, urllib.request; \
             urllib.request.urlopen(sys.argv[1]).read()' {}$i; i=$((i+1)); done",
            server.url("/oneshot/")
        ),
        &[("OTEL_SERVICE_NAME", "oneshot")],
    );
    agent.wait_for("a verdict on each run", Duration::from_secs(30), |lines| {
        by_path(lines, "missing_traceparent", "/oneshot/").len() >= RUNS
    });
    let lines = agent.stop();
    let judged = by_path(&lines, "missing_traceparent", "/oneshot/");
    assert_eq!(judged.len(), RUNS, "{}", show(&lines));
    for f in &judged {
        assert_eq!(f["service_name"], "oneshot", "{f}");
    }
    assert!(
        by_path(&lines, "uninstrumented_client", "/oneshot/").is_empty(),
        "{}",
        show(&lines)
    );
}

#[test]
fn the_environment_at_exec_decides_not_a_later_putenv() {
    let server = HttpServer::start(Duration::from_millis(100));
    let agent = Agent::start(&RECEIVERS_OFF);
    let pid = tracegap_tests::run_client(Command::new("python3").args([
        "-c",
        "import os, sys, urllib.request; os.environ['OTEL_SERVICE_NAME'] = 'late'; \
         urllib.request.urlopen(sys.argv[1]).read()",
        &server.url("/putenv"),
    ]));
    agent.wait_for("the verdict", Duration::from_secs(30), |lines| {
        !tracegap_tests::findings_of(lines, pid).is_empty()
    });
    let lines = agent.stop();
    let found = tracegap_tests::findings_of(&lines, pid);
    assert_eq!(found.len(), 1, "{}", show(&lines));
    assert_eq!(found[0]["kind"], "uninstrumented_client", "{}", found[0]);
    assert!(found[0]["service_name"].is_null(), "{}", found[0]);
}

fn which(program: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("{program} is not on PATH"))
}
