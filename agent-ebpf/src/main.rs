//! tracegap's kernel side: syscall tracepoints that copy the first bytes of HTTP requests that
//! processes send and receive into a ring buffer.
//!
//! kprobes and fentry are unavailable on the target kernels (shared/EBPF-TOOLCHAIN.md), so data
//! is taken at the raw `sys_enter`/`sys_exit` tracepoints (see tp.rs) and in TLS libraries.
#![no_std]
#![no_main]

mod capture;
mod gotls;
mod h2;
mod recv;
mod send;
mod socket;
mod tls;
mod tp;

use agent_common::{
    counter, EventBuf, H2Conn, Peer, SocketKey, H2_CONNS_ENTRIES, H2_PROCS_ENTRIES, PEERS_ENTRIES,
    RECV_STASH_ENTRIES, RING_BUF_BYTES_DEFAULT, TLS_STASH_ENTRIES,
};
use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    Global,
};

/// The agent's own process id, excluded in the kernel (set at load time).
#[unsafe(no_mangle)]
static AGENT_TGID: Global<u32> = Global::new(0);
/// Capture cap in bytes, at most `CAPTURE_CAP_MAX` (set at load time).
#[unsafe(no_mangle)]
static CAPTURE_CAP: Global<u32> = Global::new(agent_common::CAPTURE_CAP_DEFAULT);

/// Captured requests: an `EventHeader` followed by `captured_len` bytes.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BUF_BYTES_DEFAULT, 0);

/// Indexed by `agent_common::counter::*`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Per-CPU space to build one record: too large for the 512-byte BPF stack.
#[map]
static SCRATCH: PerCpuArray<EventBuf> = PerCpuArray::with_max_entries(1, 0);

/// Receive syscalls between enter and exit, in slot `tid % RECV_STASH_ENTRIES` (checked against
/// pid_tgid). An array, not a hash: every read on the host passes here, and an array lookup is
/// inlined by the verifier and takes no lock (a hash insert + lookup + delete cost ~600 ns).
#[map]
static RECV_STASH: Array<recv::RecvArgs> = Array::with_max_entries(RECV_STASH_ENTRIES, 0);

/// OpenSSL calls between uprobe and uretprobe, keyed by pid_tgid (see tls.rs).
#[map]
static TLS_STASH: LruHashMap<u64, tls::TlsCall> =
    LruHashMap::with_max_entries(TLS_STASH_ENTRIES, 0);

/// Peer address of each socket a process connected, forgotten at close.
#[map]
static PEERS: LruHashMap<SocketKey, Peer> = LruHashMap::with_max_entries(PEERS_ENTRIES, 0);

/// HTTP/2 connections followed (see h2.rs); userspace removes entries it finds are not HTTP/2.
#[map]
static H2_CONNS: LruHashMap<SocketKey, H2Conn> = LruHashMap::with_max_entries(H2_CONNS_ENTRIES, 0);

/// tgid of a process with HTTP/2 connections, in slot `tgid % H2_PROCS_ENTRIES`.
#[map]
static H2_PROCS: Array<u32> = Array::with_max_entries(H2_PROCS_ENTRIES, 0);

#[inline(always)]
fn count(index: u32) {
    if let Some(value) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot. A uprobe can interrupt nothing here and tracepoint programs
        // run with preemption off, so a plain increment is not torn.
        unsafe { *value += 1 };
    }
}

/// The current process id (tgid), or `None` for the agent itself.
#[inline(always)]
fn current_tgid_unless_agent() -> Option<(u64, u32)> {
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == AGENT_TGID.load() {
        None
    } else {
        Some((pid_tgid, tgid))
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable: the verifier refuses programs with a reachable panic path.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
