//! Go TLS plaintext: uprobes on `crypto/tls.(*Conn).Write` and `crypto/tls.(*Conn).Read` in Go
//! executables (Go links its own TLS stack statically; no OpenSSL).
//!
//! Go ≥ 1.17 on amd64 passes arguments and results in registers (the internal register ABI,
//! <https://go.googlesource.com/go/+/refs/tags/go1.19/src/cmd/compile/abi-internal.md>):
//! `func (c *Conn) Write(b []byte) (int, error)` enters with RAX = c, RBX = b's data pointer,
//! RCX = len(b); `Read` the same, and returns n in RAX. R14 holds the current goroutine (`g`).
//! The agent only attaches these to Go ≥ 1.17 binaries on x86_64 (agent/src/gotls.rs); the
//! `pt_regs` fields below are x86_64's, the only architecture this project builds on.
//!
//! Write is captured at entry (the bytes are all there). Read's bytes exist only when it returns,
//! and uretprobes crash Go programs (the return address they plant on the stack breaks when the
//! goroutine's stack is moved; shared/EBPF-TOOLCHAIN.md): the agent attaches
//! [`tracegap_go_tls`] to every `RET` instruction of `Read` instead. The call is stashed
//! at entry keyed by goroutine, not thread: a goroutine can enter on one thread and return on
//! another.

use agent_common::{direction, syscall, Counter, GO_TLS_STASH_ENTRIES};
use aya_ebpf::{
    helpers::generated::bpf_get_attach_cookie,
    macros::{map, uprobe},
    maps::LruHashMap,
    programs::ProbeContext,
    EbpfContext as _,
};

use crate::{
    capture::capture,
    io::{read_user, Source, Syscall},
    maps::{count, current_tgid_unless_agent},
};

/// A goroutine of a process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoroutineKey {
    tgid: u32,
    _pad0: u32,
    /// The `g` pointer (R14).
    goroutine: u64,
}
const _: () = assert!(core::mem::size_of::<GoroutineKey>() == 16);

/// A `(*Conn).Read` between its entry and one of its `RET`s.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoRead {
    conn: u64,
    buf: u64,
    /// `len(b)`: the most `Read` can return.
    len: u64,
}
const _: () = assert!(core::mem::size_of::<GoRead>() == 24);

#[map]
static GO_TLS_READS: LruHashMap<GoroutineKey, GoRead> =
    LruHashMap::with_max_entries(GO_TLS_STASH_ENTRIES, 0);

/// Attached to the entry of `crypto/tls.(*Conn).Write` (cookie `GO_TLS_WRITE`), the entry of
/// `(*Conn).Read` (`GO_TLS_READ`) and each `RET` of `Read` (`GO_TLS_READ_RETURN_COOKIE`): one
/// program, so that one `uprobe_multi` link per executable carries them all.
#[uprobe]
pub fn tracegap_go_tls(ctx: ProbeContext) -> u32 {
    // SAFETY: the helper only reads the cookie of the running program's link.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let _ignored = match cookie {
        c if c == u64::from(syscall::GO_TLS_WRITE) => try_write(&ctx),
        c if c == u64::from(syscall::GO_TLS_READ) => try_read_entry(&ctx),
        syscall::GO_TLS_READ_RETURN_COOKIE => try_read_ret(&ctx),
        _ => Err(()),
    };
    0
}

/// The registers at the probe: `ctx.regs` points at the task's saved user registers.
#[inline(always)]
fn regs(ctx: &ProbeContext) -> &aya_ebpf::bindings::pt_regs {
    // SAFETY: the kernel hands uprobe programs a valid pt_regs as their context; the verifier
    // checks every field access against the context size.
    unsafe { &*ctx.regs }
}

#[inline(always)]
fn try_write(ctx: &ProbeContext) -> Result<(), ()> {
    let (pid_tgid, _) = current_tgid_unless_agent().ok_or(())?;
    let regs = regs(ctx);
    let (conn, buf, len) = (regs.rax, regs.rbx, regs.rcx);
    // Short writes too: on an HTTP/2 connection a frame can be short; `capture` drops them on
    // other connections.
    if len == 0 {
        return Ok(());
    }
    let sys = Syscall {
        pid_tgid,
        fd: conn_fd(conn),
        direction: direction::OUTBOUND,
        syscall: syscall::GO_TLS_WRITE,
        len: Some(len),
    };
    capture(&sys, Source::Buf(buf)).map(|_| ())
}

#[inline(always)]
fn try_read_entry(ctx: &ProbeContext) -> Result<(), ()> {
    let (_, tgid) = current_tgid_unless_agent().ok_or(())?;
    let regs = regs(ctx);
    let key = GoroutineKey {
        tgid,
        _pad0: 0,
        goroutine: regs.r14,
    };
    let call = GoRead {
        conn: regs.rax,
        buf: regs.rbx,
        len: regs.rcx,
    };
    // Every call is stashed, short buffers included, so that the return always finds (and
    // removes) the entry of this call and never a stale one of an earlier call.
    if GO_TLS_READS.insert(&key, &call, 0).is_err() {
        count(Counter::StashFull);
        return Err(());
    }
    Ok(())
}

#[inline(always)]
fn try_read_ret(ctx: &ProbeContext) -> Result<(), ()> {
    let (pid_tgid, tgid) = current_tgid_unless_agent().ok_or(())?;
    let regs = regs(ctx);
    let key = GoroutineKey {
        tgid,
        _pad0: 0,
        goroutine: regs.r14,
    };
    // SAFETY: the value is copied out before the entry is removed.
    let Some(&call) = (unsafe { GO_TLS_READS.get(&key) }) else {
        // The call began before the probe was attached (a server goroutine already waiting in
        // `Read`), or the LRU map evicted the entry.
        count(Counter::TlsReturnUnmatched);
        return Err(());
    };
    let _ignored = GO_TLS_READS.remove(&key);
    // n in RAX (an `int`: negative never happens, but the register is not trusted).
    let n = regs.rax as i64;
    // Short reads too: Go's HTTP/2 server reads each 9-byte frame header on its own.
    if n <= 0 {
        return Ok(());
    }
    // Never more than the buffer the caller passed.
    let len = if n as u64 > call.len {
        call.len
    } else {
        n as u64
    };
    let sys = Syscall {
        pid_tgid,
        fd: conn_fd(call.conn),
        direction: direction::INBOUND,
        syscall: syscall::GO_TLS_READ,
        len: Some(len),
    };
    capture(&sys, Source::Buf(call.buf)).map(|_| ())
}

/// The socket of a `*tls.Conn`, or -1. Layout (checked with `unsafe.Offsetof`/reflect on Go
/// 1.19.8; unchanged since Go 1.12 in these fields):
/// - `tls.Conn.conn net.Conn` at +0: an interface, (itab, data); data at +8.
/// - data is a `*net.TCPConn` for connections Go dialed or accepted itself (net/http's client
///   and server): `TCPConn{conn{fd *netFD}}`, so the `*netFD` is at +0.
/// - `netFD.pfd poll.FD` at +0; `poll.FD{fdmu fdMutex (16 bytes); Sysfd int}`: Sysfd at +16.
///
/// A `tls.Conn` over another `net.Conn` (a wrapper, a pipe) reads other memory here: the value
/// is only used to look the peer up in the process's own sockets, and an implausible value
/// gives -1 (peer unknown), as does any failed read.
#[inline(always)]
fn conn_fd(conn: u64) -> i32 {
    match sysfd(conn) {
        Some(fd) => fd,
        None => {
            count(Counter::GoTlsFdUnknown);
            -1
        }
    }
}

#[inline(always)]
fn sysfd(conn: u64) -> Option<i32> {
    let data = read_user::<u64>(conn.wrapping_add(8))?;
    let netfd = read_user::<u64>(data)?;
    let sysfd = read_user::<i64>(netfd.wrapping_add(16))?;
    (0..=i64::from(i32::MAX))
        .contains(&sysfd)
        .then_some(sysfd as i32)
}
