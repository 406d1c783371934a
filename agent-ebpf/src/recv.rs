//! Receive side: the buffer is only filled when the syscall returns, so `sys_enter_*` stashes
//! where it is (in a per-thread slot) and `sys_exit_*` copies what the syscall returned (the
//! pattern Pixie uses). The slot is freed on every exit, errors included.

use agent_common::{counter, direction, syscall, MIN_REQUEST_LEN, RECV_STASH_ENTRIES};
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::{
    capture::{capture, Source, Syscall},
    count, current_tgid_unless_agent,
    tp::{arg, ret},
    RECV_STASH,
};

/// A receive syscall between its enter and exit tracepoints.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RecvArgs {
    /// The thread in the syscall; 0 when the slot is free.
    pid_tgid: u64,
    /// Buffer, or iovec array when `iovcnt` is not zero.
    ptr: u64,
    iovcnt: u64,
    fd: i32,
    syscall: u8,
    _pad0: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<RecvArgs>() == 32);

/// `read(fd, buf, count)`: most servers.
#[tracepoint]
pub fn tracegap_enter_read(ctx: TracePointContext) -> u32 {
    stash_buf(&ctx, syscall::READ);
    0
}

/// `recvfrom(fd, buf, len, flags, addr, addrlen)`: Python's socketserver.
#[tracepoint]
pub fn tracegap_enter_recvfrom(ctx: TracePointContext) -> u32 {
    stash_buf(&ctx, syscall::RECVFROM);
    0
}

/// `readv(fd, iov, iovcnt)`.
#[tracepoint]
pub fn tracegap_enter_readv(ctx: TracePointContext) -> u32 {
    stash(&ctx, syscall::READV, arg(&ctx, 1), arg(&ctx, 2));
    0
}

/// `recvmsg(fd, msg, flags)`.
#[tracepoint]
pub fn tracegap_enter_recvmsg(ctx: TracePointContext) -> u32 {
    if let Some((iov, iovcnt)) = crate::socket::msghdr_iov(arg(&ctx, 1)) {
        stash(&ctx, syscall::RECVMSG, iov, iovcnt);
    }
    0
}

#[tracepoint]
pub fn tracegap_exit_read(ctx: TracePointContext) -> u32 {
    let _ignored = try_exit(&ctx);
    0
}

#[tracepoint]
pub fn tracegap_exit_recvfrom(ctx: TracePointContext) -> u32 {
    let _ignored = try_exit(&ctx);
    0
}

#[tracepoint]
pub fn tracegap_exit_readv(ctx: TracePointContext) -> u32 {
    let _ignored = try_exit(&ctx);
    0
}

#[tracepoint]
pub fn tracegap_exit_recvmsg(ctx: TracePointContext) -> u32 {
    let _ignored = try_exit(&ctx);
    0
}

#[inline(always)]
fn stash_buf(ctx: &TracePointContext, kind: u8) {
    if arg(ctx, 2) < MIN_REQUEST_LEN {
        return;
    }
    stash(ctx, kind, arg(ctx, 1), 0);
}

/// The stash slot of a thread (RECV_STASH_ENTRIES is a power of two).
#[inline(always)]
fn slot(pid_tgid: u64) -> Option<*mut RecvArgs> {
    RECV_STASH.get_ptr_mut((pid_tgid as u32) & (RECV_STASH_ENTRIES - 1))
}

#[inline(always)]
fn stash(ctx: &TracePointContext, kind: u8, ptr: u64, iovcnt: u64) {
    let Some((pid_tgid, _)) = current_tgid_unless_agent() else {
        return;
    };
    let Some(slot) = slot(pid_tgid) else {
        return;
    };
    // SAFETY: a valid array slot; a thread is in one syscall at a time, and another thread
    // sharing the slot is detected by the pid_tgid check at exit.
    let slot = unsafe { &mut *slot };
    if slot.pid_tgid != 0 && slot.pid_tgid != pid_tgid {
        // Another thread with the same slot is inside a receive: its capture is lost.
        count(counter::STASH_FULL);
    }
    *slot = RecvArgs {
        pid_tgid,
        ptr,
        iovcnt,
        fd: arg(ctx, 0) as i32,
        syscall: kind,
        _pad0: [0; 3],
    };
}

#[inline(always)]
fn try_exit(ctx: &TracePointContext) -> Result<(), ()> {
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    let slot = slot(pid_tgid).ok_or(())?;
    // SAFETY: as in `stash`.
    let slot = unsafe { &mut *slot };
    if slot.pid_tgid != pid_tgid {
        return Ok(());
    }
    let args = *slot;
    slot.pid_tgid = 0;
    let returned = ret(ctx);
    if returned < MIN_REQUEST_LEN as i64 {
        return Ok(());
    }
    let sys = Syscall {
        pid_tgid,
        fd: args.fd,
        direction: direction::INBOUND,
        syscall: args.syscall,
        len: Some(returned as u64),
    };
    let src = if args.iovcnt == 0 {
        Source::Buf(args.ptr)
    } else {
        Source::Iov {
            iov: args.ptr,
            count: args.iovcnt,
        }
    };
    capture(&sys, src)
}
