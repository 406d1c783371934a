//! Churn for the agent's caches: many distinct short-lived connections (each a new peer port,
//! so a new inbound peer at the server), then many short-lived processes (each a new pid).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    thread,
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use crate::os_error;

#[derive(clap::Args)]
pub struct Options {
    /// The HTTP server (nginx) to connect to.
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long, default_value_t = 100_000)]
    connections: u32,
    #[arg(long, default_value_t = 10_000)]
    processes: u32,
}

const THREADS: u32 = 2;
/// Child processes alive at once.
const IN_FLIGHT: usize = 4;

pub fn run(opts: &Options) -> Result<Value> {
    let started = Instant::now();
    let per_thread = opts.connections.div_ceil(THREADS);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let addr = opts.addr;
            let first = t * per_thread;
            let last = (first + per_thread).min(opts.connections);
            thread::spawn(move || -> Result<u32> {
                let mut errors = 0;
                for i in first..last {
                    if one_request(addr, &format!("/churn/conn/{i}")).is_err() {
                        errors += 1;
                    }
                }
                Ok(errors)
            })
        })
        .collect();
    let mut conn_errors = 0;
    for h in handles {
        conn_errors += h
            .join()
            .map_err(|_| anyhow::anyhow!("churn thread panicked"))??;
    }
    let connections_s = started.elapsed().as_secs_f64();

    // Processes after the threads are gone: fork() copies only the calling thread.
    let started = Instant::now();
    let mut children: Vec<libc::pid_t> = Vec::with_capacity(IN_FLIGHT);
    let mut proc_failures = 0u32;
    for i in 0..opts.processes {
        if children.len() == IN_FLIGHT {
            proc_failures += wait_child(children.remove(0))?;
        }
        let path = format!("/churn/proc/{i}");
        // SAFETY: single-threaded here; the child only makes syscalls and `_exit`s.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(os_error("fork"));
        }
        if pid == 0 {
            let code = i32::from(one_request(opts.addr, &path).is_err());
            // SAFETY: leaves the child without running the parent's destructors or atexit.
            unsafe { libc::_exit(code) };
        }
        children.push(pid);
    }
    for pid in children {
        proc_failures += wait_child(pid)?;
    }
    Ok(json!({
        "connections": opts.connections,
        "connection_errors": conn_errors,
        "connections_s": connections_s,
        "processes": opts.processes,
        "process_failures": proc_failures,
        "processes_s": started.elapsed().as_secs_f64(),
    }))
}

/// Waits for one child by pid; 1 if it failed.
fn wait_child(pid: libc::pid_t) -> Result<u32> {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    if unsafe { libc::waitpid(pid, &raw mut status, 0) } != pid {
        return Err(os_error("waitpid"));
    }
    Ok(u32::from(
        !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0),
    ))
}

/// One request on a new connection, closed with a reset (SO_LINGER 0): 100k closes by the
/// client would otherwise leave 100k TIME_WAIT sockets and exhaust the ephemeral ports.
fn one_request(addr: SocketAddr, path: &str) -> Result<()> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            u32::try_from(size_of::<libc::linger>()).unwrap_or(8),
        )
    };
    if rc != 0 {
        return Err(os_error("setsockopt SO_LINGER"));
    }
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: tracegap-bench\r\n\r\n"
    )?;
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf)?;
    if !buf[..n].starts_with(b"HTTP/1.1 200") {
        bail!("unexpected response");
    }
    Ok(())
}
