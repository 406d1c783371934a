//! Receive side: the buffer is only filled when the syscall returns, so `sys_enter` stashes
//! where it is (in a per-thread slot) and `sys_exit` copies what the syscall returned (the
//! pattern Pixie uses). The slot is freed on every exit, errors included.

use agent_common::{direction, syscall, Counter, MIN_REQUEST_LEN, RECV_STASH_ENTRIES};
use aya_ebpf::{macros::map, maps::Array};

use crate::{
    args::Args,
    capture::capture,
    io::{Source, Syscall},
    h2,
    maps::{count, current_tgid_unless_agent},
    socket::msghdr_iov,
    tls::note_if_ciphertext,
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

/// Receive syscalls between enter and exit, in slot `tid % RECV_STASH_ENTRIES` (checked against
/// pid_tgid). An array, not a hash: every read on the host passes here, and an array lookup is
/// inlined by the verifier and takes no lock (a hash insert + lookup + delete cost ~600 ns).
#[map]
static RECV_STASH: Array<RecvArgs> = Array::with_max_entries(RECV_STASH_ENTRIES, 0);

/// `read(fd, buf, count)`: most servers.
#[inline(always)]
pub fn on_read(args: &Args) {
    stash_buf(args, syscall::READ);
}

/// `recvfrom(fd, buf, len, flags, addr, addrlen)`: Python's socketserver.
#[inline(always)]
pub fn on_recvfrom(args: &Args) {
    stash_buf(args, syscall::RECVFROM);
}

/// `readv(fd, iov, iovcnt)`.
#[inline(always)]
pub fn on_readv(args: &Args) {
    stash(args, syscall::READV, args.get(1), args.get(2));
}

/// `recvmsg(fd, msg, flags)`.
#[inline(always)]
pub fn on_recvmsg(args: &Args) {
    if let Some((iov, iovcnt)) = msghdr_iov(args.get(1)) {
        stash(args, syscall::RECVMSG, iov, iovcnt);
    }
}

/// Every syscall's exit: a thread's next exit after a stashed receive is that receive's.
#[inline(always)]
pub fn on_exit(ret: i64) {
    let _ignored = try_exit(ret);
}

#[inline(always)]
fn stash_buf(args: &Args, kind: u8) {
    stash(args, kind, args.get(1), 0);
}

/// The stash slot of a thread (RECV_STASH_ENTRIES is a power of two).
#[inline(always)]
fn slot(pid_tgid: u64) -> Option<*mut RecvArgs> {
    RECV_STASH.get_ptr_mut((pid_tgid as u32) & (RECV_STASH_ENTRIES - 1))
}

#[inline(always)]
fn stash(args: &Args, kind: u8, ptr: u64, iovcnt: u64) {
    let Some((pid_tgid, tgid)) = current_tgid_unless_agent() else {
        return;
    };
    // Short reads are only of interest on HTTP/2 connections (a Go server reads the 9-byte
    // frame header on its own). `iovcnt` 0 means a plain buffer of `args[2]` bytes.
    if iovcnt == 0 && args.get(2) < MIN_REQUEST_LEN && !h2::process_has_h2(tgid) {
        return;
    }
    let Some(slot) = slot(pid_tgid) else {
        return;
    };
    // SAFETY: a valid array slot; a thread is in one syscall at a time, and another thread
    // sharing the slot is detected by the pid_tgid check at exit.
    let slot = unsafe { &mut *slot };
    if slot.pid_tgid != 0 && slot.pid_tgid != pid_tgid {
        // Another thread with the same slot is inside a receive: its capture is lost.
        count(Counter::StashFull);
    }
    *slot = RecvArgs {
        pid_tgid,
        ptr,
        iovcnt,
        fd: args.get(0) as i32,
        syscall: kind,
        _pad0: [0; 3],
    };
}

#[inline(always)]
fn try_exit(returned: i64) -> Result<(), ()> {
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    let slot = slot(pid_tgid).ok_or(())?;
    // SAFETY: as in `stash`.
    let slot = unsafe { &mut *slot };
    if slot.pid_tgid != pid_tgid {
        return Ok(());
    }
    let args = *slot;
    slot.pid_tgid = 0;
    // Short reads too: `capture` keeps them only on HTTP/2 connections.
    if returned <= 0 {
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
    note_if_ciphertext(&sys, capture(&sys, src))
}
