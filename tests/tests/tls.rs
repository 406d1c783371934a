//! HTTPS: real clients (curl, Python, Node) send requests over TLS to a local Python TLS server;
//! the agent sees their plaintext through the OpenSSL uprobes and reports findings marked
//! `"tls": true`. Every assertion needs the TLS capture: at the syscall level these requests are
//! ciphertext, which the HTTP filter never matches.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

use serde_json::Value;
use tracegap_tests::{
    findings_of, kinds_of, last_counters, run_client, show, start_server, Agent, ChildGuard,
    TRACEPARENT,
};

/// A Python `http.server` behind `ssl` on 127.0.0.1 (port 0), answering after 300 ms so that
/// short-lived clients are still alive when the agent looks them up in /proc.
const SERVER: &str = r#"
import http.server, ssl, sys, time
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(0.3)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
s.socket = ctx.wrap_socket(s.socket, server_side=True)
print("listening", s.server_address[1], flush=True)
s.serve_forever()
"#;

/// A directory removed on drop, unique per process and call.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tracegap-tls-{}-{}",
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

/// The TLS server with a self-signed certificate made by the `openssl` CLI.
struct TlsServer {
    _child: ChildGuard,
    _dir: TempDir,
    port: u16,
}

impl TlsServer {
    /// The Python TLS server (HTTP/1.1).
    #[track_caller]
    fn start() -> Self {
        Self::start_with(|cert, key| {
            let mut cmd = Command::new("python3");
            cmd.args(["-c", SERVER]).arg(cert).arg(key);
            cmd
        })
    }

    /// `server(cert, key)` is the command that serves; it prints "listening PORT".
    #[track_caller]
    fn start_with(server: impl FnOnce(&Path, &Path) -> Command) -> Self {
        let dir = TempDir::new();
        let (key, cert) = (dir.0.join("key.pem"), dir.0.join("cert.pem"));
        let status = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("the openssl CLI is needed to make the test certificate");
        assert!(status.success(), "openssl req failed: {status}");
        let (child, port) = start_server(&mut server(&cert, &key));
        Self {
            _child: child,
            _dir: dir,
            port,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    fn peer(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

fn curl(url: &str, headers: &[&str]) -> Command {
    let mut cmd = Command::new("curl");
    // --http1.1: the server speaks HTTP/1.1 only anyway; say so rather than rely on ALPN.
    cmd.args([
        "-sS",
        "-k",
        "--http1.1",
        "-o",
        "/dev/null",
        "--max-time",
        "10",
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg(url);
    cmd
}

/// The one finding of `pid`, which must be of `kind`, seen over TLS, for `path`, for one request.
#[track_caller]
fn assert_tls_finding<'a>(lines: &'a [Value], pid: u32, kind: &str, path: &str) -> &'a Value {
    assert_tls_findings(lines, pid, kind, path, 1)
}

/// [`assert_tls_finding`] for `requests` requests.
#[track_caller]
fn assert_tls_findings<'a>(
    lines: &'a [Value],
    pid: u32,
    kind: &str,
    path: &str,
    requests: u64,
) -> &'a Value {
    assert_eq!(kinds_of(lines, pid), [kind], "pid {pid}:\n{}", show(lines));
    let f = findings_of(lines, pid)[0];
    assert_eq!(f["tls"], true, "{f}");
    assert_eq!(f["path"], path, "{f}");
    assert_eq!(f["method"], "GET", "{f}");
    assert_eq!(f["direction"], "outbound", "{f}");
    assert_eq!(
        f["count"], requests,
        "one per request, not one per SSL_write attempt: {f}"
    );
    f
}

fn agent() -> Agent {
    Agent::start(&["--otlp-grpc-listen", "off", "--otlp-http-listen", "off"])
}

#[test]
fn tls_curl_and_python_requests_are_judged() {
    let server = TlsServer::start();
    let agent = agent();

    let instrumented = run_client(
        curl(&server.url("/checkout?card=SECRET"), &[]).env("OTEL_SERVICE_NAME", "checkout"),
    );
    let traced = run_client(&mut curl(
        &server.url("/traced"),
        &[&format!("traceparent: {TRACEPARENT}")],
    ));
    let python = run_client(Command::new("python3").args([
        "-c",
        "import ssl, sys, urllib.request\n\
         ctx = ssl.create_default_context()\n\
         ctx.check_hostname = False\n\
         ctx.verify_mode = ssl.CERT_NONE\n\
         urllib.request.urlopen(sys.argv[1], context=ctx, timeout=10).read()",
        &server.url("/py"),
    ]));

    let lines = agent.stop();
    // curl writes ciphertext with sendto inside SSL_write: the socket, so the peer, is known.
    let f = assert_tls_finding(&lines, instrumented, "missing_traceparent", "/checkout");
    assert_eq!(f["service_name"], "checkout", "{f}");
    assert_eq!(f["comm"], "curl", "{f}");
    assert_eq!(f["peer"], server.peer().as_str(), "{f}");
    assert_eq!(
        kinds_of(&lines, traced),
        Vec::<String>::new(),
        "valid traceparent over TLS:\n{}",
        show(&lines)
    );
    let traced_coverage = lines
        .iter()
        .rev()
        .find(|l| l["kind"] == "coverage" && l["pid"] == traced)
        .unwrap_or_else(|| panic!("no coverage line for the traced curl:\n{}", show(&lines)));
    assert_eq!(traced_coverage["with_context"], 1, "{traced_coverage}");

    // Python's ssl module calls SSL_write_ex.
    let f = assert_tls_finding(&lines, python, "uninstrumented_client", "/py");
    assert_eq!(f["peer"], server.peer().as_str(), "{f}");

    assert!(!show(&lines).contains("SECRET"), "{}", show(&lines));
    let counters = last_counters(&lines);
    assert!(
        counters["kernel"]["tls_client_hellos"].as_u64() >= Some(3),
        "three TLS connections started: {counters}"
    );
}

#[test]
fn tls_node_https_get_is_seen_through_its_static_openssl() {
    let node = Path::new("/usr/bin/node");
    assert!(node.is_file(), "the Node test needs /usr/bin/node");
    let server = TlsServer::start();
    let agent = agent();

    // Node links OpenSSL statically: the agent probes /usr/bin/node when it execs (the probe
    // attaches in tens of milliseconds; a service's first request comes later than that, and
    // 300 ms keeps this test off that race on a loaded machine).
    let client = run_client(Command::new(node).args([
        "-e",
        "const https = require('https');\n\
         setTimeout(() => https.get(process.argv[1], { rejectUnauthorized: false }, (r) => {\n\
           r.resume();\n\
           r.on('end', () => process.exit(0));\n\
         }).on('error', (e) => { console.error(e); process.exit(1); }), 300);",
        &server.url("/node"),
    ]));

    let lines = agent.stop();
    let f = assert_tls_finding(&lines, client, "uninstrumented_client", "/node");
    assert_eq!(f["comm"], "node", "{f}");
    assert_eq!(f["exe"], "/usr/bin/node", "{f}");
}

/// Debian 12's Go (golang-go, installed by `cargo xtask setup`), kept beside the Go on PATH so
/// that both the oldest and the newest verified Go are built and probed.
const GO_1_19: &str = "/usr/lib/go-1.19/bin/go";

/// Builds tests/fixtures/go_tls (a net/http HTTPS client and server, standard library only)
/// into `dir` with the `go` on PATH, with these `-ldflags`. Same settings as the unit tests in
/// agent/src/gotls.rs.
#[track_caller]
fn go_build(dir: &Path, name: &str, ldflags: &str) -> PathBuf {
    go_build_with(Path::new("go"), dir, name, ldflags)
}

/// [`go_build`] with this `go` command.
#[track_caller]
fn go_build_with(go: &Path, dir: &Path, name: &str, ldflags: &str) -> PathBuf {
    let exe = dir.join(name);
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/go_tls/main.go");
    let out = Command::new(go)
        .args(["build", "-ldflags", ldflags, "-o"])
        .arg(&exe)
        .arg(source)
        // The build cache outlives the test (net/http from nothing takes a while); no modules,
        // no toolchain downloads, no C compiler.
        .env("GOCACHE", std::env::temp_dir().join("tracegap-go-cache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GO111MODULE", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "")
        .env("CGO_ENABLED", "0")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "the Go tests need {} (Go on PATH, and golang-go installed by `cargo xtask \
                 setup`): {e}",
                go.display()
            )
        });
    assert!(
        out.status.success(),
        "go build failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

fn go_client(exe: &Path, url: &str, traceparent: Option<&str>) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(["client", url]).args(traceparent);
    cmd
}

/// The Go version an executable was built with (`go version EXE`: "EXE: go1.26.8").
#[track_caller]
fn built_with(exe: &Path) -> String {
    let out = Command::new("go")
        .arg("version")
        .arg(exe)
        .output()
        .expect("go version EXE");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("go version {}: {text:?}", exe.display()))
        .to_owned()
}

#[test]
fn tls_go_client_requests_are_judged_stripped_or_not() {
    go_client_requests_are_judged(Path::new("go"));
}

/// The same with Debian 12's Go 1.19 (register ABI, the 1.18/1.19 pclntab format), so that the
/// oldest and the newest Go are both verified.
#[test]
fn tls_go119_client_requests_are_judged_stripped_or_not() {
    let go = Path::new(GO_1_19);
    assert!(
        go.is_file(),
        "{GO_1_19} is missing: `cargo xtask setup` installs golang-go (Go 1.19)"
    );
    go_client_requests_are_judged(go);
}

#[track_caller]
fn go_client_requests_are_judged(go: &Path) {
    let dir = TempDir::new();
    let plain = go_build_with(go, &dir.0, "goplain", "");
    // No symbol table: the agent finds crypto/tls through .gopclntab.
    let stripped = go_build_with(go, &dir.0, "gostripped", "-s -w");
    let version = built_with(&plain);
    eprintln!("Go TLS client built with {version}");
    if go == Path::new(GO_1_19) {
        assert!(version.starts_with("go1.19"), "{version}");
    }
    let server = TlsServer::start();
    let agent = agent();

    // The client waits 300 ms before its request: the agent probes a new executable when it
    // execs, which takes tens of milliseconds (README, TLS, not covered).
    let instrumented = run_client(
        go_client(&plain, &server.url("/go?token=SECRET"), None)
            .env("OTEL_SERVICE_NAME", "go-checkout"),
    );
    let traced = run_client(&mut go_client(
        &stripped,
        &server.url("/go-traced"),
        Some(TRACEPARENT),
    ));
    let bare = run_client(&mut go_client(&stripped, &server.url("/go-bare"), None));

    let stderr = agent.stderr();
    let lines = agent.stop();
    let f = assert_tls_finding(&lines, instrumented, "missing_traceparent", "/go");
    assert_eq!(f["service_name"], "go-checkout", "{f}");
    assert_eq!(f["comm"], "goplain", "{f}");
    // The socket comes from the tls.Conn (net.Conn → *net.TCPConn → netFD → Sysfd).
    assert_eq!(f["peer"], server.peer().as_str(), "{f}");

    assert_eq!(
        kinds_of(&lines, traced),
        Vec::<String>::new(),
        "valid traceparent over Go TLS:\n{}",
        show(&lines)
    );
    let coverage = lines
        .iter()
        .rev()
        .find(|l| l["kind"] == "coverage" && l["pid"] == traced)
        .unwrap_or_else(|| {
            panic!(
                "no coverage line for the traced Go client:\n{}",
                show(&lines)
            )
        });
    assert_eq!(coverage["with_context"], 1, "{coverage}");

    let f = assert_tls_finding(&lines, bare, "uninstrumented_client", "/go-bare");
    assert_eq!(f["peer"], server.peer().as_str(), "{f}");
    assert!(!show(&lines).contains("SECRET"), "{}", show(&lines));
    for exe in [&plain, &stripped] {
        assert!(
            stderr.contains(&format!("Go TLS probes on {}", exe.display())),
            "{stderr}"
        );
    }
}

#[test]
fn tls_off_attaches_no_tls_probes() {
    let dir = TempDir::new();
    let client = go_build(&dir.0, "goclient", "");
    let server = TlsServer::start();
    let agent = Agent::start(&[
        "--tls",
        "off",
        "--otlp-grpc-listen",
        "off",
        "--otlp-http-listen",
        "off",
    ]);
    let go = run_client(&mut go_client(&client, &server.url("/go-off"), None));
    let curl = run_client(&mut curl(&server.url("/curl-off"), &[]));
    let stderr = agent.stderr();
    let lines = agent.stop();
    for pid in [go, curl] {
        assert!(
            lines.iter().all(|l| l["pid"] != pid),
            "pid {pid} was seen with --tls off:\n{}",
            show(&lines)
        );
    }
    assert!(stderr.contains("TLS capture off"), "{stderr}");
    assert!(!stderr.contains("probes on"), "{stderr}");
}

/// HTTP/2 over TLS, Go on both sides (ALPN h2, Go's default): the Go TLS probes see the preface
/// in the plaintext, the kernel follows the connection, and the HEADERS frames are decoded like
/// cleartext h2. The server reads each 9-byte frame header on its own, so it only stays in step
/// if short TLS reads are captured on marked connections.
#[test]
fn tls_go_http2_requests_are_decoded() {
    let dir = TempDir::new();
    let exe = go_build(&dir.0, "goh2", "");
    let server = TlsServer::start_with(|cert, key| {
        let mut cmd = Command::new(&exe);
        cmd.arg("server-h2").arg(cert).arg(key);
        cmd
    });
    let agent = agent();
    // Three requests on one connection: the second and third reuse HPACK's dynamic table.
    let bare = run_client(
        Command::new(&exe)
            .args(["client-h2", "3"])
            .arg(server.url("/h2-bare?token=SECRET")),
    );
    let traced = run_client(
        Command::new(&exe)
            .args(["client-h2", "3"])
            .arg(server.url("/h2-traced"))
            .arg(TRACEPARENT),
    );
    let lines = agent.stop();
    // Every request on the connection.
    let f = assert_tls_findings(&lines, bare, "uninstrumented_client", "/h2-bare", 3);
    assert_eq!(f["protocol"], "h2", "{f}");
    assert_eq!(f["peer"], server.peer().as_str(), "{f}");
    assert_eq!(
        kinds_of(&lines, traced),
        Vec::<String>::new(),
        "{}",
        show(&lines)
    );
    let counters = last_counters(&lines);
    let kernel = &counters["kernel"];
    assert!(
        kernel["h2_connections"].as_u64().unwrap_or(0)
            + kernel["export_probations"].as_u64().unwrap_or(0)
            >= 4,
        "both clients' connections, client side (read whole on probation) and server side: {counters}"
    );
    assert_eq!(
        counters["agent"]["h2_lost_sync"], 0,
        "the server's 9-byte frame-header reads are followed: {counters}"
    );
    assert_eq!(counters["agent"]["h2_undetermined"], 0, "{counters}");
    assert!(!show(&lines).contains("SECRET"), "{}", show(&lines));
}
