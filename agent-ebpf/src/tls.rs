//! TLS plaintext: uprobes on OpenSSL's `SSL_write`/`SSL_write_ex`/`SSL_read`/`SSL_read_ex`
//! (shared libssl, or executables that link OpenSSL statically and export them, e.g. Node).
//!
//! Every call is stashed at entry (keyed by pid_tgid) and captured at return, judged by the
//! return value: Node calls `SSL_write` several times with the same buffer while the handshake
//! is unfinished, the early calls returning -1 (shared/EBPF-TOOLCHAIN.md), so an entry-only
//! probe would count duplicates. Uretprobes are safe on C code (only Go's moving stacks break
//! them). The bytes then take the same path as the syscall hooks: the same 8-byte HTTP filter,
//! the same ring buffer, with the `SSL_*` syscall ids and `flags::TLS`.
//!
//! Socket fd: OpenSSL keeps it in version-specific structs, so it is not read from the `SSL`.
//! Instead, while a thread is inside a call, the syscall hooks that already read the first 8
//! bytes of every send/receive note the fd when those bytes are a TLS application-data record
//! (`17 03`) and the thread has a stash entry ([`note_ciphertext`]): a hash lookup only for TLS
//! records, nothing for other traffic. With a socket BIO (curl, Python) the ciphertext goes out
//! inside `SSL_write`, so the fd (and the peer remembered at `connect`) is known; with a memory
//! BIO (Node) the socket write happens after the call returns and the fd stays -1.

use agent_common::{direction, syscall, Counter, TLS_STASH_ENTRIES};
use aya_ebpf::{
    helpers::generated::bpf_get_attach_cookie,
    macros::{map, uprobe, uretprobe},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
    EbpfContext as _,
};
use aya_log_ebpf::warn;

use crate::{
    capture::{capture, Seen},
    io::{read_user, Source, Syscall},
    maps::{count, current_tgid_unless_agent},
};

/// An OpenSSL call between its uprobe and uretprobe.
#[repr(C)]
#[derive(Clone, Copy)]
struct TlsCall {
    buf: u64,
    /// `num`: bytes to write, or the size of the read buffer.
    num: u64,
    /// `_ex` variants: where the byte count is written (`*written`, `*readbytes`); else 0.
    count_ptr: u64,
    /// The socket, when a syscall inside the call showed it (see the module comment).
    fd: i32,
    syscall: u8,
    _pad0: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<TlsCall>() == 32);

/// OpenSSL calls between uprobe and uretprobe, keyed by pid_tgid.
#[map]
static TLS_STASH: LruHashMap<u64, TlsCall> = LruHashMap::with_max_entries(TLS_STASH_ENTRIES, 0);

/// Entry of all four functions; the attach cookie is the function's `syscall::SSL_*` id:
/// `int SSL_write(SSL *ssl, const void *buf, int num)` (curl, Node),
/// `int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written)` (Python),
/// `int SSL_read(SSL *ssl, void *buf, int num)`,
/// `int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes)`.
/// One program for all four, so that one `uprobe_multi` link per file covers them (see the
/// agent's uprobe_multi.rs for why links are few).
#[uprobe]
pub fn tracegap_ssl_enter(ctx: ProbeContext) -> u32 {
    // SAFETY: the context pointer is the program's own.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let kind = cookie as u8;
    if u64::from(kind) == cookie && (syscall::SSL_WRITE..=syscall::SSL_READ_EX).contains(&kind) {
        let _ignored = try_enter(&ctx, kind);
    }
    0
}

/// Attached to the return of all four functions: the stash says which one returned.
#[uretprobe]
pub fn tracegap_ssl_ret(ctx: RetProbeContext) -> u32 {
    let _ignored = try_ret(&ctx);
    0
}

const fn is_ex(kind: u8) -> bool {
    kind == syscall::SSL_WRITE_EX || kind == syscall::SSL_READ_EX
}

const fn is_write(kind: u8) -> bool {
    kind == syscall::SSL_WRITE || kind == syscall::SSL_WRITE_EX
}

#[inline(always)]
fn try_enter(ctx: &ProbeContext, kind: u8) -> Result<(), ()> {
    let (pid_tgid, _) = current_tgid_unless_agent().ok_or(())?;
    let (Some(buf), Some(num), Some(count_ptr)) = (
        ctx.arg::<u64>(1),
        if is_ex(kind) {
            ctx.arg::<u64>(2)
        } else {
            // An `int`: the upper half of the register is not defined; a negative one writes
            // or reads nothing.
            ctx.arg::<i32>(2).map(|n| if n < 0 { 0 } else { n as u64 })
        },
        if is_ex(kind) { ctx.arg::<u64>(3) } else { Some(0) },
    ) else {
        count(Counter::ArgsUnreadable);
        return Err(());
    };
    // Every call is stashed, empty ones and short ones included (on an HTTP/2 connection a
    // frame can be short; `capture` drops short calls elsewhere), so that a return without an
    // entry always means a call this program did not see begin (counted at the return).
    let call = TlsCall {
        buf,
        num,
        count_ptr,
        fd: -1,
        syscall: kind,
        _pad0: [0; 3],
    };
    if TLS_STASH.insert(pid_tgid, call, 0).is_err() {
        count(Counter::StashFull);
        // Rare: an LRU map refuses an insert only under memory pressure.
        warn!(ctx, "TLS call not followed: stash insert failed");
        return Err(());
    }
    Ok(())
}

#[inline(always)]
fn try_ret(ctx: &RetProbeContext) -> Result<(), ()> {
    let (pid_tgid, _) = current_tgid_unless_agent().ok_or(())?;
    // SAFETY: the value is copied out before the entry is removed.
    let Some(&call) = (unsafe { TLS_STASH.get(pid_tgid) }) else {
        // Entered before the probe was attached, or the LRU map evicted the entry.
        count(Counter::TlsReturnUnmatched);
        return Err(());
    };
    let _ignored = TLS_STASH.remove(pid_tgid);
    // All four return an `int`.
    let returned: i32 = ctx.ret();
    let len = if call.count_ptr != 0 {
        // 1 on success, and the byte count in *written / *readbytes.
        if returned != 1 {
            return Ok(());
        }
        let Some(n) = read_user::<u64>(call.count_ptr) else {
            count(Counter::ReadFailed);
            return Err(());
        };
        n
    } else {
        if returned <= 0 {
            return Ok(());
        }
        returned as u64
    };
    // Never more than the buffer the caller passed.
    let len = if len > call.num { call.num } else { len };
    if len == 0 {
        return Ok(());
    }
    let sys = Syscall {
        pid_tgid,
        fd: call.fd,
        direction: if is_write(call.syscall) {
            direction::OUTBOUND
        } else {
            direction::INBOUND
        },
        syscall: call.syscall,
        len: Some(len),
    };
    capture(&sys, Source::Buf(call.buf)).map(|_| ())
}

/// Called by the syscall hooks after [`capture`]: bytes that are not HTTP may be a TLS record
/// that names the socket of the OpenSSL call the thread is in.
#[inline(always)]
pub fn note_if_ciphertext(sys: &Syscall, seen: Result<Seen, ()>) -> Result<(), ()> {
    if let Seen::Other(first8) = seen? {
        note_ciphertext(sys, first8);
    }
    Ok(())
}

/// Called by the syscall hooks for bytes that are not an HTTP request. A TLS application-data
/// record (`17 03`) sent or received by a thread inside an OpenSSL call names the call's socket;
/// a ClientHello (`16 03 xx xx xx 01`) is a TLS connection starting, counted.
#[inline(always)]
fn note_ciphertext(sys: &Syscall, first8: u64) {
    match first8 & 0xffff {
        0x0317 => {
            if let Some(call) = TLS_STASH.get_ptr_mut(sys.pid_tgid) {
                // SAFETY: a map value of this thread, which is the only one that writes it now.
                unsafe { (*call).fd = sys.fd };
            }
        }
        0x0316 if sys.direction == direction::OUTBOUND && (first8 >> 40) & 0xff == 1 => {
            count(Counter::TlsClientHellos);
        }
        _ => {}
    }
}
