//! OTLP trace exports, read whole, so the span rules work for processes that export to any
//! collector, not only to the agent's receiver.
//!
//! A connection that carries trace exports is marked: by the kernel when a send starts an
//! HTTP/1 `POST /v1/traces` request, or the HTTP/2 preface towards the OTLP/gRPC port; by the
//! agent when it finds an export on another connection (an HTTP/1 path with a prefix, or a
//! gRPC export on an HTTP/2 connection joined mid-way). Any
//! other outbound HTTP/2 connection is read whole on probation for its first
//! `EXPORT_PROBATION_BYTES` (a gRPC exporter to a Collector on another port, whose only export
//! may come before the agent could say so): the agent keeps it (`EXPORT_KEEP`) when it decodes
//! a `TraceService/Export` call on it; else the kernel follows it as an ordinary HTTP/2
//! connection from then on (agent-ebpf/src/h2.rs). While a connection is marked,
//! every send on it is captured whole, in chunks of the capture cap, each carrying its offset in
//! the connection's request stream (`flags::EXPORT_STREAM`, `total_len` = offset): a chunk lost
//! leaves a gap userspace sees, and an export with a gap is counted, never used. Connections to
//! the agent's own receiver are left to the receiver. Other connections pay one array lookup
//! per send (the per-process hint), nothing more.

use agent_common::{
    direction, family, flags, Counter, EventBuf, ExportConn, SocketKey, CAPTURE_CAP_MAX,
    EVENT_HEADER_LEN, EXPORT_CONNS_ENTRIES, EXPORT_MAX_BYTES_DEFAULT, EXPORT_PROBATION_BYTES,
    EXPORT_PROCS_ENTRIES, MAX_IOVECS,
};
use aya_ebpf::{
    cty::c_void,
    helpers::generated::{bpf_ktime_get_ns, bpf_loop, bpf_probe_read_user},
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
    Global,
};

use crate::{
    h2,
    io::{clamp_to_cap, read_user, tls_flag, Source, Syscall},
    maps::{count, EVENTS, PEERS, SCRATCH},
    origin::set_origin,
};

/// Bytes of one send captured at most (`--span-intake-max-bytes`); 0: the wire intake is off.
/// Writable data (.data), not a read-only global: the verifier then does not know its value,
/// and the chunk loop below converges after a few steps instead of being walked chunk by chunk
/// with exact byte counts (which exceeded the verifier's 1M-instruction budget).
#[unsafe(no_mangle)]
static mut EXPORT_MAX_BYTES: u32 = EXPORT_MAX_BYTES_DEFAULT;

/// [`EXPORT_MAX_BYTES`], as the verifier sees it: any value.
#[inline(always)]
fn export_max_bytes() -> u32 {
    // SAFETY: a plain load of a u32 the agent sets before loading (and never changes).
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!(EXPORT_MAX_BYTES)) }
}
/// The agent's receiver ports: gRPC << 16 | HTTP (0 when off).
#[unsafe(no_mangle)]
static RECEIVER_PORTS: Global<u32> = Global::new(0);

/// Export connections (agent-common `ExportConn`).
#[map]
pub static EXPORT_CONNS: LruHashMap<SocketKey, ExportConn> =
    LruHashMap::with_max_entries(EXPORT_CONNS_ENTRIES, 0);

/// Connections on probation the agent found to carry exports (it inserts them): at the end of
/// probation they stay marked.
#[map]
static EXPORT_KEEP: LruHashMap<SocketKey, u8> =
    LruHashMap::with_max_entries(EXPORT_CONNS_ENTRIES, 0);

/// The walk of the send being captured (see [`StreamWalk`]).
#[map]
static STREAM_WALK: PerCpuArray<StreamWalk> = PerCpuArray::with_max_entries(1, 0);

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
    export_max_bytes() != 0
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

/// How a connection comes to be read whole.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// It carries exports: an HTTP/1 `POST …/v1/traces`.
    Http1Exports,
    /// It carries exports: an HTTP/2 preface to the OTLP/gRPC port.
    H2Exports,
    /// It may: an HTTP/2 preface to another port, read whole for [`EXPORT_PROBATION_BYTES`]
    /// while the agent finds out.
    Probation,
}

/// Starts reading `fd` of `tgid` whole, unless the wire intake is off or the connection goes
/// to the agent's own receiver.
#[inline(always)]
pub fn mark(tgid: u32, fd: i32, tls: bool, how: Mark) -> Option<*mut ExportConn> {
    if fd < 0 || !enabled() || to_receiver(tgid, fd) {
        return None;
    }
    let key = SocketKey { tgid, fd };
    let conn = ExportConn {
        offset: 0,
        probation_left: if how == Mark::Probation {
            EXPORT_PROBATION_BYTES
        } else {
            0
        },
        tls: u8::from(tls),
        lost: 0,
        h2: u8::from(how != Mark::Http1Exports),
        _pad0: [0],
    };
    if EXPORT_CONNS.insert(key, conn, 0).is_err() {
        return None;
    }
    if let Some(hint) = EXPORT_PROCS.get_ptr_mut(slot(tgid)) {
        // SAFETY: an array slot; a racing writer stores another tgid, which only costs that
        // process its export connections' next sends (captured as ordinary ones).
        unsafe { *hint = tgid };
    }
    count(if how == Mark::Probation {
        Counter::ExportProbations
    } else {
        Counter::ExportConnections
    });
    EXPORT_CONNS.get_ptr_mut(key)
}

/// Forgets a closed connection.
#[inline(always)]
pub fn forget(tgid: u32, fd: i32) {
    if matches!(EXPORT_PROCS.get(slot(tgid)), Some(&t) if t == tgid) {
        let _ignored = EXPORT_CONNS.remove(SocketKey { tgid, fd });
        let _ignored = EXPORT_KEEP.remove(SocketKey { tgid, fd });
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

/// `POST /v1/traces` and the byte after the path (` ` or `?`): the request line of an OTLP/HTTP
/// trace export to the standard path, as two little-endian u64s.
const EXPORT_LINE: [u64; 2] = [
    u64::from_le_bytes(*b"POST /v1"),
    u64::from_le_bytes(*b"/traces "),
];
/// The last byte of [`EXPORT_LINE`] may also be `?` (a query).
const LAST_BYTE_MASK: u64 = !(0xff << 56);
const QUERY_INSTEAD: u64 = (b'?' as u64) << 56;

/// Whether the send at `first`, whose first 8 bytes are `first8`, starts `POST /v1/traces `
/// (or `?`): the first 8 bytes are already known, so only a `POST /v1…` pays one 8-byte read
/// more, and other POST requests none. An export to another path (a prefix before
/// `/v1/traces`) is found by the agent instead, which then marks the connection.
#[inline(always)]
pub fn is_trace_export_line(first: u64, first8: u64, len: Option<u64>) -> bool {
    if first8 != EXPORT_LINE[0] || len.is_some_and(|len| len < 16) {
        return false;
    }
    let Some(next8) = read_user::<u64>(first.wrapping_add(8)) else {
        return false;
    };
    next8 == EXPORT_LINE[1] || next8 == (EXPORT_LINE[1] & LAST_BYTE_MASK) | QUERY_INSTEAD
}

/// The walk over one send's bytes, shared with [`stream_step`] through a per-CPU map slot
/// ([`STREAM_WALK`]), not the stack: the verifier knows nothing of values loaded from a map, so
/// every step looks the same to it and the callback is verified in a few passes. On the stack,
/// the byte counts it tracks made each step new to it (8193 jumps: too complex to load).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StreamWalk {
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
    /// Bytes of unknown length were missed (an unreadable iovec array, more iovecs than
    /// `MAX_IOVECS`): the stream's offsets no longer say where its bytes belong.
    lost: u8,
    /// Bytes past the bound were skipped: the stream's next chunk starts further on.
    skipped: u8,
    _pad0: [u8; 6],
}

/// One step: a chunk of up to the capture cap from the current buffer, or the next iovec.
/// Returns 1 to stop.
extern "C" fn stream_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(w) = STREAM_WALK.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's walk slot, which this program run set up (`capture_stream`).
    let w = unsafe { &mut *w };
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
        w.skipped = 1;
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
    let (src, offset) = (w.buf, w.offset);
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
    // The chunk's length goes through map memory and back: the verifier knows nothing of a
    // value loaded from a map, so the bound it needs for the copy below is the clamp's alone,
    // and the walk's counters never become "precise". Were they precise, it would walk this
    // callback once per chunk of the largest export (8193 jumps: too complex to load).
    buf.header.captured_len = n as u32;
    // SAFETY: reading back the field just written, through a valid reference.
    let n = clamp_to_cap(u64::from(unsafe {
        core::ptr::read_volatile(&buf.header.captured_len)
    }));
    // SAFETY: n <= CAPTURE_CAP_MAX; the data area holds 2 * CAPTURE_CAP_MAX bytes.
    let read =
        unsafe { bpf_probe_read_user(buf.data.as_mut_ptr().cast(), n as u32, src as *const _) };
    if read != 0 {
        count(Counter::ExportChunksLost);
        return 0;
    }
    // The rest of the header was filled once before the loop (`capture_stream`): copying
    // arrays here made the callback, which the verifier walks many times, too costly to load.
    let h = &mut buf.header;
    // SAFETY: no preconditions.
    h.timestamp_ns = unsafe { bpf_ktime_get_ns() };
    h.total_len = offset;
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
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        count(Counter::ScratchUnavailable);
        return Err(());
    };
    // SAFETY: the per-CPU scratch record this program run builds; every chunk of this send
    // shares the header fields set here.
    let h = unsafe { &mut (*scratch).header };
    set_origin(h, sys);
    h.direction = direction::OUTBOUND;
    // SAFETY: a map value; a copied field.
    let h2 = if unsafe { (*conn).h2 } != 0 {
        flags::H2
    } else {
        0
    };
    h.flags = flags::EXPORT_STREAM
        | h2
        | tls_flag(sys.syscall)
        | if earlier_lost != 0 {
            flags::IOVECS_SKIPPED
        } else {
            0
        };
    h._pad0 = [0];
    let Some(slot) = STREAM_WALK.get_ptr_mut(0) else {
        count(Counter::ScratchUnavailable);
        return Err(());
    };
    // SAFETY: this CPU's walk slot, ours for the duration of this program run.
    let walk = unsafe { &mut *slot };
    *walk = StreamWalk {
        buf,
        left,
        iov,
        iovcnt,
        next_iov: 0,
        budget: u64::from(export_max_bytes()),
        // SAFETY: a map value; copied.
        offset: unsafe { (*conn).offset },
        lost: 0,
        skipped: 0,
        _pad0: [0; 6],
    };
    // One chunk per step, one step per iovec change, and one to skip what is past the bound.
    let steps = export_max_bytes() / CAPTURE_CAP_MAX as u32 + 2 * MAX_IOVECS + 2;
    // SAFETY: `stream_step` has the callback signature bpf_loop expects; it takes no context.
    unsafe { bpf_loop(steps, stream_step as *mut c_void, core::ptr::null_mut(), 0) };
    if walk.left > 0 {
        // More steps than the bound allows (should not happen): the rest is a gap.
        count(Counter::ExportBytesSkipped);
        walk.offset = walk.offset.wrapping_add(walk.left);
        walk.skipped = 1;
    }
    if walk.next_iov < walk.iovcnt {
        // iovecs past MAX_IOVECS, of unknown length.
        count(Counter::ExportBytesSkipped);
        walk.lost = 1;
    }
    if walk.skipped != 0 {
        // A chunk with no bytes at the offset past the skip: without it, a send whose end was
        // skipped and that no other send follows (the last export of a process) would leave
        // userspace waiting for bytes that never come, instead of seeing the gap.
        // SAFETY: the per-CPU scratch record whose header this run filled above.
        let buf: &mut EventBuf = unsafe { &mut *scratch };
        buf.header.captured_len = 0;
        buf.header.total_len = walk.offset;
        // SAFETY: the header is the first EVENT_HEADER_LEN bytes of `buf`.
        let record = unsafe {
            core::slice::from_raw_parts(core::ptr::from_ref(buf).cast::<u8>(), EVENT_HEADER_LEN)
        };
        if EVENTS.output::<[u8]>(record, 0).is_err() {
            count(Counter::ExportChunksLost);
        }
    }
    // SAFETY: a map value of this connection; a racing send on another thread could interleave
    // its chunks, which userspace sees as offsets that do not follow (a gap).
    let (start, probation_left) = unsafe {
        let start = (*conn).offset;
        (*conn).offset = walk.offset;
        (*conn).lost |= walk.lost;
        (start, (*conn).probation_left)
    };
    if probation_left != 0 {
        end_of_probation(
            tgid,
            sys.fd,
            tls_flag(sys.syscall) != 0,
            conn,
            walk.offset.wrapping_sub(start),
            probation_left,
        );
    }
    Ok(())
}

/// Counts a send against a connection's probation; at its end the connection stays marked if
/// the agent kept it, else it is followed as an ordinary HTTP/2 connection from its next send
/// (userspace goes on with the decoder it has: no gap).
#[inline(always)]
fn end_of_probation(
    tgid: u32,
    fd: i32,
    tls: bool,
    conn: *mut ExportConn,
    sent: u64,
    probation_left: u32,
) {
    if sent < u64::from(probation_left) {
        // SAFETY: a map value of this connection.
        unsafe { (*conn).probation_left = probation_left - sent as u32 };
        return;
    }
    let key = SocketKey { tgid, fd };
    // SAFETY: the LRU map value is only tested for presence.
    if unsafe { EXPORT_KEEP.get(key) }.is_some() {
        // SAFETY: a map value of this connection.
        unsafe { (*conn).probation_left = 0 };
        return;
    }
    let _ignored = EXPORT_CONNS.remove(key);
    let _followed = h2::mark(tgid, fd, direction::OUTBOUND, tls, false);
}
