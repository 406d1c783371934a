//! Send side: the buffer is filled when the syscall starts, so it is read at `sys_enter_*`.

use agent_common::{direction, syscall, MIN_REQUEST_LEN};
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::{
    capture::{capture, Source, Syscall},
    current_tgid_unless_agent,
    tp::arg,
};

/// `write(fd, buf, count)`: Go net/http.
#[tracepoint]
pub fn tracegap_enter_write(ctx: TracePointContext) -> u32 {
    let _ignored = try_send_buf(&ctx, syscall::WRITE);
    0
}

/// `sendto(fd, buf, len, flags, addr, addrlen)`: curl, Python's sendall.
#[tracepoint]
pub fn tracegap_enter_sendto(ctx: TracePointContext) -> u32 {
    let _ignored = try_send_buf(&ctx, syscall::SENDTO);
    0
}

/// `writev(fd, iov, iovcnt)`: Node.
#[tracepoint]
pub fn tracegap_enter_writev(ctx: TracePointContext) -> u32 {
    let _ignored = try_send_iov(&ctx, syscall::WRITEV, arg(&ctx, 1), arg(&ctx, 2));
    0
}

/// `sendmsg(fd, msg, flags)`.
#[tracepoint]
pub fn tracegap_enter_sendmsg(ctx: TracePointContext) -> u32 {
    let _ignored = try_send_msg(&ctx);
    0
}

#[inline(always)]
fn try_send_buf(ctx: &TracePointContext, kind: u8) -> Result<(), ()> {
    let len = arg(ctx, 2);
    if len < MIN_REQUEST_LEN {
        return Ok(());
    }
    let (pid_tgid, _) = current_tgid_unless_agent().ok_or(())?;
    let sys = Syscall {
        pid_tgid,
        fd: arg(ctx, 0) as i32,
        direction: direction::OUTBOUND,
        syscall: kind,
        len: Some(len),
    };
    capture(&sys, Source::Buf(arg(ctx, 1)))
}

#[inline(always)]
fn try_send_iov(ctx: &TracePointContext, kind: u8, iov: u64, count: u64) -> Result<(), ()> {
    if count == 0 {
        return Ok(());
    }
    let (pid_tgid, _) = current_tgid_unless_agent().ok_or(())?;
    let sys = Syscall {
        pid_tgid,
        fd: arg(ctx, 0) as i32,
        direction: direction::OUTBOUND,
        syscall: kind,
        len: None,
    };
    capture(&sys, Source::Iov { iov, count })
}

#[inline(always)]
fn try_send_msg(ctx: &TracePointContext) -> Result<(), ()> {
    let (iov, count) = crate::socket::msghdr_iov(arg(ctx, 1)).ok_or(())?;
    try_send_iov(ctx, syscall::SENDMSG, iov, count)
}
