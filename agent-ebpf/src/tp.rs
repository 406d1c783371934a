//! Reading syscall tracepoint contexts.
//!
//! Layout of `syscalls/sys_enter_*` (see /sys/kernel/tracing/events/syscalls/*/format): an 8-byte
//! `struct trace_entry`, `int __syscall_nr` padded to 8, then the arguments, 8 bytes each, from
//! offset 16. `sys_exit_*` has `long ret` at offset 16.

use aya_ebpf::{programs::TracePointContext, EbpfContext as _};

const ARGS_OFFSET: usize = 16;

/// Argument `index` of a `sys_enter_*` tracepoint.
#[inline(always)]
pub fn arg(ctx: &TracePointContext, index: usize) -> u64 {
    // SAFETY: the context is the tracepoint's record; direct 8-byte aligned reads inside it are
    // what the verifier allows for tracepoint programs (no helper call on the hot path).
    unsafe {
        core::ptr::read(
            ctx.as_ptr()
                .cast::<u8>()
                .add(ARGS_OFFSET + 8 * index)
                .cast::<u64>(),
        )
    }
}

/// Return value of a `sys_exit_*` tracepoint.
#[inline(always)]
pub fn ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: as in `arg`: `ret` sits at offset 16 of every sys_exit record.
    unsafe { core::ptr::read(ctx.as_ptr().cast::<u8>().add(ARGS_OFFSET).cast::<i64>()) }
}
