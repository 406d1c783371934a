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
/// Connections that carry OTLP trace exports, whose request bytes are captured whole (see
/// [`ExportConn`]); an LRU map.
pub const EXPORT_CONNS_ENTRIES: u32 = 4096;
/// Slots of the per-process "has export connections" hint, by `tgid % EXPORT_PROCS_ENTRIES`.
pub const EXPORT_PROCS_ENTRIES: u32 = 4096;
const _: () = assert!(EXPORT_PROCS_ENTRIES.is_power_of_two());
/// Bytes an outbound HTTP/2 connection to a port other than OTLP/gRPC's is read whole from its
/// preface, while the agent finds out whether it carries `TraceService/Export` calls: enough
/// for a first export of a few hundred spans, which a short-lived process may never follow.
pub const EXPORT_PROBATION_BYTES: u32 = 1 << 20;
/// Default bound on the bytes of one send of an export connection that are captured
/// (`--span-intake-max-bytes`); the rest is skipped and counted.
pub const EXPORT_MAX_BYTES_DEFAULT: u32 = 4 << 20;
const _: () = assert!(H2_PROCS_ENTRIES.is_power_of_two());
/// Goroutines inside Go's `crypto/tls.(*Conn).Read` (entry → return instruction). A server
/// goroutine waits inside `Read` for the next request on its connection, so this bounds the open
/// Go TLS connections followed at once; an LRU map, so the oldest waits age out.
pub const GO_TLS_STASH_ENTRIES: u32 = 16_384;
pub const COMM_LEN: usize = 16;

/// The capture budget's window (`--max-capture-rate`, see [`CaptureBudget`]): 10 ms, so that a
/// burst is sampled within milliseconds and a budget of a few hundred per window is exact.
pub const CAPTURE_BUDGET_WINDOW_NS: u64 = 10_000_000;
/// Windows per second, to turn a rate into a per-window budget.
pub const CAPTURE_BUDGET_WINDOWS_PER_S: u32 = (1_000_000_000 / CAPTURE_BUDGET_WINDOW_NS) as u32;
/// Past its budget, a CPU still captures one HTTP/1 request in this many (the rest are counted
/// as `sampled_out`), so every process keeps being seen.
pub const SAMPLE_ONE_IN: u32 = 16;

/// One CPU's capture budget in the current window: HTTP/1 requests captured past
/// `CAPTURE_BUDGET` per window are sampled, one in [`SAMPLE_ONE_IN`]. HTTP/2 connections and
/// export streams, which need every byte, are never sampled.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CaptureBudget {
    pub window_start_ns: u64,
    /// Requests captured within the budget in this window.
    pub used: u32,
    /// Requests past the budget in this window (captured one in [`SAMPLE_ONE_IN`]).
    pub over: u32,
}
const _: () = assert!(size_of::<CaptureBudget>() == 16);

/// Names of the load-time globals in the eBPF object (set with `EbpfLoader::set_global`).
pub const GLOBAL_AGENT_TGID: &str = "AGENT_TGID";
pub const GLOBAL_CAPTURE_CAP: &str = "CAPTURE_CAP";
pub const GLOBAL_KERNEL_OFFSETS: &str = "KERNEL_OFFSETS";
/// HTTP/1 requests each CPU captures per [`CAPTURE_BUDGET_WINDOW_NS`] before sampling; 0: no
/// budget (`--max-capture-rate`).
pub const GLOBAL_CAPTURE_BUDGET: &str = "CAPTURE_BUDGET";
/// The floor programs (agent-ebpf floor.rs) and their raw tracepoints: attached by the bench
/// only, never by the agent.
pub const FLOOR_PROGRAMS: [(&str, &str); 2] = [
    ("tracegap_floor_enter", "sys_enter"),
    ("tracegap_floor_exit", "sys_exit"),
];
/// Map names, defined once for both sides.
pub const MAP_EVENTS: &str = "EVENTS";
pub const MAP_COUNTERS: &str = "COUNTERS";
pub const MAP_H2_CONNS: &str = "H2_CONNS";
pub const MAP_EXPORT_CONNS: &str = "EXPORT_CONNS";
pub const MAP_EXPORT_PROCS: &str = "EXPORT_PROCS";
/// Connections on probation the agent found to carry trace exports: read whole for good.
pub const MAP_EXPORT_KEEP: &str = "EXPORT_KEEP";
/// Bytes of one send of an export connection captured at most; 0 turns the wire intake off.
pub const GLOBAL_EXPORT_MAX_BYTES: &str = "EXPORT_MAX_BYTES";
/// The agent's own OTLP receiver ports (gRPC in the high half, HTTP in the low; 0 when off):
/// exports to them are the receiver's to read, not the wire intake's.
pub const GLOBAL_RECEIVER_PORTS: &str = "RECEIVER_PORTS";

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
    /// Not a request: a process called execve (`sched_process_exec`). The payload is a
    /// [`super::ProcessRecord`], the executable's path ([`super::EXEC_FILENAME_MAX`] bytes) and
    /// the new image's environment block. The agent learns who the process is from it, and
    /// checks the new executable for TLS functions to probe (e.g. Node's OpenSSL).
    pub const EXEC: u8 = 12;
    /// Go `crypto/tls.(*Conn).Write` and `(*Conn).Read` (uprobes, register ABI): plaintext,
    /// with [`super::flags::TLS`].
    pub const GO_TLS_WRITE: u8 = 13;
    pub const GO_TLS_READ: u8 = 14;
    /// Not a request: a process forked a new process (`sched_process_fork`, threads excluded).
    /// The header's tgid is the child; the payload is a [`super::ProcessRecord`] naming the
    /// parent, whose identity the child inherits until it execs.
    pub const FORK: u8 = 15;
    /// Not a request: a process ended (`sched_process_exit` of its main thread); header only.
    pub const EXIT: u8 = 16;
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
    /// An exec record whose path and environment were read (else: header only).
    pub const PROCESS_DETAILS: u8 = 1 << 5;
    /// A chunk of an export connection's request byte stream (OTLP trace exports, read whole):
    /// `total_len` is then the chunk's offset in the stream, so userspace sees every gap.
    pub const EXPORT_STREAM: u8 = 1 << 6;
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
// The capture path writes `peer_addr` as two u64 (agent-ebpf origin.rs, `set_peer`).
const _: () = assert!(core::mem::offset_of!(EventHeader, peer_addr).is_multiple_of(8));

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

/// Bytes of the executable's path kept in an exec record.
pub const EXEC_FILENAME_MAX: usize = 256;
/// Bytes of the new image's environment block kept in an exec record; a larger block is cut
/// here (the record says how large it was). A power of two, for the verifier's bound.
pub const EXEC_ENV_MAX: usize = 16384;
const _: () = assert!(EXEC_ENV_MAX.is_power_of_two());

/// What the kernel knows about a process at exec or fork, after the [`EventHeader`] of an
/// `EXEC` or `FORK` record. An exec record continues with [`EXEC_FILENAME_MAX`] bytes of path
/// (NUL-padded) and `env_len` bytes of environment block.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessRecord {
    /// `bpf_get_current_cgroup_id`: the cgroup v2 directory's inode number.
    pub cgroup_id: u64,
    /// The forking process (fork records); 0 in exec records.
    pub parent_tgid: u32,
    /// Bytes of the path, without its NUL; 0 when unknown.
    pub filename_len: u32,
    /// Environment bytes that follow the path.
    pub env_len: u32,
    /// The whole environment block's size (`mm->env_end - mm->env_start`): more than `env_len`
    /// means it was cut.
    pub env_total: u32,
}
pub const PROCESS_RECORD_LEN: usize = size_of::<ProcessRecord>();
const _: () = assert!(PROCESS_RECORD_LEN == 24);

/// A full exec record as built in its per-CPU scratch buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecBuf {
    pub header: EventHeader,
    pub process: ProcessRecord,
    pub filename: [u8; EXEC_FILENAME_MAX],
    pub env: [u8; EXEC_ENV_MAX],
}

/// Offsets of the kernel struct fields the process programs read, found by the agent in the
/// kernel's BTF (/sys/kernel/btf/vmlinux) and set at load time: Rust BPF programs have no CO-RE
/// relocations, and these layouts change between kernel builds. `valid` 0: no BTF, the
/// programs then send headers only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub valid: u32,
    /// `task_struct.mm`, `.pid`, `.tgid`.
    pub task_mm: u32,
    pub task_pid: u32,
    pub task_tgid: u32,
    /// `mm_struct.env_start`, `.env_end`.
    pub mm_env_start: u32,
    pub mm_env_end: u32,
    /// `linux_binprm.filename`.
    pub bprm_filename: u32,
    pub _pad0: u32,
}
const _: () = assert!(size_of::<KernelOffsets>() == 32);

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
// Read as two u64 from the start of a map value (agent-ebpf origin.rs, `set_peer`).
const _: () = assert!(core::mem::offset_of!(Peer, addr) == 0);

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

/// A connection that carries OTLP trace exports, keyed by [`SocketKey`]: every send on it is
/// captured whole (in chunks of the capture cap), each chunk with its offset in the stream.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExportConn {
    /// Bytes of the request stream sent since the connection was marked (captured or not).
    pub offset: u64,
    /// Bytes this connection is still read whole on probation (an HTTP/2 connection to a port
    /// other than OTLP/gRPC's, which may carry exports or not); 0: it carries exports. When
    /// probation runs out and the agent has not kept it ([`MAP_EXPORT_KEEP`]), the kernel
    /// follows it as an ordinary HTTP/2 connection.
    pub probation_left: u32,
    /// 1 when the connection's plaintext comes from a TLS library probe.
    pub tls: u8,
    /// 1 after bytes of unknown length were missed: the next chunk carries
    /// `flags::IOVECS_SKIPPED` (userspace can no longer place the stream's bytes).
    pub lost: u8,
    /// 1 for an HTTP/2 connection (marked at its preface): its chunks carry `flags::H2`.
    pub h2: u8,
    pub _pad0: [u8; 1],
}
const _: () = assert!(size_of::<ExportConn>() == 16);

mod counter;
pub use counter::Counter;

#[cfg(feature = "user")]
mod user {
    use super::{EventHeader, ExportConn, H2Conn, KernelOffsets, Peer, ProcessRecord, SocketKey};
    // SAFETY: repr(C), integers and explicit padding (size asserted above).
    unsafe impl aya::Pod for ExportConn {}
    // SAFETY: repr(C), u32s only, explicit padding (size asserted above).
    unsafe impl aya::Pod for KernelOffsets {}
    // SAFETY: repr(C), integers only, no implicit padding (size asserted above).
    unsafe impl aya::Pod for ProcessRecord {}
    // SAFETY: repr(C), four bytes, no padding (size asserted above).
    unsafe impl aya::Pod for H2Conn {}
    // SAFETY: repr(C), integers and byte arrays only, explicit padding (size asserted above).
    unsafe impl aya::Pod for EventHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Peer {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SocketKey {}
}
