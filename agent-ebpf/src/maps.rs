//! Every map and load-time global of the object, and the two helpers every program uses:
//! counting an event and telling the agent's own process apart.

use agent_common::{
    CaptureBudget, Counter, EventBuf, Peer, SocketKey, PEERS_ENTRIES, RING_BUF_BYTES_DEFAULT,
};
use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf},
    Global,
};

/// The agent's own process id, excluded in the kernel (set at load time).
#[unsafe(no_mangle)]
pub static AGENT_TGID: Global<u32> = Global::new(0);
/// Capture cap in bytes, at most `CAPTURE_CAP_MAX` (set at load time).
#[unsafe(no_mangle)]
pub static CAPTURE_CAP: Global<u32> = Global::new(agent_common::CAPTURE_CAP_DEFAULT);

/// HTTP/1 requests each CPU captures per budget window before sampling; 0: no budget (set at
/// load time from `--max-capture-rate`).
#[unsafe(no_mangle)]
pub static CAPTURE_BUDGET: Global<u32> = Global::new(0);

/// Each CPU's capture budget in the current window (see `agent_common::CaptureBudget`).
#[map]
pub static BUDGET: PerCpuArray<CaptureBudget> = PerCpuArray::with_max_entries(1, 0);

/// Captured requests: an `EventHeader` followed by `captured_len` bytes.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BUF_BYTES_DEFAULT, 0);

/// Indexed by [`Counter`].
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT as u32, 0);

/// Per-CPU space to build one record: too large for the 512-byte BPF stack.
#[map]
pub static SCRATCH: PerCpuArray<EventBuf> = PerCpuArray::with_max_entries(1, 0);

/// Peer address of each socket a process connected, forgotten at close.
#[map]
pub static PEERS: LruHashMap<SocketKey, Peer> = LruHashMap::with_max_entries(PEERS_ENTRIES, 0);

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter.index()) {
        // SAFETY: per-CPU slot. A uprobe can interrupt nothing here and tracepoint programs
        // run with preemption off, so a plain increment is not torn.
        unsafe { *value += 1 };
    }
}

/// The current process id (tgid), or `None` for the agent itself.
#[inline(always)]
pub fn current_tgid_unless_agent() -> Option<(u64, u32)> {
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == AGENT_TGID.load() {
        None
    } else {
        Some((pid_tgid, tgid))
    }
}

