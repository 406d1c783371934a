//! The floor the bench measures tracegap against: programs on the same raw tracepoints,
//! `sys_enter` and `sys_exit`, that return at once. What they add to a syscall is what any raw
//! syscall tracepoint costs on this kernel (the tracepoint's static branch, the BPF dispatch,
//! RCU), so `cargo xtask bench` reports each per-syscall figure as floor + tracegap's own work.
//! Only the bench attaches them (`tracegap-bench floor`); the agent never does.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn tracegap_floor_enter(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn tracegap_floor_exit(_ctx: RawTracePointContext) -> i32 {
    0
}
