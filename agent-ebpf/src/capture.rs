//! The capture path shared by every send and receive hook: cheap HTTP check, copy, ring buffer.

use agent_common::{
    direction, flags, Counter, EventBuf, H2Conn, CAPTURE_BUDGET_WINDOW_NS, CAPTURE_CAP_MAX,
    EVENT_HEADER_LEN, MAX_IOVECS, MIN_REQUEST_LEN, SAMPLE_ONE_IN,
};
use aya_ebpf::{
    cty::c_void,
    helpers::generated::{bpf_ktime_get_ns, bpf_loop, bpf_probe_read_user},
};

use crate::{
    export, h2,
    io::{clamp_to_cap, read_user, tls_flag, Source, Syscall},
    maps::{count, BUDGET, CAPTURE_BUDGET, CAPTURE_CAP, EVENTS, SCRATCH},
    origin::set_origin,
};

/// `value` as bytes in memory order, with a mask over its first `N` bytes.
const fn prefix<const N: usize>(method: &[u8; N]) -> (u64, u64) {
    let mut value = 0u64;
    let mut mask = 0u64;
    let mut i = 0;
    while i < N {
        value |= (method[i] as u64) << (8 * i);
        mask |= 0xff << (8 * i);
        i += 1;
    }
    (value, mask)
}

/// HTTP/1.x request methods followed by a space, and the start of the HTTP/2 client preface
/// (`PRI * HTTP/2.0`: a gRPC connection, e.g. an OTLP export), as little-endian u64 prefixes.
const METHODS: [(u64, u64); 10] = [
    prefix(b"GET "),
    prefix(b"POST "),
    prefix(b"PUT "),
    prefix(b"DELETE "),
    prefix(b"HEAD "),
    prefix(b"OPTIONS "),
    prefix(b"PATCH "),
    prefix(b"CONNECT "),
    prefix(b"TRACE "),
    prefix(b"PRI * HT"),
];

#[inline(always)]
fn is_http_request(first8: u64) -> bool {
    let mut i = 0;
    while i < METHODS.len() {
        let (value, mask) = METHODS[i];
        if first8 & mask == value {
            return true;
        }
        i += 1;
    }
    false
}

/// What [`capture`] made of the bytes.
pub enum Seen {
    /// Captured (or lost, counted): an HTTP request, or HTTP/2 frames.
    Request,
    /// Too short to inspect, or nothing to read.
    Nothing,
    /// Inspected and not HTTP: the first 8 bytes, for the TLS record check of the caller.
    Other(u64),
}

/// Captures the syscall's bytes if they start an HTTP request or belong to the request side of
/// an HTTP/2 connection.
#[inline(always)]
pub fn capture(sys: &Syscall, src: Source) -> Result<Seen, ()> {
    let tgid = (sys.pid_tgid >> 32) as u32;
    let tls = tls_flag(sys.syscall) != 0;
    let outbound = sys.direction == direction::OUTBOUND;
    if outbound {
        if let Some(conn) = export::marked(tgid, sys.fd, tls) {
            return export::capture_stream(sys, src, conn).map(|()| Seen::Request);
        }
    }
    if let Some(conn) = h2::marked(tgid, sys.fd, sys.direction, tls) {
        return copy_and_submit(sys, src, Some(conn)).map(|()| Seen::Request);
    }
    if matches!(sys.len, Some(len) if len < MIN_REQUEST_LEN) {
        return Ok(Seen::Nothing);
    }
    let first = match src {
        Source::Buf(ptr) => ptr,
        Source::Iov { iov, count: iovcnt } => {
            if iovcnt == 0 {
                return Ok(Seen::Nothing);
            }
            let Some(base) = read_user::<u64>(iov) else {
                count(Counter::ReadFailed);
                return Err(());
            };
            base
        }
    };
    count(Counter::Inspected);
    let Some(first8) = read_user::<u64>(first) else {
        count(Counter::ReadFailed);
        return Err(());
    };
    if is_http_request(first8) {
        if outbound && export::enabled() {
            // An OTLP trace export connection is read whole from its first request on.
            let starts_export = if first8 == h2::PREFACE_PREFIX {
                Some(if export::to_otlp_grpc_port(tgid, sys.fd) {
                    export::Mark::H2Exports
                } else {
                    export::Mark::Probation
                })
            } else if export::is_trace_export_line(first, first8, sys.len) {
                Some(export::Mark::Http1Exports)
            } else {
                None
            };
            if let Some(how) = starts_export {
                if let Some(conn) = export::mark(tgid, sys.fd, tls, how) {
                    return export::capture_stream(sys, src, conn).map(|()| Seen::Request);
                }
            }
        }
        let conn = if first8 == h2::PREFACE_PREFIX {
            h2::mark(tgid, sys.fd, sys.direction, tls, false)
        } else {
            if over_budget() {
                count(Counter::SampledOut);
                return Ok(Seen::Request);
            }
            None
        };
        return copy_and_submit(sys, src, conn).map(|()| Seen::Request);
    }
    // A HEADERS frame's length field starts with a zero byte; most other traffic does not.
    if first8 & 0xff == 0 && first8 >> 24 & 0xff == 1 {
        if let Some(conn) = late_h2_request(sys, tgid, tls, first) {
            return copy_and_submit(sys, src, Some(conn)).map(|()| Seen::Request);
        }
    }
    Ok(Seen::Other(first8))
}

/// Whether this CPU is past its capture budget and this HTTP/1 request is not the one in
/// `SAMPLE_ONE_IN` still captured. The per-CPU slot needs no lock: tracepoint programs run with
/// preemption off, and a uprobe racing one on the same CPU at worst miscounts one request of
/// the budget (the `sampled_out` count stays exact: it counts what this returns).
#[inline(always)]
fn over_budget() -> bool {
    let budget = CAPTURE_BUDGET.load();
    if budget == 0 {
        return false;
    }
    let Some(state) = BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot (see above).
    let state = unsafe { &mut *state };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(state.window_start_ns) >= CAPTURE_BUDGET_WINDOW_NS {
        state.window_start_ns = now;
        state.used = 0;
        state.over = 0;
    }
    if state.used < budget {
        state.used += 1;
        return false;
    }
    state.over = state.over.wrapping_add(1);
    state.over % SAMPLE_ONE_IN != 0
}

/// A connection opened before the agent: its first request HEADERS frame marks it (h2.rs).
#[inline(always)]
fn late_h2_request(sys: &Syscall, tgid: u32, tls: bool, first: u64) -> Option<*mut H2Conn> {
    // iovec sends have no length yet: the frame length is then not checked against it.
    let len = sys.len.unwrap_or(u64::MAX);
    let first16 = read_user::<[u8; 16]>(first)?;
    if !h2::opens_request(first16, len) {
        return None;
    }
    h2::mark(tgid, sys.fd, sys.direction, tls, true)
}

/// State of the iovec walk, shared with [`iov_step`] through `bpf_loop`.
#[repr(C)]
struct IovWalk {
    iov: u64,
    iovcnt: u64,
    /// Bytes to copy at most (the cap, or what a receive returned).
    valid: u64,
    captured: u64,
    /// Sum of the iovec lengths: a send's total.
    sum: u64,
    flags: u8,
    _pad0: [u8; 7],
}

/// One iovec: reads `{ base, len }` and copies its bytes after those already captured. A
/// `bpf_loop` callback, so the verifier checks it once instead of once per iteration and call
/// site (unrolled, 32 iovecs made the programs too complex to load). Returns 1 to stop.
extern "C" fn iov_step(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the caller's `IovWalk` (see `copy_and_submit`).
    let walk = unsafe { &mut *ctx.cast::<IovWalk>() };
    if index >= walk.iovcnt {
        return 1;
    }
    let Some([base, len]) = read_user::<[u64; 2]>(walk.iov.wrapping_add(16 * index)) else {
        walk.flags |= flags::READ_FAILED;
        return 1;
    };
    walk.sum = walk.sum.wrapping_add(len);
    if walk.captured >= walk.valid {
        return 0;
    }
    let Some(buf) = SCRATCH.get_ptr_mut(0) else {
        count(Counter::ScratchUnavailable);
        return 1;
    };
    let room = walk.valid - walk.captured;
    let n = clamp_to_cap(if len < room { len } else { room });
    let off = walk.captured & (CAPTURE_CAP_MAX as u64 - 1);
    // SAFETY: the per-CPU scratch record this program run builds; off < CAPTURE_CAP_MAX and
    // n <= CAPTURE_CAP_MAX, in bounds of the 2 * CAPTURE_CAP_MAX data area.
    let ret = unsafe {
        bpf_probe_read_user(
            (*buf).data.as_mut_ptr().add(off as usize).cast(),
            n as u32,
            base as *const _,
        )
    };
    if ret != 0 {
        walk.flags |= flags::READ_FAILED;
        return 1;
    }
    walk.captured += n;
    0
}

/// Copies up to the cap into a record and submits it. `h2` is the connection's entry when the
/// bytes are HTTP/2 frames: a lost record is remembered there and flagged on the next one.
#[inline(always)]
fn copy_and_submit(sys: &Syscall, src: Source, h2: Option<*mut H2Conn>) -> Result<(), ()> {
    let Some(buf) = SCRATCH.get_ptr_mut(0) else {
        count(Counter::ScratchUnavailable);
        return Err(());
    };
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program run.
    let buf: &mut EventBuf = unsafe { &mut *buf };
    let cap = clamp_to_cap(u64::from(CAPTURE_CAP.load()));
    let data = buf.data.as_mut_ptr();
    let mut event_flags = 0u8;
    let captured;
    let total_len;

    match src {
        Source::Buf(ptr) => {
            let len = sys.len.unwrap_or(0);
            let n = clamp_to_cap(if len < cap { len } else { cap });
            // SAFETY: n <= CAPTURE_CAP_MAX and `data` has 2 * CAPTURE_CAP_MAX bytes.
            if unsafe { bpf_probe_read_user(data.cast(), n as u32, ptr as *const _) } != 0 {
                count(Counter::ReadFailed);
                return Err(());
            }
            captured = n;
            total_len = len;
        }
        Source::Iov { iov, count: iovcnt } => {
            // Receives fill the iovecs in order up to the returned length.
            let valid = match sys.len {
                Some(len) if len < cap => len,
                Some(_) => cap,
                None => cap,
            };
            let mut walk = IovWalk {
                iov,
                iovcnt,
                valid,
                captured: 0,
                sum: 0,
                flags: 0,
                _pad0: [0; 7],
            };
            let loops = if iovcnt < u64::from(MAX_IOVECS) {
                iovcnt as u32
            } else {
                MAX_IOVECS
            };
            // SAFETY: `iov_step` has the callback signature bpf_loop expects, and `walk` lives
            // on this stack frame for the whole call.
            unsafe {
                bpf_loop(
                    loops,
                    iov_step as *mut c_void,
                    core::ptr::from_mut(&mut walk).cast(),
                    0,
                )
            };
            captured = clamp_to_cap(walk.captured);
            event_flags |= walk.flags;
            let sum = walk.sum;
            if iovcnt > u64::from(MAX_IOVECS) {
                event_flags |= flags::IOVECS_SKIPPED;
            }
            total_len = sys.len.unwrap_or(sum);
        }
    }

    let header = &mut buf.header;
    // SAFETY: no preconditions.
    header.timestamp_ns = unsafe { bpf_ktime_get_ns() };
    header.total_len = total_len;
    set_origin(header, sys);
    header.direction = sys.direction;
    let mut h2_flags = 0;
    if let Some(conn) = h2 {
        h2_flags = flags::H2;
        // SAFETY: a map value; a racing update at worst repeats or skips one gap flag, and
        // userspace distrusts a connection after either.
        if unsafe { (*conn).gap } != 0 {
            h2_flags |= flags::H2_GAP;
        }
    }
    header.flags = event_flags | h2_flags | tls_flag(sys.syscall);
    header._pad0 = [0];
    let captured = clamp_to_cap(captured);
    header.captured_len = captured as u32;

    let size = EVENT_HEADER_LEN + captured as usize;
    // SAFETY: `buf` holds EVENT_HEADER_LEN + 2 * CAPTURE_CAP_MAX bytes, more than `size`, and
    // the verifier sees `size` bounded through `clamp_to_cap`.
    let record =
        unsafe { core::slice::from_raw_parts(core::ptr::from_ref(buf).cast::<u8>(), size) };
    let ret = EVENTS.output::<[u8]>(record, 0);
    if let Some(conn) = h2 {
        // SAFETY: as above.
        unsafe { (*conn).gap = u8::from(ret.is_err()) };
    }
    if ret.is_err() {
        count(Counter::RingbufFull);
        return Err(());
    }
    count(Counter::Captured);
    if total_len > captured || event_flags != 0 {
        count(Counter::Truncated);
    }
    Ok(())
}
