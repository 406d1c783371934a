//! Where a hooked call's bytes are, and reading them: shared by every hook and by both capture
//! paths (`capture` for request heads, `export` for export streams).

use agent_common::{flags, syscall, CAPTURE_CAP_MAX};
use aya_ebpf::helpers::generated::bpf_probe_read_user;

/// Where the syscall's bytes are in user memory.
#[derive(Clone, Copy)]
pub enum Source {
    /// One buffer (`write`, `sendto`, `read`, `recvfrom`).
    Buf(u64),
    /// An array of `struct iovec { void *iov_base; size_t iov_len; }` (`writev`, `sendmsg`, ...).
    Iov { iov: u64, count: u64 },
}

/// What the hook knows about the syscall.
pub struct Syscall {
    pub pid_tgid: u64,
    pub fd: i32,
    pub direction: u8,
    pub syscall: u8,
    /// Bytes valid in the buffers: the length argument of a send, the return value of a
    /// receive; `None` for iovec sends, whose length is the sum of the iovecs.
    pub len: Option<u64>,
}

/// Clamps a length to `CAPTURE_CAP_MAX` in a way the verifier sees: the volatile read hides the
/// value from LLVM, so the comparison is not optimised away even where LLVM can prove it, and
/// the verifier learns the bound from the branch. Without it: "R2 unbounded memory access".
#[inline(always)]
pub fn clamp_to_cap(len: u64) -> u64 {
    // SAFETY: reading a local through a valid reference.
    let len = unsafe { core::ptr::read_volatile(&len) };
    if len > CAPTURE_CAP_MAX as u64 {
        CAPTURE_CAP_MAX as u64
    } else {
        len
    }
}

#[inline(always)]
pub fn read_user<T>(addr: u64) -> Option<T> {
    let mut value = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: the helper writes at most size_of::<T>() bytes into `value` and fails cleanly on
    // unmapped user memory.
    let ret = unsafe {
        bpf_probe_read_user(
            value.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u32,
            addr as *const _,
        )
    };
    // SAFETY: the helper filled `value` when it returned 0.
    (ret == 0).then(|| unsafe { value.assume_init() })
}

/// `flags::TLS` for events from the `SSL_*` probes and the Go `crypto/tls` probes.
#[inline(always)]
pub const fn tls_flag(kind: u8) -> u8 {
    if (kind >= syscall::SSL_WRITE && kind <= syscall::SSL_READ_EX)
        || kind == syscall::GO_TLS_WRITE
        || kind == syscall::GO_TLS_READ
    {
        flags::TLS
    } else {
        0
    }
}
