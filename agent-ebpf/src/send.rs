//! Send side: the buffer is filled when the syscall starts, so it is read at `sys_enter`.

use agent_common::{direction, syscall};

use crate::{
    args::Args,
    capture::capture,
    io::{Source, Syscall},
    maps::current_tgid_unless_agent,
    socket::msghdr_iov,
    tls::note_if_ciphertext,
};

/// Every send syscall: `write(fd, buf, count)` (Go net/http), `sendto(fd, buf, len, ...)`
/// (curl, Python's sendall), `writev(fd, iov, iovcnt)` (Node), `sendmsg(fd, msg, flags)`.
/// One call site of the capture path for all four: inlined once per hook, it kept `sys_enter`
/// within the verifier's budget once the export path (export.rs) joined it.
#[inline(always)]
pub fn on_send(kind: u8, args: &Args) {
    let _ignored = try_send(kind, args);
}

#[inline(always)]
fn try_send(kind: u8, args: &Args) -> Result<(), ()> {
    let (pid_tgid, _) = current_tgid_unless_agent().ok_or(())?;
    // Short sends too: `capture` keeps them only on HTTP/2 and export connections.
    let (src, len) = match kind {
        syscall::WRITE | syscall::SENDTO => (Source::Buf(args.get(1)), Some(args.get(2))),
        syscall::WRITEV => (
            Source::Iov {
                iov: args.get(1),
                count: args.get(2),
            },
            None,
        ),
        _ => {
            let (iov, count) = msghdr_iov(args.get(1)).ok_or(())?;
            (Source::Iov { iov, count }, None)
        }
    };
    if matches!(src, Source::Iov { count: 0, .. }) {
        return Ok(());
    }
    let sys = Syscall {
        pid_tgid,
        fd: args.get(0) as i32,
        direction: direction::OUTBOUND,
        syscall: kind,
        len,
    };
    note_if_ciphertext(&sys, capture(&sys, src))
}
