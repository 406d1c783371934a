//! HTTP/2: connections are marked when their client preface passes (`PRI * HTTP/2.0`), and from
//! then on every send or receive in their request direction is captured whole (up to the cap),
//! frames and all: HPACK needs every header block in order, and frames do not line up with
//! syscalls (a Go server reads the 9-byte frame header and the payload separately). Userspace
//! parses the frames; the kernel only routes bytes.
//!
//! A connection opened before the agent started has no preface to see. A request HEADERS frame
//! at the start of a send or receive marks it too, as `late`: userspace counts its calls as
//! undetermined (the HPACK table is unknown) instead of missing them silently.

use agent_common::{Counter, H2Conn, SocketKey, H2_CONNS_ENTRIES, H2_PROCS_ENTRIES};
use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap},
};

use crate::maps::count;

/// HTTP/2 connections followed; userspace removes entries it finds are not HTTP/2.
#[map]
pub static H2_CONNS: LruHashMap<SocketKey, H2Conn> =
    LruHashMap::with_max_entries(H2_CONNS_ENTRIES, 0);

/// tgid of a process with HTTP/2 connections, in slot `tgid % H2_PROCS_ENTRIES`.
#[map]
static H2_PROCS: Array<u32> = Array::with_max_entries(H2_PROCS_ENTRIES, 0);

/// `PRI * HT` as a little-endian u64: the first 8 bytes of the client preface.
pub const PREFACE_PREFIX: u64 = u64::from_le_bytes(*b"PRI * HT");

/// The process's slot in the hint array.
#[inline(always)]
fn slot(tgid: u32) -> u32 {
    tgid & (H2_PROCS_ENTRIES - 1)
}

/// True when the process may have marked connections; cheap enough for every syscall (an
/// array lookup the verifier inlines), so most sends and receives skip the hash lookup.
#[inline(always)]
pub fn process_has_h2(tgid: u32) -> bool {
    matches!(H2_PROCS.get(slot(tgid)), Some(&t) if t == tgid)
}

/// The marked connection `fd` of `tgid` when this send or receive carries its requests.
#[inline(always)]
pub fn marked(tgid: u32, fd: i32, dir: u8, tls: bool) -> Option<*mut H2Conn> {
    if fd < 0 || !process_has_h2(tgid) {
        return None;
    }
    let conn = H2_CONNS.get_ptr_mut(SocketKey { tgid, fd })?;
    // SAFETY: a map value; copied fields only.
    let (conn_dir, conn_tls) = unsafe { ((*conn).direction, (*conn).tls) };
    (conn_dir == dir && (conn_tls != 0) == tls).then_some(conn)
}

/// Starts following a connection. Returns the map entry, or `None` when it could not be made
/// (the event is then captured as a plain one; userspace still sees the preface).
#[inline(always)]
pub fn mark(tgid: u32, fd: i32, dir: u8, tls: bool, late: bool) -> Option<*mut H2Conn> {
    if fd < 0 {
        return None;
    }
    let key = SocketKey { tgid, fd };
    let conn = H2Conn {
        direction: dir,
        tls: u8::from(tls),
        // A late connection's first event says so (`H2_GAP`): userspace may still hold the
        // decoder of an earlier connection on the same fd, whose table does not apply.
        gap: u8::from(late),
        late: u8::from(late),
    };
    if H2_CONNS.insert(key, conn, 0).is_err() {
        count(Counter::H2NotFollowed);
        return None;
    }
    if let Some(hint) = H2_PROCS.get_ptr_mut(slot(tgid)) {
        // SAFETY: an array slot; a racing writer stores another tgid, which only costs that
        // process its hint (its connections are then followed again at their next mark).
        unsafe {
            if *hint != tgid {
                if *hint != 0 {
                    count(Counter::H2HintReplaced);
                }
                *hint = tgid;
            }
        }
    }
    count(if late {
        Counter::H2Joined
    } else {
        Counter::H2Connections
    });
    H2_CONNS.get_ptr_mut(key)
}

/// Forgets a closed connection (only for processes that have some).
#[inline(always)]
pub fn forget(tgid: u32, fd: i32) {
    if process_has_h2(tgid) {
        let _ignored = H2_CONNS.remove(SocketKey { tgid, fd });
    }
}

/// HEADERS frame flags that may be set: END_STREAM, END_HEADERS, PADDED, PRIORITY.
const HEADERS_FLAGS: u64 = 0x01 | 0x04 | 0x08 | 0x20;

/// Whether the first 16 bytes of a send or receive are a HEADERS frame that opens a request:
/// a 9-byte frame header (length < 64 KiB, type 1, an odd (client) stream id below 2^24, no
/// padding or priority fields) whose block starts with either a request pseudo-header
/// (`:authority`, `:method`, `:path`, `:scheme`: static indices 1–7, indexed or as a literal
/// name), or a dynamic-table entry in a frame that leaves the stream open for a body (grpcio's
/// repeat calls: `c4 c3 83 86 …`). A response starts with `:status` (static 8–14) and gRPC
/// trailers end the stream, so a server's replies and what a client receives do not match.
/// A heuristic: a false match only costs capturing that connection, whose calls userspace
/// then counts as undetermined.
#[inline(always)]
pub fn opens_request(first16: [u8; 16], len: u64) -> bool {
    let frame_len = u64::from(first16[1]) << 8 | u64::from(first16[2]);
    let flags = u64::from(first16[4]);
    let stream_low = first16[8];
    if first16[0] != 0
        || first16[3] != 1
        || flags & !HEADERS_FLAGS != 0
        || flags & (0x08 | 0x20) != 0
        || first16[5] != 0
        || stream_low & 1 == 0
        || frame_len == 0
        || frame_len + 9 > len
    {
        return false;
    }
    let first_field = first16[9];
    let end_stream = flags & 0x01 != 0;
    matches!(first_field, 0x81..=0x87 | 0x41..=0x47 | 0x01..=0x07 | 0x11..=0x17)
        || (first_field >= 0xbe && !end_stream)
}
