//! Open-loop HTTP/1.1 load at a fixed rate (what wrk2 does; Debian has only wrk, which cannot
//! hold a rate). Each connection thread sends on a fixed schedule and measures latency from
//! the *scheduled* send time, so a slow response delays the clock rather than hiding in it
//! (coordinated omission).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct Options {
    #[arg(long)]
    addr: SocketAddr,
    /// Requests per second, over all connections.
    #[arg(long, default_value_t = 10_000)]
    rate: u32,
    #[arg(long, default_value_t = 8)]
    connections: u32,
    /// Seconds of load (fractions allowed).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
}

struct ConnResult {
    latencies_ns: Vec<u64>,
    errors: u64,
}

pub fn run(opts: &Options) -> Result<Value> {
    let duration = Duration::from_secs_f64(opts.duration);
    let connections = opts.connections.max(1);
    let interval = Duration::from_secs_f64(f64::from(connections) / f64::from(opts.rate.max(1)));
    let start = Instant::now() + Duration::from_millis(50);
    let handles: Vec<_> = (0..connections)
        .map(|i| {
            let addr = opts.addr;
            // Stagger the connections over one interval so the sends do not come in bursts.
            let offset = interval.mul_f64(f64::from(i) / f64::from(connections));
            thread::spawn(move || connection(addr, start + offset, interval, duration))
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for handle in handles {
        let r = handle
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
        latencies.extend(r.latencies_ns);
        errors += r.errors;
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "index into a non-empty vector"
        )]
        let i = ((latencies.len() - 1) as f64 * p).round() as usize;
        #[expect(clippy::cast_precision_loss, reason = "nanoseconds below 2^52")]
        let us = latencies[i] as f64 / 1000.0;
        us
    };
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let completed = latencies.len() as f64;
    Ok(json!({
        "completed": latencies.len(),
        "errors": errors,
        "duration_s": elapsed,
        "rps": completed / elapsed,
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
        "max_us": pct(1.0),
    }))
}

fn connection(
    addr: SocketAddr,
    start: Instant,
    interval: Duration,
    duration: Duration,
) -> Result<ConnResult> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let request =
        format!("GET /bench HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: tracegap-bench\r\n\r\n");
    let end = start + duration;
    let mut result = ConnResult {
        latencies_ns: Vec::new(),
        errors: 0,
    };
    let mut buf = vec![0u8; 4096];
    let mut scheduled = start;
    while scheduled < end {
        let now = Instant::now();
        if scheduled > now {
            thread::sleep(scheduled - now);
        }
        if stream.write_all(request.as_bytes()).is_err()
            || read_response(&mut stream, &mut buf).is_err()
        {
            result.errors += 1;
            stream = TcpStream::connect(addr).with_context(|| format!("reconnect {addr}"))?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        } else {
            let latency = scheduled.elapsed();
            result
                .latencies_ns
                .push(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
        }
        scheduled += interval;
    }
    Ok(result)
}

/// Reads one response with a `Content-Length` body (what nginx's `return 200 "…"` sends).
fn read_response(stream: &mut TcpStream, buf: &mut [u8]) -> Result<()> {
    let mut have = 0;
    loop {
        let n = stream.read(&mut buf[have..])?;
        if n == 0 {
            bail!("connection closed");
        }
        have += n;
        let Some(head_end) = find(&buf[..have], b"\r\n\r\n") else {
            if have == buf.len() {
                bail!("response head larger than {} bytes", buf.len());
            }
            continue;
        };
        let body_len = content_length(&buf[..head_end]).context("no Content-Length")?;
        let total = head_end + 4 + body_len;
        if total > buf.len() {
            bail!("response larger than {} bytes", buf.len());
        }
        while have < total {
            let n = stream.read(&mut buf[have..total])?;
            if n == 0 {
                bail!("connection closed in body");
            }
            have += n;
        }
        return Ok(());
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn content_length(head: &[u8]) -> Option<usize> {
    let head = std::str::from_utf8(head).ok()?;
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}
