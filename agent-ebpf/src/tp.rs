//! The two raw syscall tracepoints, `raw_syscalls:sys_enter` and `sys_exit`, and the dispatch
//! to the hooks of the syscalls tracegap follows.
//!
//! Attached as BTF tracepoints (`tp_btf`, `BPF_TRACE_RAW_TP`): the same raw tracepoint and the
//! same cost to reach the program, but the verifier knows the arguments' types, so the saved
//! registers are loaded directly (args.rs) rather than through `bpf_probe_read_kernel`.
//!
//! Why raw tracepoints and not `syscalls/sys_{enter,exit}_*`: each perf-event tracepoint link
//! costs the kernel a full RCU-tasks grace period when it is removed (~80 ms, serialised under
//! `event_mutex`), so fifteen of them made the agent take ~2 s to detach; a raw tracepoint link
//! is released without waiting. A raw tracepoint also skips the perf trace buffer that every
//! `syscalls/*` event fills before the program runs (~200 ns per hooked syscall here). In
//! return the programs see every syscall and must pick theirs by number, and read the
//! arguments from the task's saved registers.

use agent_common::syscall;
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::{
    args::{exiting_syscall, Args},
    recv, send, socket,
};

/// x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).
mod nr {
    pub const READ: i64 = 0;
    pub const WRITE: i64 = 1;
    pub const CLOSE: i64 = 3;
    pub const READV: i64 = 19;
    pub const WRITEV: i64 = 20;
    pub const CONNECT: i64 = 42;
    pub const SENDTO: i64 = 44;
    pub const RECVFROM: i64 = 45;
    pub const SENDMSG: i64 = 46;
    pub const RECVMSG: i64 = 47;
}

/// `sys_enter(struct pt_regs *regs, long id)`.
#[btf_tracepoint(function = "sys_enter")]
pub fn tracegap_sys_enter(ctx: BtfTracePointContext) -> i32 {
    let id: i64 = ctx.arg(1);
    // Most syscalls leave here, after one compare chain and no memory access.
    if !matches!(
        id,
        nr::READ
            | nr::WRITE
            | nr::CLOSE
            | nr::READV
            | nr::WRITEV
            | nr::CONNECT
            | nr::SENDTO
            | nr::RECVFROM
            | nr::SENDMSG
            | nr::RECVMSG
    ) {
        return 0;
    }
    let Some(args) = Args::of_syscall(ctx.arg(0)) else {
        return 0;
    };
    // One send path for the four send syscalls (see send.rs).
    let send = match id {
        nr::WRITE => Some(syscall::WRITE),
        nr::SENDTO => Some(syscall::SENDTO),
        nr::WRITEV => Some(syscall::WRITEV),
        nr::SENDMSG => Some(syscall::SENDMSG),
        _ => None,
    };
    if let Some(kind) = send {
        send::on_send(kind, &args);
        return 0;
    }
    match id {
        nr::READ => recv::on_read(&args),
        nr::RECVFROM => recv::on_recvfrom(&args),
        nr::READV => recv::on_readv(&args),
        nr::RECVMSG => recv::on_recvmsg(&args),
        nr::CONNECT => socket::on_connect(&args),
        nr::CLOSE => socket::on_close(&args),
        _ => {}
    }
    0
}

/// `sys_exit(struct pt_regs *regs, long ret)`: only receives have work here (they left a stash
/// slot for the thread at enter); every other syscall leaves after one load and compare chain.
#[btf_tracepoint(function = "sys_exit")]
pub fn tracegap_sys_exit(ctx: BtfTracePointContext) -> i32 {
    if matches!(
        exiting_syscall(ctx.arg(0)),
        nr::READ | nr::RECVFROM | nr::READV | nr::RECVMSG
    ) {
        let ret: i64 = ctx.arg(1);
        recv::on_exit(ret);
    }
    0
}
