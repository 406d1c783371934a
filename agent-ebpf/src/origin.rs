//! Who made a captured syscall, as every record's header says it: process, thread, fd, thread
//! name, the syscall, and the socket's peer. Shared by request records (capture.rs) and export
//! streams (export.rs).

use agent_common::{family, EventHeader, Peer, SocketKey, COMM_LEN};
use aya_ebpf::helpers::generated::bpf_get_current_comm;

use crate::{io::Syscall, maps::PEERS};

/// Who made the syscall: process, thread, fd, thread name, the syscall, and the socket's
/// peer (recorded at `connect`; none for accepted sockets). Shared by request and
/// export-stream records.
#[inline(always)]
pub fn set_origin(header: &mut EventHeader, sys: &Syscall) {
    let tgid = (sys.pid_tgid >> 32) as u32;
    header.tgid = tgid;
    header.tid = sys.pid_tgid as u32;
    header.fd = sys.fd;
    header.syscall = sys.syscall;
    // Written in place by the raw helper (it zeroes the buffer itself on failure). aya's
    // wrapper fills a zeroed stack copy first, which bpf-linker emitted as a call to a
    // byte-at-a-time memset, then copied it byte by byte.
    // SAFETY: `header.comm` is COMM_LEN writable bytes.
    unsafe { bpf_get_current_comm(header.comm.as_mut_ptr().cast(), COMM_LEN as u32) };
    // SAFETY: the LRU map value is copied out at once.
    let peer = unsafe { PEERS.get(SocketKey { tgid, fd: sys.fd }) };
    set_peer(header, peer);
}

/// The socket's peer into the header, or none. The 16 address bytes move as two u64: as a
/// `[u8; 16]` (alignment 1) bpf-linker emitted calls to byte-at-a-time memmove/memset
/// routines, ~30 ns per captured request (perf on the sendto-http loop).
#[inline(always)]
fn set_peer(header: &mut EventHeader, peer: Option<&Peer>) {
    let dst = core::ptr::addr_of_mut!(header.peer_addr).cast::<u64>();
    let (addr, port, family) = match peer {
        Some(p) => {
            let src = core::ptr::addr_of!(p.addr).cast::<u64>();
            // SAFETY: a map value starts 8-aligned and `addr` is at offset 0 of `Peer`.
            (unsafe { [src.read(), src.add(1).read()] }, p.port, p.family)
        }
        None => ([0, 0], 0, family::UNKNOWN),
    };
    // SAFETY: `peer_addr` is at offset 48 of the 8-aligned header (checked in agent-common),
    // at the start of an 8-aligned per-CPU map value.
    unsafe {
        dst.write(addr[0]);
        dst.add(1).write(addr[1]);
    }
    header.peer_port = port;
    header.peer_family = family;
}
