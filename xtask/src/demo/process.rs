//! The demo's processes, each stopped by its pid when its guard drops (signal, bounded wait,
//! then SIGKILL), never by name.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Read as _},
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

/// Fails with a clear message if something already listens on 127.0.0.1:`port`.
pub fn ensure_free(port: u16) -> Result<()> {
    TcpListener::bind(("127.0.0.1", port))
        .map(drop)
        .with_context(|| {
            format!(
                "127.0.0.1:{port} is in use: the demo needs it (Jaeger 16686/14317/14318, the \
                 agent's OTLP receivers 4317/4318); stop what listens there"
            )
        })
}

/// A child process stopped by pid: `signal`, then SIGKILL after `grace`.
pub struct Guard {
    child: Option<Child>,
    name: String,
}

impl Guard {
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Self {
            child: Some(child),
            name: name.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn child(&mut self) -> Result<&mut Child> {
        self.child
            .as_mut()
            .with_context(|| format!("{} already stopped", self.name))
    }

    /// Sends `signal`, waits up to `grace` for the exit, then kills. Returns whether it exited
    /// successfully by itself.
    pub fn stop(&mut self, signal: i32, grace: Duration) -> Result<bool> {
        let Some(mut child) = self.child.take() else {
            return Ok(false);
        };
        let pid = i32::try_from(child.id()).context("pid out of range")?;
        // SAFETY: kill(2) on the pid of our own child, not reaped yet (we hold the Child).
        unsafe { libc::kill(pid, signal) };
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.success());
            }
            if started.elapsed() > grace {
                eprintln!(
                    "demo: {} did not stop within {grace:?}: killing it",
                    self.name
                );
                let _killed = child.kill();
                let _reaped = child.wait();
                return Ok(false);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _killed = child.kill();
            let _reaped = child.wait();
        }
    }
}

/// A shop service: started with stdout piped (it prints "listening PORT"), stderr to a log.
pub struct Service {
    guard: Guard,
    pub port: u16,
}

impl Service {
    pub fn start(name: &str, cmd: &mut Command, log: &Path) -> Result<Self> {
        let log_file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut guard = Guard::spawn(
            name,
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log_file),
        )?;
        let stdout = guard.child()?.stdout.take().context("piped stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .with_context(|| format!("reading {name}'s first line"))?;
        let Some(port) = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
        else {
            bail!(
                "{name} printed {line:?}, not \"listening PORT\" (see {})",
                log.display()
            );
        };
        Ok(Self { guard, port })
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// SIGTERM: the service flushes its spans and exits.
    pub fn stop(mut self) -> Result<()> {
        if !self.guard.stop(libc::SIGTERM, Duration::from_secs(10))? {
            eprintln!("demo: {} did not exit cleanly", self.guard.name);
        }
        Ok(())
    }
}

/// Runs the load generator to completion; returns its pid.
pub fn run_loadgen(cmd: &mut Command, log: &Path) -> Result<u32> {
    let log_file = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut guard = Guard::spawn(
        "loadgen",
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file),
    )?;
    let pid = guard.pid();
    let mut summary = String::new();
    guard
        .child()?
        .stdout
        .take()
        .context("piped stdout")?
        .read_to_string(&mut summary)
        .context("reading loadgen's summary")?;
    if !guard.stop(0, Duration::from_secs(30))? {
        bail!("loadgen failed ({}); see {}", summary.trim(), log.display());
    }
    eprintln!("demo: loadgen: {}", summary.trim());
    Ok(pid)
}

/// The agent with `--output json`: its JSON lines are collected; stopped with SIGINT (it
/// prints its final findings, coverage and counters).
pub struct Agent {
    guard: Guard,
    lines: Arc<Mutex<Vec<Value>>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Agent {
    pub fn start(bin: &Path, args: &[&str], log: &Path) -> Result<Self> {
        let mut guard = Guard::spawn(
            "tracegap",
            Command::new(bin)
                .args(args)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )?;
        let child = guard.child()?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let stderr = child.stderr.take().context("piped stderr")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let lines = Arc::clone(&lines);
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        if let Ok(mut l) = lines.lock() {
                            l.push(v);
                        }
                    }
                }
            })
        };
        let attached = Arc::new(AtomicBool::new(false));
        {
            let attached = Arc::clone(&attached);
            let mut log_file = File::options()
                .create(true)
                .append(true)
                .open(log)
                .with_context(|| format!("opening {}", log.display()))?;
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("attached") && line.contains("programs") {
                        attached.store(true, Ordering::SeqCst);
                    }
                    let _logged =
                        std::io::Write::write_all(&mut log_file, (line + "\n").as_bytes());
                }
            });
        }
        let mut agent = Self {
            guard,
            lines,
            reader: Some(reader),
        };
        let started = Instant::now();
        while !attached.load(Ordering::SeqCst) {
            if let Some(status) = agent.guard.child()?.try_wait()? {
                bail!(
                    "the agent exited ({status}) before attaching; see {}",
                    log.display()
                );
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!(
                    "the agent did not attach within 30 s; see {}",
                    log.display()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(agent)
    }

    pub fn stop(mut self) -> Result<Vec<Value>> {
        if !self.guard.stop(libc::SIGINT, Duration::from_secs(15))? {
            bail!("the agent did not exit cleanly on SIGINT");
        }
        if let Some(r) = self.reader.take() {
            let _joined = r.join();
        }
        let lines = self
            .lines
            .lock()
            .map_err(|_| anyhow::anyhow!("agent output lock poisoned"))?
            .clone();
        Ok(lines)
    }
}
