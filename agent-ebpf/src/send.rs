//! Send side: the buffer is filled when the syscall starts, so it is read at `sys_enter`.

use agent_common::{direction, syscall};

use crate::{
    args::Args,
    capture::{capture, Source, Syscall},
    maps::current_tgid_unless_agent,
    socket::msghdr_iov,
    tls::note_if_ciphertext,
};

/// `write(fd, buf, count)`: Go net/http.
#[inline(always)]
pub fn on_write(args: &Args) {
    let _ignored = try_send_buf(args, syscall::WRITE);
}

/// `sendto(fd, buf, len, flags, addr, addrlen)`: curl, Python's sendall.
#[inline(always)]
pub fn on_sendto(args: &Args) {
    let _ignored = try_send_buf(args, syscall::SENDTO);
}

/// `writev(fd, iov, iovcnt)`: Node.
#[inline(always)]
pub fn on_writev(args: &Args) {
    let _ignored = try_send_iov(args, syscall::WRITEV, args.get(1), args.get(2));
}

/// `sendmsg(fd, msg, flags)`.
#[inline(always)]
pub fn on_sendmsg(args: &Args) {
    if let Some((iov, count)) = msghdr_iov(args.get(1)) {
        let _ignored = try_send_iov(args, syscall::SENDMSG, iov, count);
    }
}

#[inline(always)]
fn try_send_buf(args: &Args, kind: u8) -> Result<(), ()> {
    let len = args.get(2);
    // Short sends too: `capture` keeps them only on HTTP/2 connections.
    let (pid_tgid, _) = current_tgid_unless_agent().ok_or(())?;
    let sys = Syscall {
        pid_tgid,
        fd: args.get(0) as i32,
        direction: direction::OUTBOUND,
        syscall: kind,
        len: Some(len),
    };
    note_if_ciphertext(&sys, capture(&sys, Source::Buf(args.get(1))))
}

#[inline(always)]
fn try_send_iov(args: &Args, kind: u8, iov: u64, count: u64) -> Result<(), ()> {
    if count == 0 {
        return Ok(());
    }
    let (pid_tgid, _) = current_tgid_unless_agent().ok_or(())?;
    let sys = Syscall {
        pid_tgid,
        fd: args.get(0) as i32,
        direction: direction::OUTBOUND,
        syscall: kind,
        len: None,
    };
    note_if_ciphertext(&sys, capture(&sys, Source::Iov { iov, count }))
}
