//! The Go shop's harness for go_shop.rs: the agent, the four services and the load generator
//! behind guards, Jaeger, and the assertions every test shares.

use std::{
    collections::BTreeMap,
    io::Read as _,
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use serde_json::Value;
use tracegap_tests::{
    findings_of, free_port, go_bin, http_get, kinds_of, show, start_server, wait_listening, Agent,
    ChildGuard,
};

/// Span grace of the agent in these tests; the SDKs' batch processors export every 100 ms.
pub const GRACE: Duration = Duration::from_secs(2);
pub const BSP_DELAY_MS: &str = "100";
pub const CHARGE: &str = "/shop.Payment/Charge";

pub fn agent(extra: &[&str]) -> Agent {
    let mut args = vec![
        "--otlp-grpc-listen",
        "127.0.0.1:0",
        "--otlp-http-listen",
        "127.0.0.1:0",
        "--span-grace",
        "2s",
    ];
    args.extend_from_slice(extra);
    Agent::start(&args)
}

/// An agent that forwards the shop's spans to `jaeger` and adds its findings to the traces
/// there (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), at most one per finding per `interval`.
pub fn annotating_agent(jaeger: &Jaeger, interval: &str) -> Agent {
    let forward = format!("http://{}", jaeger.otlp_http);
    let traces = format!("http://{}/v1/traces", jaeger.otlp_http);
    Agent::start_with_env(
        &[
            "--otlp-grpc-listen",
            "127.0.0.1:0",
            "--otlp-http-listen",
            "127.0.0.1:0",
            "--span-grace",
            "2s",
            "--forward-to",
            &forward,
            "--trace-annotation-interval",
            interval,
        ],
        &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &traces)],
    )
}

/// A Collector (the Jaeger binary with tests/go/collector.yaml) on loopback, forwarding to
/// `jaeger`: the shop exports there, not to the agent.
pub fn collector(jaeger: &Jaeger) -> (ChildGuard, Export) {
    let (grpc, http) = (free_port(), free_port());
    let guard = ChildGuard::spawn(
        Command::new(go_bin("jaeger"))
            .arg("--config")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/go/collector.yaml"))
            .env("COLLECTOR_OTLP_GRPC_PORT", grpc.to_string())
            .env("COLLECTOR_OTLP_HTTP_PORT", http.to_string())
            .env("JAEGER_OTLP_GRPC_PORT", jaeger.otlp_grpc.port().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    );
    let export = Export {
        http: SocketAddr::from(([127, 0, 0, 1], http)),
        grpc: SocketAddr::from(([127, 0, 0, 1], grpc)),
    };
    wait_listening(export.http, Duration::from_secs(20));
    wait_listening(export.grpc, Duration::from_secs(20));
    (guard, export)
}

/// Where the shop's SDKs send their spans.
#[derive(Clone, Copy)]
pub struct Export {
    /// OTLP/HTTP (every service but payment).
    pub http: SocketAddr,
    /// OTLP/gRPC (payment, so that both Go exporters are exercised).
    pub grpc: SocketAddr,
}

impl Export {
    pub fn to_agent(agent: &Agent) -> Self {
        Self {
            http: agent.otlp_http_addr(),
            grpc: agent.otlp_grpc_addr(),
        }
    }
}

/// Faults per service (`SHOP_FAULTS` values), the share of requests they hit, and HTTPS
/// between checkout and inventory.
#[derive(Default)]
pub struct Setup {
    pub faults: BTreeMap<&'static str, &'static str>,
    pub fraction: Option<&'static str>,
    pub https: bool,
}

impl Setup {
    pub fn fault(mut self, service: &'static str, faults: &'static str) -> Self {
        self.faults.insert(service, faults);
        self
    }
}

/// A directory removed on drop, unique per process and call.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tracegap-go-shop-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _removed = std::fs::remove_dir_all(&self.0);
    }
}

/// The four services, each behind its guard (dropped in reverse order: callers first).
pub struct Shop {
    pub _dir: TempDir,
    pub inventory: ChildGuard,
    pub payment: ChildGuard,
    pub checkout: ChildGuard,
    pub frontend: ChildGuard,
    pub inventory_port: u16,
    pub payment_port: u16,
    pub checkout_port: u16,
    pub frontend_port: u16,
    pub export: Export,
    pub setup: Setup,
}

/// A service's command: standard OTEL_* variables (so the agent knows it is instrumented),
/// its faults, stderr inherited (it says its pid and faults).
pub fn service(name: &str, export: Export, setup: &Setup) -> Command {
    let mut cmd = Command::new(go_bin(name));
    let (protocol, endpoint) = if name == "payment" {
        ("grpc", export.grpc)
    } else {
        ("http/protobuf", export.http)
    };
    cmd.env("OTEL_SERVICE_NAME", name)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{endpoint}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", BSP_DELAY_MS)
        .env("SHOP_FAULTS", setup.faults.get(name).copied().unwrap_or(""))
        .env("SHOP_FAULT_FRACTION", setup.fraction.unwrap_or("1"))
        .env_remove("OTEL_RESOURCE_ATTRIBUTES")
        .env_remove("OTEL_TRACES_SAMPLER")
        .stdin(Stdio::null());
    cmd
}

impl Shop {
    #[track_caller]
    pub fn start(export: Export, setup: Setup) -> Self {
        let dir = TempDir::new();
        let cert = dir.0.join("inventory.pem");
        let mut inv = service("inventory", export, &setup);
        if setup.https {
            inv.arg("-tls-cert").arg(&cert);
        }
        let (inventory, inventory_port) = start_server(&mut inv);
        let (payment, payment_port) = start_server(&mut service("payment", export, &setup));
        let scheme = if setup.https { "https" } else { "http" };
        let mut co = service("checkout", export, &setup);
        co.arg("-inventory")
            .arg(format!("{scheme}://127.0.0.1:{inventory_port}"))
            .arg("-payment")
            .arg(format!("127.0.0.1:{payment_port}"));
        if setup.https {
            co.arg("-ca").arg(&cert);
        }
        let (checkout, checkout_port) = start_server(&mut co);
        let (frontend, frontend_port) = start_server(
            service("frontend", export, &setup)
                .arg("-checkout")
                .arg(format!("http://127.0.0.1:{checkout_port}")),
        );
        Self {
            _dir: dir,
            inventory,
            payment,
            checkout,
            frontend,
            inventory_port,
            payment_port,
            checkout_port,
            frontend_port,
            export,
            setup,
        }
    }

    /// Runs the load generator to completion: `n` purchases, 4 at a time.
    #[track_caller]
    pub fn load(&self, n: usize) -> Load {
        let ids = self._dir.0.join("trace-ids");
        let mut cmd = service("loadgen", self.export, &self.setup);
        cmd.arg("-target")
            .arg(format!("http://127.0.0.1:{}", self.frontend_port))
            .arg("-n")
            .arg(n.to_string())
            .arg("-trace-ids")
            .arg(&ids)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = ChildGuard::spawn(&mut cmd);
        let pid = child.pid();
        let mut summary = String::new();
        child
            .0
            .stdout
            .take()
            .expect("piped stdout")
            .read_to_string(&mut summary)
            .expect("read loadgen's summary");
        child.wait_success(Duration::from_secs(60));
        let summary = summary.trim();
        // "sent N failed F sampled S"
        let words: Vec<&str> = summary.split_whitespace().collect();
        let sampled = match words.as_slice() {
            ["sent", sent, "failed", "0", "sampled", s] if sent.parse() == Ok(n) => {
                s.parse().expect("sampled count")
            }
            _ => panic!("loadgen printed {summary:?}"),
        };
        let trace_ids = std::fs::read_to_string(&ids)
            .expect("loadgen's trace ids")
            .lines()
            .filter_map(|l| l.split_once(' ').map(|(id, s)| (id.to_owned(), s == "1")))
            .collect();
        Load {
            pid,
            sampled,
            trace_ids,
        }
    }

    pub fn pids(&self) -> [(&'static str, u32); 4] {
        [
            ("frontend", self.frontend.pid()),
            ("checkout", self.checkout.pid()),
            ("inventory", self.inventory.pid()),
            ("payment", self.payment.pid()),
        ]
    }

    pub fn peer(port: u16) -> String {
        format!("127.0.0.1:{port}")
    }
}

pub struct Load {
    pub pid: u32,
    pub sampled: usize,
    /// (trace id, sampled) per request.
    pub trace_ids: Vec<(String, bool)>,
}

/// The span rules judge an outbound context `GRACE` after it was sent: give the last ones that
/// window (plus the SDKs' export delay) before stopping the agent. A time window of the rule
/// itself, not a condition that could be polled: the agent prints no line when a context is
/// judged clean.
pub fn settle() {
    std::thread::sleep(GRACE + Duration::from_millis(1500));
}

/// Asserts that none of these pids has a finding.
#[track_caller]
pub fn assert_clean(lines: &[Value], pids: &[(&str, u32)]) {
    for (name, pid) in pids {
        assert_eq!(
            kinds_of(lines, *pid),
            Vec::<String>::new(),
            "{name} (pid {pid}) should have no finding:\n{}",
            show(lines)
        );
    }
}

/// The latest coverage line of `pid`.
#[track_caller]
pub fn coverage(lines: &[Value], pid: u32) -> &Value {
    lines
        .iter()
        .rev()
        .find(|l| l["kind"] == "coverage" && l["pid"] == pid)
        .unwrap_or_else(|| panic!("no coverage line for pid {pid}:\n{}", show(lines)))
}

/// Asserts the one finding of `pid`: its kind, process, route, and returns it.
#[track_caller]
pub fn the_finding<'a>(lines: &'a [Value], pid: u32, kind: &str, service: &str) -> &'a Value {
    assert_eq!(kinds_of(lines, pid), [kind], "{service}:\n{}", show(lines));
    let all = findings_of(lines, pid);
    assert_eq!(all.len(), 1, "one route only: {all:?}");
    let f = all[0];
    assert_eq!(f["service_name"], service, "{f}");
    assert_eq!(f["comm"], service, "{f}");
    assert_eq!(f["direction"], "outbound", "{f}");
    f
}

#[track_caller]
pub fn assert_route(f: &Value, peer: &str, method: &str, path: &str, protocol: &str, tls: bool) {
    assert_eq!(f["peer"], peer, "{f}");
    assert_eq!(f["method"], method, "{f}");
    assert_eq!(f["path"], path, "{f}");
    assert_eq!(f["protocol"], protocol, "{f}");
    assert_eq!(f["tls"], tls, "{f}");
}

/// Coverage of every calling process with every switch off: all requests carry W3C context.
#[track_caller]
pub fn assert_full_coverage(lines: &[Value], pid: u32, requests: u64) {
    let c = coverage(lines, pid);
    assert_eq!(c["requests"], requests, "{c}");
    assert_eq!(c["with_context"], requests, "{c}");
    assert_eq!(c["coverage_percent"], 100.0, "{c}");
}

/// Jaeger v2 (tests/go/jaeger.yaml: in-memory, OTLP and query on 127.0.0.1).
pub struct Jaeger {
    pub _child: ChildGuard,
    pub otlp_http: SocketAddr,
    pub otlp_grpc: SocketAddr,
    pub query: SocketAddr,
}

impl Jaeger {
    #[track_caller]
    pub fn start() -> Self {
        let (otlp_http, otlp_grpc, query, query_grpc) =
            (free_port(), free_port(), free_port(), free_port());
        let child = ChildGuard::spawn(
            Command::new(go_bin("jaeger"))
                .arg("--config")
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/go/jaeger.yaml"))
                .env("JAEGER_OTLP_HTTP_PORT", otlp_http.to_string())
                .env("JAEGER_OTLP_GRPC_PORT", otlp_grpc.to_string())
                .env("JAEGER_QUERY_HTTP_PORT", query.to_string())
                .env("JAEGER_QUERY_GRPC_PORT", query_grpc.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null()),
        );
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let jaeger = Self {
            _child: child,
            otlp_http: addr(otlp_http),
            otlp_grpc: addr(otlp_grpc),
            query: addr(query),
        };
        for a in [jaeger.otlp_http, jaeger.otlp_grpc, jaeger.query] {
            wait_listening(a, Duration::from_secs(20));
        }
        jaeger
    }

    /// The query API's answer for one trace (`data[0]`, with `spans`, `processes` and each
    /// span's `warnings`), if Jaeger has it.
    pub fn raw_trace(&self, id: &str) -> Option<Value> {
        let Ok((200, body)) = http_get(self.query, &format!("/api/traces/{id}")) else {
            return None;
        };
        let v: Value = serde_json::from_str(&body).expect("Jaeger answers JSON");
        v["data"].get(0).cloned()
    }

    /// Waits (bounded) until one of the traces `ids` holds a span named `name`; returns the
    /// trace id and the API's answer for it.
    #[track_caller]
    pub fn wait_annotated(&self, ids: &[(String, bool)], name: &str) -> (String, Value) {
        let started = std::time::Instant::now();
        loop {
            for (id, _) in ids {
                if let Some(t) = self.raw_trace(id) {
                    let has = t["spans"]
                        .as_array()
                        .is_some_and(|s| s.iter().any(|s| s["operationName"] == name));
                    if has {
                        return (id.clone(), t);
                    }
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no trace of {ids:?} in Jaeger has a span {name:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The spans of one trace as (service, span id, parent span id) — empty if unknown.
    pub fn trace(&self, id: &str) -> Vec<(String, String, Option<String>)> {
        let Ok((200, body)) = http_get(self.query, &format!("/api/traces/{id}")) else {
            return Vec::new();
        };
        let v: Value = serde_json::from_str(&body).expect("Jaeger answers JSON");
        let Some(trace) = v["data"].get(0) else {
            return Vec::new();
        };
        trace["spans"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                let service = trace["processes"][s["processID"].as_str().unwrap_or("")]
                    ["serviceName"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                let parent = s["references"]
                    .as_array()
                    .and_then(|r| r.iter().find(|r| r["refType"] == "CHILD_OF"))
                    .and_then(|r| r["spanID"].as_str())
                    .map(str::to_owned);
                (
                    service,
                    s["spanID"].as_str().unwrap_or("").to_owned(),
                    parent,
                )
            })
            .collect()
    }

    /// Waits (bounded) until Jaeger holds `spans` spans of trace `id`.
    #[track_caller]
    pub fn wait_trace(&self, id: &str, spans: usize) -> Vec<(String, String, Option<String>)> {
        let started = std::time::Instant::now();
        loop {
            let t = self.trace(id);
            if t.len() >= spans {
                return t;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "Jaeger has {} of {spans} spans of trace {id}: {t:?}",
                t.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Services of a complete purchase trace: loadgen (root + client), frontend (server + client),
/// checkout (server + HTTP client + gRPC client), inventory, payment.
pub const COMPLETE_TRACE: [&str; 9] = [
    "checkout",
    "checkout",
    "checkout",
    "frontend",
    "frontend",
    "inventory",
    "loadgen",
    "loadgen",
    "payment",
];

/// Waits (bounded) until the agent logged its Go TLS probes on these shop executables.
#[track_caller]
pub fn wait_for_go_tls_probes(agent: &Agent, names: &[&str]) {
    let started = std::time::Instant::now();
    loop {
        let stderr = agent.stderr();
        let probed = |name: &&str| {
            stderr.contains(&format!("Go TLS probes on {} (", go_bin(name).display()))
        };
        if names.iter().all(probed) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the agent did not probe {names:?} within 20 s:\n{stderr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
