//! Guards and helpers for the end-to-end tests: the real agent, real client processes, a local
//! HTTP server. Everything started here stops when its guard drops.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod bpf;
pub mod otlp_sink;

/// A valid W3C traceparent (the spec's example).
pub const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Agent arguments that turn both OTLP receivers off (tests that run several agents, or that
/// need no spans).
pub const RECEIVERS_OFF: [&str; 4] = ["--otlp-grpc-listen", "off", "--otlp-http-listen", "off"];

/// Fails with a clear reason unless the tests can load eBPF programs here.
#[track_caller]
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the end-to-end tests load eBPF programs and need root: run `cargo xtask test` as root"
    );
}

/// The agent binary built by `cargo xtask test`.
#[track_caller]
pub fn agent_bin() -> PathBuf {
    let path = std::env::var_os("TRACEGAP_AGENT_BIN")
        .map(PathBuf::from)
        .expect(
            "TRACEGAP_AGENT_BIN is not set: run the end-to-end tests through `cargo xtask test`",
        );
    assert!(
        path.is_file(),
        "agent binary {} does not exist",
        path.display()
    );
    path
}

/// The agent's command line with `--output json`, optionally behind a wrapper.
pub fn agent_command(wrapper: &[&str], extra_args: &[&str]) -> Command {
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(agent_bin());
            c
        }
        None => Command::new(agent_bin()),
    };
    cmd.args(["--output", "json"])
        .args(extra_args)
        .env("RUST_LOG", "info");
    cmd
}

/// A running agent with `--output json`; stopped with SIGINT on drop (SIGKILL if it hangs).
pub struct Agent {
    child: Option<Child>,
    /// Signals go to the child's process group (it leads one).
    signal_group: bool,
    lines: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Agent {
    /// Starts the agent and waits until its programs are attached.
    #[track_caller]
    pub fn start(extra_args: &[&str]) -> Self {
        Self::start_with_env(extra_args, &[])
    }

    /// [`Agent::start`] with extra environment variables (e.g. `OTEL_EXPORTER_OTLP_*`).
    #[track_caller]
    pub fn start_with_env(extra_args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = agent_command(&[], extra_args);
        cmd.envs(env.iter().copied());
        Self::start_command(cmd)
    }

    /// [`Agent::start`] under a wrapper that execs the agent (e.g. `setpriv` with fewer
    /// capabilities).
    #[track_caller]
    pub fn start_wrapped(wrapper: &[&str], extra_args: &[&str]) -> Self {
        Self::start_command(agent_command(wrapper, extra_args))
    }

    #[track_caller]
    fn start_command(cmd: Command) -> Self {
        Self::start_command_within(cmd, Duration::from_secs(30), false)
    }

    /// Starts `cmd` (which runs the agent with `--output json`, directly or through other
    /// programs such as `cargo xtask run`) and waits up to `attach_within` for the agent to
    /// attach its programs. With `own_group`, `cmd` leads a process group of its own and stop
    /// signals go to the whole group, as a terminal's Ctrl-C does; else to `cmd`'s process.
    #[track_caller]
    pub fn start_command_within(
        mut cmd: Command,
        attach_within: Duration,
        own_group: bool,
    ) -> Self {
        require_root();
        if own_group {
            use std::os::unix::process::CommandExt as _;
            cmd.process_group(0);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the agent");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let lines = Arc::clone(&lines);
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let value: Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("agent printed a non-JSON line ({e}): {line}"));
                    lines.lock().expect("lock").push(value);
                }
            })
        };
        let stderr_text = Arc::new(Mutex::new(String::new()));
        let attached = Arc::new(AtomicBool::new(false));
        {
            let stderr_text = Arc::clone(&stderr_text);
            let attached = Arc::clone(&attached);
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("attached") && line.contains("programs") {
                        attached.store(true, Ordering::SeqCst);
                    }
                    let mut s = stderr_text.lock().expect("lock");
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
        let mut agent = Self {
            child: Some(child),
            signal_group: own_group,
            lines,
            stderr: stderr_text,
            reader: Some(reader),
        };
        let started = Instant::now();
        while !attached.load(Ordering::SeqCst) {
            if let Some(status) = agent
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "the agent exited ({status}) before attaching its programs:\n{}",
                    agent.stderr()
                );
            }
            assert!(
                started.elapsed() < attach_within,
                "the agent did not attach its programs within {attach_within:?}:\n{}",
                agent.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    /// JSON lines printed so far.
    pub fn lines(&self) -> Vec<Value> {
        self.lines.lock().expect("lock").clone()
    }

    /// Waits (bounded) until `pred` holds over the lines printed so far.
    #[track_caller]
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&[Value]) -> bool) {
        let started = Instant::now();
        loop {
            if pred(&self.lines()) {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}; agent printed:\n{}\nstderr:\n{}",
                self.lines()
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
                self.stderr()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the agent with `signal` and returns every line it printed, plus how long it took.
    #[track_caller]
    pub fn stop_with(mut self, signal: i32) -> (Vec<Value>, Duration) {
        let mut child = self.child.take().expect("running agent");
        let started = Instant::now();
        signal_child(&child, self.signal_group, signal);
        let status = wait_timeout(&mut child, Duration::from_secs(10));
        let took = started.elapsed();
        if let Some(reader) = self.reader.take() {
            reader.join().expect("stdout reader");
        }
        let status = status
            .unwrap_or_else(|| panic!("the agent did not exit within 10 s of signal {signal}"));
        if signal != libc::SIGKILL {
            assert!(
                status.success(),
                "the agent exited with {status}:\n{}",
                self.stderr()
            );
        }
        (self.lines(), took)
    }

    /// Stops the agent with SIGINT; every finding is flushed before it exits.
    #[track_caller]
    pub fn stop(self) -> Vec<Value> {
        self.stop_with(libc::SIGINT).0
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_child(&child, self.signal_group, libc::SIGINT);
            if wait_timeout(&mut child, Duration::from_secs(5)).is_none() {
                let _killed = child.kill();
                let _reaped = child.wait();
            }
        }
    }
}

/// Sends `signal` to our child `child`, or to the process group it leads.
fn signal_child(child: &Child, group: bool, signal: i32) {
    let pid = child.id() as i32;
    // SAFETY: kill(2) on our own child, which has not been reaped yet (or on the group it
    // leads, which exists as long as the leader is unreaped).
    unsafe { libc::kill(if group { -pid } else { pid }, signal) };
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if started.elapsed() > timeout {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A child process killed and reaped on drop.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    #[track_caller]
    pub fn spawn(cmd: &mut Command) -> Self {
        Self(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("failed to start {cmd:?}: {e}")),
        )
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Waits (bounded) for the process to exit successfully.
    #[track_caller]
    pub fn wait_success(&mut self, timeout: Duration) {
        let status = wait_timeout(&mut self.0, timeout)
            .unwrap_or_else(|| panic!("process {} did not finish within {timeout:?}", self.0.id()));
        assert!(status.success(), "process {} failed: {status}", self.0.id());
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _killed = self.0.kill();
        }
        let _reaped = self.0.wait();
    }
}

/// Runs a client to completion and returns its pid.
#[track_caller]
pub fn run_client(cmd: &mut Command) -> u32 {
    let mut child = ChildGuard::spawn(cmd.stdout(Stdio::null()).stderr(Stdio::piped()));
    child.wait_success(Duration::from_secs(20));
    child.pid()
}

/// A minimal HTTP/1.1 server on 127.0.0.1 (port chosen by the kernel) in a thread of the test
/// process. It answers every request after `delay`, so short-lived clients are still alive when
/// the agent looks them up in /proc, as long-running services would be.
pub struct HttpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    thread: Option<thread::JoinHandle<()>>,
}

impl HttpServer {
    #[track_caller]
    pub fn start(delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let thread = {
            let stop = Arc::clone(&stop);
            let served = Arc::clone(&served);
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let served = Arc::clone(&served);
                            thread::spawn(move || serve(stream, delay, &served));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Self {
            addr,
            stop,
            served,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

fn serve(mut stream: TcpStream, delay: Duration, served: &AtomicUsize) {
    let _timeout = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // One request per connection is all the tests need; read until the header block ends.
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    thread::sleep(delay);
    let _written = stream.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nok",
    );
    served.fetch_add(1, Ordering::SeqCst);
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _joined = t.join();
        }
    }
}

/// Finding lines (not coverage or counters).
/// Every line the agent printed, for assertion messages.
pub fn show(lines: &[Value]) -> String {
    lines
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn findings(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|l| !matches!(l["kind"].as_str(), Some("coverage" | "counters")))
        .collect()
}

/// The latest finding lines of `pid` (a finding is re-printed when its count changes).
pub fn findings_of(lines: &[Value], pid: u32) -> Vec<&Value> {
    let mut latest: Vec<&Value> = Vec::new();
    for f in findings(lines).into_iter().filter(|f| f["pid"] == pid) {
        latest.retain(|l| {
            !(l["kind"] == f["kind"] && l["path"] == f["path"] && l["peer"] == f["peer"])
        });
        latest.push(f);
    }
    latest
}

/// The finding kinds reported for `pid`, sorted.
pub fn kinds_of(lines: &[Value], pid: u32) -> Vec<String> {
    let mut kinds: Vec<String> = findings_of(lines, pid)
        .iter()
        .filter_map(|f| f["kind"].as_str().map(str::to_owned))
        .collect();
    kinds.sort();
    kinds.dedup();
    kinds
}

/// Whether `pid` has a finding of `kind`.
pub fn has_finding(lines: &[Value], pid: u32, kind: &str) -> bool {
    kinds_of(lines, pid).iter().any(|k| k == kind)
}

/// The last `counters` line.
#[track_caller]
pub fn last_counters(lines: &[Value]) -> &Value {
    lines
        .iter()
        .rev()
        .find(|l| l["kind"] == "counters")
        .expect("the agent printed a counters line")
}

impl Agent {
    /// The address the agent's OTLP/HTTP receiver bound (from its log line).
    #[track_caller]
    pub fn otlp_http_addr(&self) -> SocketAddr {
        self.receiver_addr("http=")
    }

    #[track_caller]
    pub fn otlp_grpc_addr(&self) -> SocketAddr {
        self.receiver_addr("grpc=")
    }

    #[track_caller]
    fn receiver_addr(&self, key: &str) -> SocketAddr {
        let started = Instant::now();
        loop {
            let stderr = self.stderr();
            let found = stderr
                .lines()
                .filter(|l| l.contains("OTLP receiver:"))
                .flat_map(str::split_whitespace)
                .find_map(|w| w.strip_prefix(key)?.parse().ok());
            if let Some(addr) = found {
                return addr;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the agent did not log its OTLP receiver address ({key}):\n{stderr}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The Python application instrumented with the OpenTelemetry SDK (tests/fixtures/otel_app.py),
/// exporting to `otlp_http` as `service`.
pub fn python_app(otlp_http: SocketAddr, service: &str, args: &[&str]) -> Command {
    fixture_app("otel_app.py", otlp_http, service, args)
}

/// The gRPC application (tests/fixtures/grpc_app.py: grpcio, optionally with the OpenTelemetry
/// interceptors), exporting spans to `otlp_http` as `service`.
pub fn grpc_app(otlp_http: SocketAddr, service: &str, args: &[&str]) -> Command {
    fixture_app("grpc_app.py", otlp_http, service, args)
}

/// A Python fixture of tests/fixtures; the settings are deliberately not OTEL_* variables.
fn fixture_app(script: &str, otlp_http: SocketAddr, service: &str, args: &[&str]) -> Command {
    let script = format!("{}/fixtures/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .args(args)
        .env("FIXTURE_OTLP_ENDPOINT", format!("http://{otlp_http}"))
        .env("FIXTURE_SERVICE", service)
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    cmd
}

/// Starts a fixture server and returns it with the port it printed ("listening PORT").
#[track_caller]
pub fn start_server(cmd: &mut Command) -> (ChildGuard, u16) {
    let mut child = ChildGuard::spawn(cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()));
    let stdout = child.0.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the fixture's first line");
    let port = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("fixture server printed {line:?}, not \"listening PORT\""));
    (child, port)
}

/// A Go program built by `cargo xtask test` into target/go/ (tests/go: the shop's services,
/// `loadgen`, `tlsoffsets`, `jaeger`).
#[track_caller]
pub fn go_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("TRACEGAP_GO_BIN_DIR")
        .map(PathBuf::from)
        .expect(
            "TRACEGAP_GO_BIN_DIR is not set: run the end-to-end tests through `cargo xtask test` \
             (it builds tests/go into target/go/)",
        );
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "Go program {} does not exist (did `cargo xtask go-build` fail?)",
        path.display()
    );
    path
}

/// A loopback port that was free a moment ago (for programs that cannot bind port 0 and say
/// which port they got).
#[track_caller]
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// `GET path` over HTTP/1.0 to a loopback address; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {head:?}")))?;
    Ok((status, body.to_owned()))
}

/// Waits (bounded) until a TCP connection to `addr` succeeds.
#[track_caller]
pub fn wait_listening(addr: SocketAddr, timeout: Duration) {
    let started = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            started.elapsed() < timeout,
            "nothing listens on {addr} after {timeout:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}
