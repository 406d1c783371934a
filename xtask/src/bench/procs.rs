//! The processes a benchmark drives: the agent, nginx, wrk and the workload generators. Every
//! child is stopped by its own pid when its guard drops.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

/// Sends `signal` to our own child and waits (bounded) for it; SIGKILL if it hangs.
fn stop_child(
    child: &mut Child,
    signal: i32,
    timeout: Duration,
) -> Result<std::process::ExitStatus> {
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
    unsafe { libc::kill(pid, signal) };
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if started.elapsed() > timeout {
            let _killed: std::io::Result<()> = child.kill();
            return Ok(child.wait()?);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// CPU time (user + system) of a process, in seconds, from /proc/<pid>/stat.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the `(comm)`, which may contain spaces: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11).context("no utime")?.parse()?;
    let stime: f64 = fields.get(12).context("no stime")?.parse()?;
    // SAFETY: sysconf has no preconditions.
    #[expect(clippy::cast_precision_loss, reason = "clock ticks per second, ~100")]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((utime + stime) / hz)
}

/// A `Vm*` line of /proc/<pid>/status, in MiB.
pub fn vm_mib(pid: u32, field: &str) -> Result<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib / 1024.0)
}

/// A free loopback port (bound then released: nothing else on this machine is expected to
/// grab it in the next milliseconds).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Runs a workload generator to completion and parses the JSON line it prints.
pub fn run_json(cmd: &mut Command) -> Result<Value> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().context("no output")?;
    serde_json::from_str(line).with_context(|| format!("{cmd:?} printed {line}"))
}

/// The agent, running with JSON output to a file.
pub struct Agent {
    child: Option<Child>,
    out: PathBuf,
}

/// What the agent printed when it stopped.
pub struct AgentReport {
    pub counters: Value,
    /// Last `coverage` line of each pid.
    pub coverage: Vec<Value>,
    pub lines: usize,
}

impl AgentReport {
    pub fn kernel(&self, name: &str) -> u64 {
        self.counters["kernel"][name].as_u64().unwrap_or(0)
    }
    pub fn agent(&self, name: &str) -> u64 {
        self.counters["agent"][name].as_u64().unwrap_or(0)
    }
    /// Outbound requests the agent attributed to `pid`.
    pub fn requests_of(&self, pid: u64) -> u64 {
        self.coverage_field(pid, "requests")
    }
    /// Spans of `pid`'s exports that reached the span rules.
    pub fn spans_exported_of(&self, pid: u64) -> u64 {
        self.coverage_field(pid, "spans_exported")
    }
    fn coverage_field(&self, pid: u64, field: &str) -> u64 {
        self.coverage
            .iter()
            .filter(|c| c["pid"].as_u64() == Some(pid))
            .filter_map(|c| c[field].as_u64())
            .max()
            .unwrap_or(0)
    }
}

impl Agent {
    /// Starts the agent and waits until its programs are attached.
    pub fn start(bin: &Path, out: &Path) -> Result<Self> {
        Self::start_with(bin, out, &[])
    }

    /// [`Agent::start`] with more options.
    pub fn start_with(bin: &Path, out: &Path, extra: &[&str]) -> Result<Self> {
        let file = fs::File::create(out).with_context(|| format!("create {}", out.display()))?;
        let mut child = Command::new(bin)
            .args([
                "--output",
                "json",
                "--otlp-grpc-listen",
                "off",
                "--otlp-http-listen",
                "off",
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let stderr = child.stderr.take().context("piped stderr")?;
        let attached = Arc::new(AtomicBool::new(false));
        {
            let attached = Arc::clone(&attached);
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("attached") && line.contains("programs") {
                        attached.store(true, Ordering::SeqCst);
                    } else if line.contains("ERROR") || line.contains("WARN") {
                        eprintln!("bench: agent: {line}");
                    }
                }
            });
        }
        let mut agent = Self {
            child: Some(child),
            out: out.to_path_buf(),
        };
        let started = Instant::now();
        while !attached.load(Ordering::SeqCst) {
            if let Some(status) = agent
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("the agent exited ({status}) before attaching its programs");
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("the agent did not attach its programs within 30 s");
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(agent)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn cpu_seconds(&self) -> Result<f64> {
        cpu_seconds(self.pid())
    }

    /// Stops the agent with SIGINT (it drains the ring buffer and prints its final counters).
    pub fn stop(mut self) -> Result<AgentReport> {
        let mut child = self.child.take().context("agent already stopped")?;
        let status = stop_child(&mut child, libc::SIGINT, Duration::from_secs(20))?;
        if !status.success() {
            bail!("the agent exited with {status}");
        }
        let text = fs::read_to_string(&self.out)?;
        let mut counters = None;
        let mut coverage: std::collections::HashMap<u64, Value> = std::collections::HashMap::new();
        let mut lines = 0;
        for line in text.lines() {
            lines += 1;
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            match v["kind"].as_str() {
                Some("counters") => counters = Some(v),
                Some("coverage") => {
                    if let Some(pid) = v["pid"].as_u64() {
                        coverage.insert(pid, v);
                    }
                }
                _ => {}
            }
        }
        Ok(AgentReport {
            counters: counters.context("the agent printed no counters line")?,
            coverage: coverage.into_values().collect(),
            lines,
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(e) = stop_child(&mut child, libc::SIGINT, Duration::from_secs(10)) {
                eprintln!("bench: stopping the agent: {e:#}");
            }
        }
    }
}

/// The floor programs attached by `tracegap-bench floor` (benches/src/floor.rs); detached
/// when the guard drops (stdin closed, then the process waited for).
pub struct Floor {
    child: Option<Child>,
}

impl Floor {
    pub fn attach(bench_bin: &Path) -> Result<Self> {
        let object = crate::exec::workspace_root().join("agent-ebpf/prebuilt/tracegap.bpf.o");
        let mut child = Command::new(bench_bin)
            .arg("floor")
            .arg("--object")
            .arg(&object)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} floor", bench_bin.display()))?;
        let mut guard = Self { child: None };
        let stdout = child.stdout.take().context("floor stdout")?;
        guard.child = Some(child);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let attached: Value = serde_json::from_str(&line)
            .with_context(|| format!("tracegap-bench floor did not attach: {line:?}"))?;
        if attached["attached"].as_u64() != Some(2) {
            bail!("tracegap-bench floor: {line}");
        }
        Ok(guard)
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            if let Err(e) = stop_child(&mut child, libc::SIGTERM, Duration::from_secs(10)) {
                eprintln!("bench: stopping the floor: {e:#}");
            }
        }
    }
}

/// nginx serving a small response on a loopback port, from a config in the bench directory.
pub struct Nginx {
    child: Option<Child>,
    pub addr: SocketAddr,
}

impl Nginx {
    pub fn start(dir: &Path) -> Result<Self> {
        let port = free_port()?;
        let prefix = dir.join("nginx");
        fs::create_dir_all(prefix.join("logs"))?;
        // One worker: on a 2-core machine nginx, the load generator and the agent share the
        // cores, and the same layout with and without the agent is what the ratio needs.
        let conf = format!(
            "worker_processes 1;\n\
             pid {prefix}/nginx.pid;\n\
             error_log {prefix}/logs/error.log crit;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n\
               access_log off;\n\
               keepalive_requests 10000000;\n\
               client_body_temp_path {prefix}/tmp;\n\
               server {{\n\
                 listen 127.0.0.1:{port} reuseport;\n\
                 location / {{ return 200 \"ok\\n\"; }}\n\
               }}\n\
             }}\n",
            prefix = prefix.display()
        );
        let conf_path = prefix.join("nginx.conf");
        fs::write(&conf_path, conf)?;
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .spawn()
            .context("start nginx")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut nginx = Self {
            child: Some(child),
            addr,
        };
        let started = Instant::now();
        while TcpStream::connect(addr).is_err() {
            if let Some(status) = nginx
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "nginx exited ({status}); see {}",
                    prefix.join("logs/error.log").display()
                );
            }
            if started.elapsed() > Duration::from_secs(10) {
                bail!("nginx did not listen on {addr} within 10 s");
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(nginx)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGQUIT: graceful shutdown; the master stops its workers before it exits.
            if let Err(e) = stop_child(&mut child, libc::SIGQUIT, Duration::from_secs(10)) {
                eprintln!("bench: stopping nginx: {e:#}");
            }
        }
    }
}

/// One wrk run at saturation: requests/s and latency percentiles in µs.
pub struct WrkResult {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

pub fn wrk(addr: SocketAddr, connections: u32, seconds: f64) -> Result<WrkResult> {
    // wrk takes whole seconds.
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a few seconds"
    )]
    let secs = seconds.round().max(1.0) as u64;
    let out = Command::new("wrk")
        .args(["-t1", "--latency"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{secs}s"))
        .arg(format!("http://{addr}/bench"))
        .stderr(Stdio::inherit())
        .output()
        .context("start wrk")?;
    if !out.status.success() {
        bail!("wrk failed: {}", out.status);
    }
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

fn parse_wrk(text: &str) -> Result<WrkResult> {
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .context("no Requests/sec in wrk output")?
        .trim()
        .parse()?;
    let pct = |p: &str| -> Result<f64> {
        let value = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(p))
            .with_context(|| format!("no {p} line in wrk output"))?
            .trim();
        duration_us(value)
    };
    Ok(WrkResult {
        rps,
        p50_us: pct("50%")?,
        p99_us: pct("99%")?,
    })
}

/// wrk prints durations as `312.00us`, `1.20ms`, `2.00s`.
fn duration_us(s: &str) -> Result<f64> {
    let (number, factor) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60e6)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else {
        bail!("unknown wrk duration {s}")
    };
    Ok(number.parse::<f64>()? * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let text = "Running 1s test @ http://127.0.0.1:1/bench\n  1 threads and 32 connections\n\
            \x20 Latency Distribution\n     50%  312.00us\n     75%  400.00us\n     90%    1.20ms\n     99%    2.50ms\n\
            \x20 1000 requests in 1.00s, 100.00KB read\nRequests/sec:  31234.56\nTransfer/sec:  1.00MB\n";
        let r = parse_wrk(text).expect("parses");
        assert!((r.rps - 31234.56).abs() < 1e-6);
        assert!((r.p50_us - 312.0).abs() < 1e-6);
        assert!((r.p99_us - 2500.0).abs() < 1e-6);
    }
}
