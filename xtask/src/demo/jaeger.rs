//! Jaeger v2 for the demo (tests/go/jaeger.yaml: in-memory storage, every listener on
//! 127.0.0.1) and the reads of its query API (`/api/traces`).

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use super::process::Guard;

pub struct Jaeger {
    guard: Guard,
    query: SocketAddr,
}

/// One span as the query API shows it.
struct Span {
    id: String,
    parent: Option<String>,
    service: String,
    server: bool,
}

impl Jaeger {
    /// Starts Jaeger with `config` (its default ports: UI/API `query_port`, OTLP 14317/14318)
    /// and waits until its API answers.
    pub fn start(bin: &Path, config: &Path, query_port: u16, log: &Path) -> Result<Self> {
        let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let guard = Guard::spawn(
            "jaeger",
            Command::new(bin)
                .arg("--config")
                .arg(config)
                .env("JAEGER_QUERY_HTTP_PORT", query_port.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file),
        )?;
        let jaeger = Self {
            guard,
            query: SocketAddr::from(([127, 0, 0, 1], query_port)),
        };
        let started = Instant::now();
        while jaeger.get("/api/services").is_err() {
            if started.elapsed() > Duration::from_secs(30) {
                bail!(
                    "Jaeger's API did not answer within 30 s; see {}",
                    log.display()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(jaeger)
    }

    /// Blocks until Jaeger exits (Ctrl-C reaches it through the terminal's process group).
    pub fn wait(mut self) {
        let _stopped = self.guard.stop(0, Duration::MAX);
    }

    /// GET over HTTP/1.0 (the answer ends with the connection); the parsed JSON body.
    fn get(&self, path: &str) -> Result<Value> {
        let mut stream = TcpStream::connect_timeout(&self.query, Duration::from_secs(5))
            .with_context(|| format!("connecting to Jaeger at {}", self.query))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.query
        )?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .context("Jaeger's answer has no header end")?;
        let head = String::from_utf8_lossy(&response[..split]);
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
        }
        serde_json::from_slice(&response[split + 4..])
            .with_context(|| format!("GET {path}: not JSON"))
    }

    /// Traces with spans of `service` between `start` and `end` (µs since the epoch).
    fn traces(&self, service: &str, start: u64, end: u64) -> Result<Vec<Vec<Span>>> {
        let v = self.get(&format!(
            "/api/traces?service={service}&start={start}&end={end}&limit=100000"
        ))?;
        Ok(v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .map(spans_of)
            .collect())
    }

    /// Calls from `caller` to `callee` in the window: (complete, all), counted on the callee's
    /// server spans. Waits (bounded) until `expected` of them arrived.
    pub fn calls(
        &self,
        caller: &str,
        callee: &str,
        start: u64,
        end: u64,
        expected: u64,
    ) -> Result<(u64, u64)> {
        let started = Instant::now();
        loop {
            let traces = self.traces(callee, start, end)?;
            let mut all = 0;
            let mut complete = 0;
            for trace in &traces {
                let by_id: HashMap<&str, &Span> =
                    trace.iter().map(|s| (s.id.as_str(), s)).collect();
                for s in trace.iter().filter(|s| s.server && s.service == callee) {
                    all += 1;
                    let parent = s.parent.as_deref().and_then(|p| by_id.get(p));
                    if parent.is_some_and(|p| p.service == caller) {
                        complete += 1;
                    }
                }
            }
            if all >= expected {
                return Ok((complete, all));
            }
            if started.elapsed() > Duration::from_secs(60) {
                eprintln!(
                    "demo: Jaeger has {all} of {expected} {callee} server spans after 60 s; \
                     counting those"
                );
                return Ok((complete, all));
            }
            thread::sleep(Duration::from_millis(500));
        }
    }

    /// Purchases (loadgen trace ids) whose trace is whole in Jaeger: all nine spans, one root,
    /// every parent present.
    pub fn complete_purchases(&self, ids: &[String], start: u64, end: u64) -> Result<u64> {
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let v = self.get(&format!(
            "/api/traces?service=loadgen&start={start}&end={end}&limit=100000"
        ))?;
        let mut complete = 0;
        for trace in v["data"].as_array().into_iter().flatten() {
            if !trace["traceID"]
                .as_str()
                .is_some_and(|id| wanted.contains(id))
            {
                continue;
            }
            let spans = spans_of(trace);
            let ids: HashSet<&str> = spans.iter().map(|s| s.id.as_str()).collect();
            let roots = spans.iter().filter(|s| s.parent.is_none()).count();
            let linked = spans
                .iter()
                .all(|s| s.parent.as_deref().is_none_or(|p| ids.contains(p)));
            if spans.len() == 9 && roots == 1 && linked {
                complete += 1;
            }
        }
        Ok(complete)
    }
}

fn spans_of(trace: &Value) -> Vec<Span> {
    trace["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| Span {
            id: s["spanID"].as_str().unwrap_or("").to_owned(),
            parent: s["references"]
                .as_array()
                .and_then(|r| r.iter().find(|r| r["refType"] == "CHILD_OF"))
                .and_then(|r| r["spanID"].as_str())
                .map(str::to_owned),
            service: trace["processes"][s["processID"].as_str().unwrap_or("")]["serviceName"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            server: s["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| t["key"] == "span.kind" && t["value"] == "server"),
        })
        .collect()
}
