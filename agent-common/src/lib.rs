//! Types and limits shared by the eBPF programs (agent-ebpf) and the agent.
//!
//! Everything here is `#[repr(C)]` with explicit padding and a compile-time size check: the
//! kernel writes these bytes and userspace reads them back, and aya checks ring buffer record
//! sizes nowhere. Enums travel as raw integers; the `user` feature adds the conversions.
#![no_std]

use core::mem::size_of;

/// Largest number of request bytes copied per event. A power of two, so that offsets and
/// lengths can be clamped with a mask the verifier understands.
pub const CAPTURE_CAP_MAX: usize = 4096;
/// Default capture cap; the agent can lower it (`--capture-bytes`) through [`GLOBAL_CAPTURE_CAP`].
pub const CAPTURE_CAP_DEFAULT: u32 = 4096;
/// Shortest buffer that can hold an HTTP/1.x request line: `GET / HTTP/1.1\r\n`.
pub const MIN_REQUEST_LEN: u64 = 16;
/// Number of iovecs read for `writev`/`sendmsg`/`readv`/`recvmsg`. Node writes headers and body
/// as separate iovecs, grpcio up to ~30 (one per header name and value); a send spread over
/// more than this is marked truncated.
pub const MAX_IOVECS: u32 = 32;
/// Default ring buffer size: a power-of-two multiple of the page size (8 MiB).
pub const RING_BUF_BYTES_DEFAULT: u32 = 8 << 20;
/// Slots for receive syscalls between `sys_enter_*` and `sys_exit_*`, one per thread id modulo
/// this (a power of two). Two threads in a receive at once on the same slot lose a capture
/// (counted as `stash_full`).
pub const RECV_STASH_ENTRIES: u32 = 16_384;
const _: () = assert!(RECV_STASH_ENTRIES.is_power_of_two());
/// Sockets whose peer address was seen at `connect`.
pub const PEERS_ENTRIES: u32 = 65_536;
/// Threads inside an OpenSSL read/write call (uprobe → uretprobe); an LRU map, so threads that
/// died inside a call age out.
pub const TLS_STASH_ENTRIES: u32 = 16_384;
/// HTTP/2 connections followed (see [`H2Conn`]); an LRU map, so connections the kernel never
/// saw close age out.
pub const H2_CONNS_ENTRIES: u32 = 16_384;
/// Slots of the per-process "has HTTP/2 connections" hint, by `tgid % H2_PROCS_ENTRIES` (a
/// power of two). A shared slot only costs the other process a hash lookup per syscall.
pub const H2_PROCS_ENTRIES: u32 = 4096;
const _: () = assert!(H2_PROCS_ENTRIES.is_power_of_two());
/// Goroutines inside Go's `crypto/tls.(*Conn).Read` (entry → return instruction). A server
/// goroutine waits inside `Read` for the next request on its connection, so this bounds the open
/// Go TLS connections followed at once; an LRU map, so the oldest waits age out.
pub const GO_TLS_STASH_ENTRIES: u32 = 16_384;
pub const COMM_LEN: usize = 16;

/// Names of the load-time globals in the eBPF object (set with `EbpfLoader::set_global`).
pub const GLOBAL_AGENT_TGID: &str = "AGENT_TGID";
pub const GLOBAL_CAPTURE_CAP: &str = "CAPTURE_CAP";
/// Map names, defined once for both sides.
pub const MAP_EVENTS: &str = "EVENTS";
pub const MAP_COUNTERS: &str = "COUNTERS";
pub const MAP_H2_CONNS: &str = "H2_CONNS";

/// Which way the bytes went, as seen by the process that made the syscall.
pub mod direction {
    /// The process sent the bytes: a request it makes as a client.
    pub const OUTBOUND: u8 = 0;
    /// The process received the bytes: a request it serves.
    pub const INBOUND: u8 = 1;
}

/// The syscall an event came from.
pub mod syscall {
    pub const WRITE: u8 = 0;
    pub const WRITEV: u8 = 1;
    pub const SENDTO: u8 = 2;
    pub const SENDMSG: u8 = 3;
    pub const READ: u8 = 4;
    pub const READV: u8 = 5;
    pub const RECVFROM: u8 = 6;
    pub const RECVMSG: u8 = 7;
    /// OpenSSL calls (uprobes), plaintext before encryption / after decryption. Events from
    /// them carry [`super::flags::TLS`].
    pub const SSL_WRITE: u8 = 8;
    pub const SSL_WRITE_EX: u8 = 9;
    pub const SSL_READ: u8 = 10;
    pub const SSL_READ_EX: u8 = 11;
    /// Not a request: a process called execve (`sched_process_exec`); header only, no payload.
    /// The agent checks the new executable for TLS functions to probe (e.g. Node's OpenSSL).
    pub const EXEC: u8 = 12;
    /// Go `crypto/tls.(*Conn).Write` and `(*Conn).Read` (uprobes, register ABI): plaintext,
    /// with [`super::flags::TLS`].
    pub const GO_TLS_WRITE: u8 = 13;
    pub const GO_TLS_READ: u8 = 14;
    /// Not an event id: the attach cookie of the uprobes on the `RET`s of Go's `(*Conn).Read`
    /// (the Go program tells its three kinds of probe apart by cookie).
    pub const GO_TLS_READ_RETURN_COOKIE: u64 = 0x100 | GO_TLS_READ as u64;
}

/// Bits of [`EventHeader::flags`].
pub mod flags {
    /// The syscall carried more iovecs than [`super::MAX_IOVECS`]; the rest were not read.
    pub const IOVECS_SKIPPED: u8 = 1 << 0;
    /// Reading one of the iovecs failed; the capture stops before it.
    pub const READ_FAILED: u8 = 1 << 1;
    /// Plaintext taken inside a TLS library (the `SSL_*` syscall ids), not at a syscall.
    pub const TLS: u8 = 1 << 2;
    /// Bytes of an HTTP/2 connection's request direction (frames, not an HTTP/1 request).
    pub const H2: u8 = 1 << 3;
    /// An earlier event of this HTTP/2 connection was lost (ring buffer full): the HPACK state
    /// cannot be trusted any more.
    pub const H2_GAP: u8 = 1 << 4;
    /// Bits that mean the capture is incomplete.
    pub const INCOMPLETE: u8 = IOVECS_SKIPPED | READ_FAILED;
}

/// Address family of [`EventHeader::peer_addr`] (`AF_*` values from the kernel ABI).
pub mod family {
    pub const UNKNOWN: u16 = 0;
    pub const INET: u16 = 2;
    pub const INET6: u16 = 10;
}

/// Header of every ring buffer record; `captured_len` bytes of payload follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// `bpf_ktime_get_ns`: CLOCK_MONOTONIC.
    pub timestamp_ns: u64,
    /// The syscall's full length (for receives: the bytes it returned).
    pub total_len: u64,
    /// Process id (the kernel's tgid).
    pub tgid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    pub fd: i32,
    /// Bytes of payload that follow this header (at most the capture cap).
    pub captured_len: u32,
    pub comm: [u8; COMM_LEN],
    /// IPv4 in the first 4 bytes, or IPv6; valid when `peer_family` is not `UNKNOWN`.
    pub peer_addr: [u8; 16],
    /// Host byte order.
    pub peer_port: u16,
    pub peer_family: u16,
    pub direction: u8,
    pub syscall: u8,
    pub flags: u8,
    pub _pad0: [u8; 1],
}

pub const EVENT_HEADER_LEN: usize = size_of::<EventHeader>();
const _: () = assert!(EVENT_HEADER_LEN == 72);
const _: () = assert!(EVENT_HEADER_LEN.is_multiple_of(8));

/// A full record as built in the per-CPU scratch buffer. The payload area is twice the cap so
/// that "offset masked to cap-1 plus length masked to cap-1" is provably in bounds.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EventBuf {
    pub header: EventHeader,
    pub data: [u8; 2 * CAPTURE_CAP_MAX],
}

const _: () = assert!(CAPTURE_CAP_MAX.is_power_of_two());
const _: () = assert!(
    RING_BUF_BYTES_DEFAULT.is_multiple_of(4096) && RING_BUF_BYTES_DEFAULT.is_power_of_two()
);

/// Peer of a connected socket, remembered at `connect`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u16,
    pub _pad0: [u8; 4],
}
const _: () = assert!(size_of::<Peer>() == 24);

/// Key of per-socket maps: a file descriptor of one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SocketKey {
    pub tgid: u32,
    pub fd: i32,
}
const _: () = assert!(size_of::<SocketKey>() == 8);

/// An HTTP/2 connection the kernel follows, keyed by [`SocketKey`]: which way its requests go
/// for this process (the client writes them, the server reads them), so only that direction is
/// captured.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct H2Conn {
    /// [`direction`] of the request bytes.
    pub direction: u8,
    /// 1 when the connection's plaintext comes from a TLS library probe.
    pub tls: u8,
    /// 1 after an event could not be written: the next one carries [`flags::H2_GAP`].
    pub gap: u8,
    /// 1 when the connection was joined mid-way (no preface seen).
    pub late: u8,
}
const _: () = assert!(size_of::<H2Conn>() == 4);

mod counter;
pub use counter::Counter;

#[cfg(feature = "user")]
mod user {
    use super::{EventHeader, H2Conn, Peer, SocketKey};
    // SAFETY: repr(C), four bytes, no padding (size asserted above).
    unsafe impl aya::Pod for H2Conn {}
    // SAFETY: repr(C), integers and byte arrays only, explicit padding (size asserted above).
    unsafe impl aya::Pod for EventHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Peer {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SocketKey {}
}
