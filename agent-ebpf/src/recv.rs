//! Receive side: the buffer is only filled when the syscall returns, so `sys_enter_*` stashes
//! where it is (keyed by pid_tgid) and `sys_exit_*` copies what the syscall returned (the
//! pattern Pixie uses). The stash is cleaned on every exit, errors included.

use agent_common::{counter, direction, syscall, MIN_REQUEST_LEN};
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
    /// Buffer, or iovec array when `iovcnt` is not zero.
    ptr: u64,
    iovcnt: u64,
    fd: i32,
    syscall: u8,
    _pad0: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<RecvArgs>() == 24);

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

#[inline(always)]
fn stash(ctx: &TracePointContext, kind: u8, ptr: u64, iovcnt: u64) {
    let Some((pid_tgid, _)) = current_tgid_unless_agent() else {
        return;
    };
    let args = RecvArgs {
        ptr,
        iovcnt,
        fd: arg(ctx, 0) as i32,
        syscall: kind,
        _pad0: [0; 3],
    };
    if RECV_STASH.insert(pid_tgid, args, 0).is_err() {
        count(counter::STASH_FULL);
    }
}

#[inline(always)]
fn try_exit(ctx: &TracePointContext) -> Result<(), ()> {
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let args = *unsafe { RECV_STASH.get(pid_tgid) }.ok_or(())?;
    let _ignored = RECV_STASH.remove(pid_tgid);
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
