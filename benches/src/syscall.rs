//! Tight syscall loops: the per-call cost with and without the agent's programs attached.
//!
//! Each kind exercises one path of the eBPF programs: `write8` exits at the length check,
//! `write64`/`sendto-other` read 8 bytes and fail the method check, `read64` pays the
//! enter→exit stash of the receive side, `sendto-http` is captured into the ring buffer, and
//! `sendto-post` too, after the kernel found its first 8 bytes are not an OTLP export's.

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::net::UnixDatagram},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

use crate::os_error;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// `write` of 8 bytes to /dev/null (shorter than any request: the length check exits).
    Write8,
    /// `write` of 64 non-HTTP bytes to /dev/null (the 8-byte prefix is read and rejected).
    Write64,
    /// `read` of 64 bytes from /dev/zero (receive side: stashed at enter, checked at exit).
    Read64,
    /// `sendto` of 64 non-HTTP bytes on a full Unix datagram socket.
    SendtoOther,
    /// `sendto` of an HTTP request on a full Unix datagram socket (captured).
    SendtoHttp,
    /// `sendto` of an HTTP POST that is not an OTLP export (captured; the kernel compares its
    /// first 8 bytes with those of `POST /v1/traces `).
    SendtoPost,
    /// fork + exec of `/bin/true` and its exit, waited for: the process records' cost
    /// (exec, fork, exit) per process started.
    Spawn,
}

#[derive(clap::Args)]
pub struct Options {
    #[arg(long, value_enum)]
    kind: Kind,
    /// Number of syscalls.
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// Syscalls per timed burst; between bursts the loop pauses (untimed) so that the agent
    /// can drain the ring buffer and captured requests are not measured on the drop path.
    #[arg(long, default_value_t = 1_000_000)]
    burst: u64,
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
}

const HTTP_REQUEST: &[u8] =
    b"GET /bench/syscall HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: tracegap-bench\r\n\r\n";
const HTTP_POST: &[u8] =
    b"POST /api/orders/checkout HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}";
const OTHER: [u8; 64] = [0x5a; 64];

pub fn run(opts: &Options) -> Result<Value> {
    if opts.kind == Kind::Spawn {
        return spawn(opts);
    }
    let devnull = File::options()
        .write(true)
        .open("/dev/null")
        .context("open /dev/null")?;
    let zero = File::open("/dev/zero").context("open /dev/zero")?;
    // A non-blocking Unix datagram pair whose receiving end is never read: once its queue is
    // full every `sendto` fails at once with EAGAIN. The programs run at sys_enter, before the
    // syscall does anything, so they capture all the same, and the baseline is a few hundred
    // ns instead of the ~3 µs (and its noise) of a loopback UDP or TCP send.
    let (sender, _sink) = UnixDatagram::pair().context("socketpair")?;
    sender.set_nonblocking(true)?;

    let mut buf = [0u8; 64];
    let (fd, ptr, len): (i32, *const u8, usize) = match opts.kind {
        Kind::Write8 => (devnull.as_raw_fd(), OTHER.as_ptr(), 8),
        Kind::Write64 => (devnull.as_raw_fd(), OTHER.as_ptr(), 64),
        Kind::Read64 => (zero.as_raw_fd(), buf.as_mut_ptr(), 64),
        Kind::SendtoOther => (sender.as_raw_fd(), OTHER.as_ptr(), 64),
        Kind::SendtoHttp => (
            sender.as_raw_fd(),
            HTTP_REQUEST.as_ptr(),
            HTTP_REQUEST.len(),
        ),
        Kind::SendtoPost => (sender.as_raw_fd(), HTTP_POST.as_ptr(), HTTP_POST.len()),
        Kind::Spawn => (-1, OTHER.as_ptr(), 0),
    };
    let burst = opts.burst.max(1);
    let mut done = 0u64;
    let mut timed = Duration::ZERO;
    while done < opts.count {
        let n = burst.min(opts.count - done);
        let started = Instant::now();
        for _ in 0..n {
            // SAFETY: `ptr` points at `len` valid bytes (a static, or `buf` for the read) that
            // outlive the call; the fds are open.
            let ret = unsafe {
                match opts.kind {
                    Kind::Write8 | Kind::Write64 => libc::write(fd, ptr.cast(), len),
                    Kind::Read64 => libc::read(fd, ptr.cast_mut().cast(), len),
                    Kind::SendtoOther | Kind::SendtoHttp | Kind::SendtoPost => {
                        libc::sendto(fd, ptr.cast(), len, 0, std::ptr::null(), 0)
                    }
                    Kind::Spawn => 0,
                }
            };
            if ret < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock {
                return Err(os_error("syscall in loop"));
            }
        }
        timed += started.elapsed();
        done += n;
        if done < opts.count && opts.pause_ms > 0 {
            thread::sleep(Duration::from_millis(opts.pause_ms));
        }
    }
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let ns_per_call = timed.as_nanos() as f64 / opts.count.max(1) as f64;
    Ok(json!({
        "kind": format!("{:?}", opts.kind),
        "count": opts.count,
        "ns_per_call": ns_per_call,
        "pid": std::process::id(),
    }))
}

/// `count` processes, one after another: fork, exec `/bin/true`, exit, reaped.
fn spawn(opts: &Options) -> Result<Value> {
    let started = Instant::now();
    for _ in 0..opts.count {
        let status = std::process::Command::new("/bin/true")
            .status()
            .context("spawn /bin/true")?;
        anyhow::ensure!(status.success(), "/bin/true failed: {status}");
    }
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let ns_per_call = started.elapsed().as_nanos() as f64 / opts.count.max(1) as f64;
    Ok(json!({
        "kind": "Spawn",
        "count": opts.count,
        "ns_per_call": ns_per_call,
        "pid": std::process::id(),
    }))
}
