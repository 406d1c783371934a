//! OTLP trace exports, read whole, so the span rules work for processes that export to any
//! collector, not only to the agent's receiver.
//!
//! A connection that carries trace exports is marked: by the kernel when a send starts an
//! HTTP/1 `POST …/v1/traces` request, or the HTTP/2 preface towards the OTLP/gRPC port; by the
//! agent when it decodes a `TraceService/Export` call on another HTTP/2 connection. From then on
//! every send on it is captured whole, in chunks of the capture cap, each carrying its offset in
//! the connection's request stream (`flags::EXPORT_STREAM`, `total_len` = offset): a chunk lost
//! leaves a gap userspace sees, and an export with a gap is counted, never used. Connections to
//! the agent's own receiver are left to the receiver. Other connections pay one array lookup
//! per send (the per-process hint), nothing more.

use agent_common::{
    direction, family, flags, Counter, EventBuf, ExportConn, SocketKey, CAPTURE_CAP_MAX,
    EVENT_HEADER_LEN, EXPORT_CONNS_ENTRIES, EXPORT_MAX_BYTES_DEFAULT, EXPORT_PROCS_ENTRIES,
    MAX_IOVECS,
};
use aya_ebpf::{
    cty::c_void,
    helpers::{
        bpf_get_current_comm,
        generated::{bpf_ktime_get_ns, bpf_loop, bpf_probe_read_user},
    },
    macros::map,
    maps::{Array, LruHashMap},
    Global,
};

use crate::{
    io::{clamp_to_cap, read_user, tls_flag, Source, Syscall},
    maps::{count, EVENTS, PEERS, SCRATCH},
};

/// Bytes of one send captured at most (`--span-intake-max-bytes`); 0: the wire intake is off.
#[unsafe(no_mangle)]
static EXPORT_MAX_BYTES: Global<u32> = Global::new(EXPORT_MAX_BYTES_DEFAULT);
/// The agent's receiver ports: gRPC << 16 | HTTP (0 when off).
#[unsafe(no_mangle)]
static RECEIVER_PORTS: Global<u32> = Global::new(0);

/// Export connections (agent-common `ExportConn`).
#[map]
pub static EXPORT_CONNS: LruHashMap<SocketKey, ExportConn> =
    LruHashMap::with_max_entries(EXPORT_CONNS_ENTRIES, 0);

/// tgid of a process with export connections, in slot `tgid % EXPORT_PROCS_ENTRIES` (the
/// agent writes it too when it marks a connection).
#[map]
static EXPORT_PROCS: Array<u32> = Array::with_max_entries(EXPORT_PROCS_ENTRIES, 0);

/// The OTLP/gRPC port (agent `model::otlp::GRPC_PORT`): an HTTP/2 connection to it is an
/// export connection from its preface.
const OTLP_GRPC_PORT: u16 = 4317;

#[inline(always)]
fn slot(tgid: u32) -> u32 {
    tgid & (EXPORT_PROCS_ENTRIES - 1)
}

/// The wire intake is on.
#[inline(always)]
pub fn enabled() -> bool {
    EXPORT_MAX_BYTES.load() != 0
}

/// The export connection `fd` of `tgid`, when this send is on one.
#[inline(always)]
pub fn marked(tgid: u32, fd: i32, tls: bool) -> Option<*mut ExportConn> {
    if fd < 0 || !matches!(EXPORT_PROCS.get(slot(tgid)), Some(&t) if t == tgid) {
        return None;
    }
    let conn = EXPORT_CONNS.get_ptr_mut(SocketKey { tgid, fd })?;
    // SAFETY: a map value; a copied field only.
    let conn_tls = unsafe { (*conn).tls };
    ((conn_tls != 0) == tls).then_some(conn)
}

/// Starts reading `fd` of `tgid` whole, unless the wire intake is off or the connection goes
/// to the agent's own receiver.
#[inline(always)]
pub fn mark(tgid: u32, fd: i32, tls: bool) -> Option<*mut ExportConn> {
    if fd < 0 || !enabled() || to_receiver(tgid, fd) {
        return None;
    }
    let key = SocketKey { tgid, fd };
    let conn = ExportConn {
        offset: 0,
        tls: u8::from(tls),
        lost: 0,
        _pad0: [0; 6],
    };
    if EXPORT_CONNS.insert(key, conn, 0).is_err() {
        return None;
    }
    if let Some(hint) = EXPORT_PROCS.get_ptr_mut(slot(tgid)) {
        // SAFETY: an array slot; a racing writer stores another tgid, which only costs that
        // process its export connections' next sends (captured as ordinary ones).
        unsafe { *hint = tgid };
    }
    count(Counter::ExportConnections);
    EXPORT_CONNS.get_ptr_mut(key)
}

/// Forgets a closed connection.
#[inline(always)]
pub fn forget(tgid: u32, fd: i32) {
    if matches!(EXPORT_PROCS.get(slot(tgid)), Some(&t) if t == tgid) {
        let _ignored = EXPORT_CONNS.remove(SocketKey { tgid, fd });
    }
}

/// The peer is the agent's own receiver (loopback, one of its ports).
#[inline(always)]
fn to_receiver(tgid: u32, fd: i32) -> bool {
    let ports = RECEIVER_PORTS.load();
    // SAFETY: the LRU map value is copied out at once.
    let Some(peer) = (unsafe { PEERS.get(SocketKey { tgid, fd }) }).copied() else {
        return false;
    };
    let loopback = match peer.family {
        family::INET => peer.addr[0] == 127,
        family::INET6 => peer.addr[..15] == [0; 15] && peer.addr[15] == 1,
        _ => false,
    };
    loopback
        && peer.port != 0
        && (u32::from(peer.port) == ports >> 16 || u32::from(peer.port) == ports & 0xffff)
}

/// Whether the send's peer is the OTLP/gRPC port (for an HTTP/2 preface).
#[inline(always)]
pub fn to_otlp_grpc_port(tgid: u32, fd: i32) -> bool {
    // SAFETY: the LRU map value is copied out at once.
    matches!(unsafe { PEERS.get(SocketKey { tgid, fd }) }, Some(p) if p.port == OTLP_GRPC_PORT)
}

/// `/v1/traces` as the end of the path of an HTTP/1 request line, in its first bytes.
const TRACES_PATH: &[u8; 10] = b"/v1/traces";
/// Bytes of a request line looked at for the path.
const REQUEST_LINE_MAX: usize = 128;

/// Whether the send at `first` starts `POST <path ending in /v1/traces> HTTP/1.x`.
#[inline(always)]
pub fn is_trace_export_line(first: u64, len: Option<u64>) -> bool {
    let n = match len {
        Some(len) if len < REQUEST_LINE_MAX as u64 => len,
        _ => REQUEST_LINE_MAX as u64,
    };
    // SAFETY: reading a local through a valid reference (hides the value from LLVM, so the
    // verifier sees the bound below; see capture.rs `clamp_to_cap`).
    let n = unsafe { core::ptr::read_volatile(&n) };
    let n = if n > REQUEST_LINE_MAX as u64 {
        REQUEST_LINE_MAX as u64
    } else {
        n
    };
    let mut line = [0u8; REQUEST_LINE_MAX];
    // SAFETY: at most REQUEST_LINE_MAX bytes into `line`; the helper fails cleanly.
    let ret = unsafe { bpf_probe_read_user(line.as_mut_ptr().cast(), n as u32, first as *const _) };
    if ret != 0 || &line[..6] != b"POST /" {
        return false;
    }
    // The path ends at the first space after "POST ".
    let mut end = 0usize;
    let mut i = 6usize;
    while i < REQUEST_LINE_MAX {
        if line[i] == b' ' || line[i] == b'?' {
            end = i;
            break;
        }
        i += 1;
    }
    if end < 5 + TRACES_PATH.len() {
        return false;
    }
    let start = end - TRACES_PATH.len();
    let mut k = 0usize;
    while k < TRACES_PATH.len() {
        if line[(start + k) & (REQUEST_LINE_MAX - 1)] != TRACES_PATH[k] {
            return false;
        }
        k += 1;
    }
    true
}

/// The walk over one send's bytes, shared with [`stream_step`] through `bpf_loop`.
#[repr(C)]
struct StreamWalk {
    /// The current buffer and the bytes left in it.
    buf: u64,
    left: u64,
    /// iovec sources: the array, its length and the next one to read.
    iov: u64,
    iovcnt: u64,
    next_iov: u64,
    /// Bytes that may still be captured of this send.
    budget: u64,
    /// Stream offset of the next byte.
    offset: u64,
    pid_tgid: u64,
    fd: i32,
    syscall: u8,
    flags: u8,
    /// Bytes of unknown length were missed (an unreadable iovec array, more iovecs than
    /// `MAX_IOVECS`): the stream's offsets no longer say where its bytes belong.
    lost: u8,
    _pad0: [u8; 1],
    comm: [u8; 16],
    peer_addr: [u8; 16],
    peer_port: u16,
    peer_family: u16,
    _pad1: [u8; 4],
}

/// One step: a chunk of up to the capture cap from the current buffer, or the next iovec.
/// Returns 1 to stop.
extern "C" fn stream_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the caller's `StreamWalk` (see `capture_stream`).
    let w = unsafe { &mut *ctx.cast::<StreamWalk>() };
    if w.left == 0 {
        if w.next_iov >= w.iovcnt || w.next_iov >= u64::from(MAX_IOVECS) {
            return 1;
        }
        let Some([base, len]) = read_user::<[u64; 2]>(w.iov.wrapping_add(16 * w.next_iov)) else {
            count(Counter::ExportChunksLost);
            w.lost = 1;
            return 1;
        };
        w.next_iov += 1;
        w.buf = base;
        w.left = len;
        return 0;
    }
    if w.budget == 0 {
        // Past the bound: skipped whole, the offset still moves (userspace sees the gap).
        count(Counter::ExportBytesSkipped);
        w.offset = w.offset.wrapping_add(w.left);
        w.left = 0;
        return 0;
    }
    let mut n = if w.left < CAPTURE_CAP_MAX as u64 {
        w.left
    } else {
        CAPTURE_CAP_MAX as u64
    };
    if n > w.budget {
        n = w.budget;
    }
    let n = clamp_to_cap(n);
    let offset = w.offset;
    w.buf = w.buf.wrapping_add(n);
    w.left -= n;
    w.budget -= n;
    w.offset = w.offset.wrapping_add(n);
    let Some(buf) = SCRATCH.get_ptr_mut(0) else {
        count(Counter::ScratchUnavailable);
        return 1;
    };
    // SAFETY: the per-CPU scratch record this program run builds.
    let buf: &mut EventBuf = unsafe { &mut *buf };
    // SAFETY: n <= CAPTURE_CAP_MAX; the data area holds 2 * CAPTURE_CAP_MAX bytes.
    let read = unsafe {
        bpf_probe_read_user(
            buf.data.as_mut_ptr().cast(),
            n as u32,
            (w.buf.wrapping_sub(n)) as *const _,
        )
    };
    if read != 0 {
        count(Counter::ExportChunksLost);
        return 0;
    }
    let h = &mut buf.header;
    // SAFETY: no preconditions.
    h.timestamp_ns = unsafe { bpf_ktime_get_ns() };
    h.total_len = offset;
    h.tgid = (w.pid_tgid >> 32) as u32;
    h.tid = w.pid_tgid as u32;
    h.fd = w.fd;
    h.captured_len = n as u32;
    h.comm = w.comm;
    h.peer_addr = w.peer_addr;
    h.peer_port = w.peer_port;
    h.peer_family = w.peer_family;
    h.direction = direction::OUTBOUND;
    h.syscall = w.syscall;
    h.flags = w.flags;
    h._pad0 = [0];
    let size = EVENT_HEADER_LEN + n as usize;
    // SAFETY: `buf` holds EVENT_HEADER_LEN + 2 * CAPTURE_CAP_MAX bytes, more than `size`.
    let record =
        unsafe { core::slice::from_raw_parts(core::ptr::from_ref(buf).cast::<u8>(), size) };
    if EVENTS.output::<[u8]>(record, 0).is_err() {
        count(Counter::ExportChunksLost);
    }
    0
}

/// Captures the whole send on export connection `conn`.
#[inline(always)]
pub fn capture_stream(sys: &Syscall, src: Source, conn: *mut ExportConn) -> Result<(), ()> {
    let tgid = (sys.pid_tgid >> 32) as u32;
    let (buf, left, iov, iovcnt) = match src {
        Source::Buf(ptr) => (ptr, sys.len.unwrap_or(0), 0, 0),
        Source::Iov { iov, count } => (0, 0, iov, count),
    };
    // SAFETY: a map value of this connection: an earlier send lost bytes of unknown length,
    // which this send's first chunk says (`IOVECS_SKIPPED`), once.
    let earlier_lost = unsafe { core::mem::replace(&mut (*conn).lost, 0) };
    let mut walk = StreamWalk {
        buf,
        left,
        iov,
        iovcnt,
        next_iov: 0,
        budget: u64::from(EXPORT_MAX_BYTES.load()),
        // SAFETY: a map value; copied.
        offset: unsafe { (*conn).offset },
        pid_tgid: sys.pid_tgid,
        fd: sys.fd,
        syscall: sys.syscall,
        flags: flags::EXPORT_STREAM
            | tls_flag(sys.syscall)
            | if earlier_lost != 0 {
                flags::IOVECS_SKIPPED
            } else {
                0
            },
        lost: 0,
        _pad0: [0; 1],
        comm: bpf_get_current_comm().unwrap_or_default(),
        peer_addr: [0; 16],
        peer_port: 0,
        peer_family: family::UNKNOWN,
        _pad1: [0; 4],
    };
    // SAFETY: the LRU map value is copied out at once.
    if let Some(peer) = unsafe { PEERS.get(SocketKey { tgid, fd: sys.fd }) } {
        walk.peer_addr = peer.addr;
        walk.peer_port = peer.port;
        walk.peer_family = peer.family;
    }
    // One chunk per step, one step per iovec change, and one to skip what is past the bound.
    let steps = EXPORT_MAX_BYTES.load() / CAPTURE_CAP_MAX as u32 + 2 * MAX_IOVECS + 2;
    // SAFETY: `stream_step` has the callback signature bpf_loop expects, and `walk` lives on
    // this stack frame for the whole call.
    unsafe {
        bpf_loop(
            steps,
            stream_step as *mut c_void,
            core::ptr::from_mut(&mut walk).cast(),
            0,
        )
    };
    if walk.left > 0 {
        // More steps than the bound allows (should not happen): the rest is a gap.
        count(Counter::ExportBytesSkipped);
        walk.offset = walk.offset.wrapping_add(walk.left);
    }
    if walk.next_iov < walk.iovcnt {
        // iovecs past MAX_IOVECS, of unknown length.
        count(Counter::ExportBytesSkipped);
        walk.lost = 1;
    }
    // SAFETY: a map value of this connection; a racing send on another thread could interleave
    // its chunks, which userspace sees as offsets that do not follow (a gap).
    unsafe {
        (*conn).offset = walk.offset;
        (*conn).lost |= walk.lost;
    }
    Ok(())
}
