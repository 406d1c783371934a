//! Captured requests at a target rate, counted exactly, for the ring buffer capacity test.
//!
//! The sender makes one `sendto` per request on a loopback TCP connection. The sink moves the
//! bytes to /dev/null with `splice`, which no tracegap program hooks: only the sends are
//! captured, so "sent − captured − dropped" can be checked to zero.

use std::{
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

use crate::os_error;

#[derive(clap::Args)]
pub struct Options {
    /// Requests per second; 0 sends as fast as one thread can.
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// Seconds (fractions allowed).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
}

const REQUEST: &[u8] =
    b"GET /bench/flood HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: tracegap-bench\r\n\r\n";
/// Pacing granularity: the sender catches up to the schedule every tick.
const TICK: Duration = Duration::from_millis(1);

pub fn run(opts: &Options) -> Result<Value> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind sink")?;
    let addr = listener.local_addr()?;
    let sink = thread::spawn(move || sink(&listener));
    let stream = TcpStream::connect(addr).context("connect to sink")?;
    stream.set_nodelay(true)?;
    let fd = stream.as_raw_fd();

    let duration = Duration::from_secs_f64(opts.duration);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut partial = 0u64;
    loop {
        let elapsed = start.elapsed();
        if elapsed >= duration {
            break;
        }
        let due = if opts.rate == 0 {
            sent + 1000
        } else {
            // Requests due by now on the fixed schedule.
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss,
                reason = "positive, far below 2^52"
            )]
            let due = (elapsed.as_secs_f64() * opts.rate as f64) as u64;
            due
        };
        while sent < due {
            // SAFETY: REQUEST is a static byte string; fd is an open connected socket.
            let ret = unsafe {
                libc::sendto(
                    fd,
                    REQUEST.as_ptr().cast(),
                    REQUEST.len(),
                    0,
                    std::ptr::null(),
                    0,
                )
            };
            let Ok(n) = usize::try_from(ret) else {
                return Err(os_error("sendto"));
            };
            sent += 1;
            if n < REQUEST.len() {
                // The rest goes in a later syscall, which starts mid-request and is not a
                // capture; the count above is what the kernel can capture.
                partial += 1;
                send_rest(fd, &REQUEST[n..])?;
            }
        }
        if opts.rate != 0 {
            thread::sleep(TICK);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    // EOF ends the sink.
    drop(stream);
    let spliced = sink
        .join()
        .map_err(|_| anyhow::anyhow!("sink thread panicked"))??;
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let rps = sent as f64 / elapsed;
    Ok(json!({
        "sent": sent,
        "partial_sends": partial,
        "bytes_received": spliced,
        "duration_s": elapsed,
        "rps": rps,
        "pid": std::process::id(),
    }))
}

fn send_rest(fd: i32, mut rest: &[u8]) -> Result<()> {
    while !rest.is_empty() {
        // SAFETY: `rest` is a valid slice; fd is open.
        let ret = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        let n = usize::try_from(ret).map_err(|_| os_error("write"))?;
        rest = &rest[n..];
    }
    Ok(())
}

/// Accepts one connection and splices everything it receives into /dev/null until EOF.
fn sink(listener: &TcpListener) -> Result<u64> {
    let (conn, _) = listener.accept().context("accept")?;
    let devnull = std::fs::File::options()
        .write(true)
        .open("/dev/null")
        .context("open /dev/null")?;
    let mut pipe = [0i32; 2];
    // SAFETY: `pipe` has room for the two fds.
    if unsafe { libc::pipe(pipe.as_mut_ptr()) } != 0 {
        return Err(os_error("pipe"));
    }
    let mut total = 0u64;
    let result = loop {
        // SAFETY: valid fds; null offsets (sockets and pipes have none).
        let n = unsafe {
            libc::splice(
                conn.as_raw_fd(),
                std::ptr::null_mut(),
                pipe[1],
                std::ptr::null_mut(),
                1 << 16,
                libc::SPLICE_F_MOVE,
            )
        };
        if n < 0 {
            break Err(os_error("splice from socket"));
        }
        if n == 0 {
            break Ok(total);
        }
        let mut left = n;
        while left > 0 {
            // SAFETY: as above.
            let m = unsafe {
                libc::splice(
                    pipe[0],
                    std::ptr::null_mut(),
                    devnull.as_raw_fd(),
                    std::ptr::null_mut(),
                    usize::try_from(left).unwrap_or(0),
                    libc::SPLICE_F_MOVE,
                )
            };
            if m <= 0 {
                return Err(os_error("splice to /dev/null"));
            }
            left -= m;
        }
        total += u64::try_from(n).unwrap_or(0);
    };
    // SAFETY: closing the pipe fds we created, once.
    unsafe {
        libc::close(pipe[0]);
        libc::close(pipe[1]);
    }
    result
}
