//! The arguments of the syscall a raw `sys_enter` tracepoint sees, read from the task's saved
//! registers (raw tracepoints get `struct pt_regs *`, not the argument array that
//! `syscalls/sys_enter_*` events fill).

use agent_common::Counter;
use aya_ebpf::{helpers::bpf_probe_read_kernel, programs::RawTracePointContext};

use crate::maps::count;

/// The tail of x86_64 `struct pt_regs` from `dx` (offset 96) to `cs` (offset 136): the first
/// three syscall arguments are in `di`, `si`, `dx`.
#[repr(C)]
#[derive(Clone, Copy)]
struct RegsTail {
    dx: u64,
    si: u64,
    di: u64,
    orig_ax: u64,
    ip: u64,
    cs: u64,
}
const PT_REGS_DX: u64 = 96;
const _: () = assert!(core::mem::size_of::<RegsTail>() == 48);
/// `__USER_CS`: a 64-bit syscall. 32-bit (compat) tasks enter with `__USER32_CS` and number
/// their syscalls differently (read is 3 there), so they are left alone.
const USER_CS_64: u64 = 0x33;

/// The first three arguments of the syscall being entered.
#[derive(Clone, Copy)]
pub struct Args(pub [u64; 3]);

impl Args {
    #[inline(always)]
    pub fn get(&self, index: usize) -> u64 {
        match index {
            0 => self.0[0],
            1 => self.0[1],
            _ => self.0[2],
        }
    }
}

impl Args {
    /// The arguments of the syscall `sys_enter(struct pt_regs *regs, long id)` is entering;
    /// `None` for a 32-bit (compat) task, an error when the registers cannot be read (counted).
    #[inline(always)]
    pub fn of_syscall(ctx: &RawTracePointContext) -> Result<Option<Self>, ()> {
        let regs: u64 = ctx.arg(0);
        // SAFETY: `regs` is the kernel's `struct pt_regs *` for this syscall (TP_PROTO of
        // sys_enter); the helper fails cleanly on a bad address.
        let Ok(tail) =
            (unsafe { bpf_probe_read_kernel((regs + PT_REGS_DX) as *const RegsTail) })
        else {
            count(Counter::ArgsUnreadable);
            return Err(());
        };
        if tail.cs != USER_CS_64 {
            return Ok(None);
        }
        Ok(Some(Self([tail.di, tail.si, tail.dx])))
    }
}
