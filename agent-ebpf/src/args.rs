//! The arguments of the syscall a `sys_enter` tracepoint sees, loaded from the task's saved
//! registers (the tracepoint gets `struct pt_regs *`, not the argument array that
//! `syscalls/sys_enter_*` events fill).
//!
//! The programs are BTF tracepoints (`tp_btf`), so the verifier knows `regs` is a
//! `struct pt_regs *` and lets them load its fields directly (a plain load, guarded by the JIT's
//! exception table) instead of calling `bpf_probe_read_kernel`, which cost ~15 ns per hooked
//! syscall here (a helper call, `copy_from_kernel_nofault` and its range checks). Each load must
//! hit a field of `struct pt_regs` at its offset and width, or the program does not load.

/// Offsets in x86_64 `struct pt_regs` (arch/x86/include/asm/ptrace.h): fixed by the entry
/// code's register save layout, the same on every x86_64 kernel.
mod offset {
    pub const DX: usize = 96;
    pub const SI: usize = 104;
    pub const DI: usize = 112;
    pub const ORIG_AX: usize = 120;
    /// `u16 cs` (a union with `u64 csx` and FRED's `fred_cs` since 6.9): the low 16 bits.
    pub const CS: usize = 136;
}

/// `__USER_CS`: a 64-bit syscall. 32-bit (compat) tasks enter with `__USER32_CS` and number
/// their syscalls differently (read is 3 there), so they are left alone.
const USER_CS_64: u16 = 0x33;

/// Loads the field at `offset` of the `struct pt_regs` at `regs`.
///
/// # Safety
/// `regs` must be the tracepoint's `struct pt_regs *` argument and `offset` one of [`offset`]:
/// the verifier checks both (a BTF-typed pointer, a field of that width at that offset).
#[inline(always)]
unsafe fn load<T: Copy>(regs: u64, offset: usize) -> T {
    // SAFETY: see above; a faulting load is caught by the JIT's exception table (reads 0).
    unsafe { core::ptr::read((regs as *const u8).add(offset).cast::<T>()) }
}

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

    /// The arguments of the syscall `sys_enter(struct pt_regs *regs, long id)` is entering;
    /// `None` for a 32-bit (compat) task.
    #[inline(always)]
    pub fn of_syscall(regs: u64) -> Option<Self> {
        // SAFETY: `regs` is sys_enter's `struct pt_regs *` (TP_PROTO), offsets from `offset`.
        unsafe {
            if load::<u16>(regs, offset::CS) != USER_CS_64 {
                return None;
            }
            Some(Self([
                load(regs, offset::DI),
                load(regs, offset::SI),
                load(regs, offset::DX),
            ]))
        }
    }
}

/// The number of the syscall `sys_exit(struct pt_regs *regs, long ret)` is leaving (`orig_ax`:
/// `ax` holds the return value by then).
#[inline(always)]
pub fn exiting_syscall(regs: u64) -> i64 {
    // SAFETY: `regs` is sys_exit's `struct pt_regs *` (TP_PROTO), offset from `offset`.
    unsafe { load(regs, offset::ORIG_AX) }
}
