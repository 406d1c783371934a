//! Socket bookkeeping: the peer address of connected sockets, and `struct msghdr` access.

use agent_common::{family, Counter, Peer, SocketKey};

use crate::{
    args::Args,
    io::read_user,
    export, h2,
    maps::{count, current_tgid_unless_agent, PEERS},
};

/// `connect(fd, addr, addrlen)`: remember the peer, so that requests on the socket name it even
/// when the process exits before userspace can look at /proc.
#[inline(always)]
pub fn on_connect(args: &Args) {
    if try_connect(args).is_err() {
        count(Counter::PeerNotRecorded);
    }
}

/// `close(fd)`: forget the peer, so that a later socket on the same fd number is not misnamed.
#[inline(always)]
pub fn on_close(args: &Args) {
    if let Some((_, tgid)) = current_tgid_unless_agent() {
        let fd = args.get(0) as i32;
        let _ignored = PEERS.remove(SocketKey { tgid, fd });
        h2::forget(tgid, fd);
        export::forget(tgid, fd);
    }
}

#[inline(always)]
fn try_connect(args: &Args) -> Result<(), ()> {
    let Some((_, tgid)) = current_tgid_unless_agent() else {
        return Ok(());
    };
    let addr = args.get(1);
    // struct sockaddr_in: family u16, port u16 (network order), addr [u8; 4].
    let head: [u8; 8] = read_user(addr).ok_or(())?;
    let fam = u16::from_ne_bytes([head[0], head[1]]);
    let port = u16::from_be_bytes([head[2], head[3]]);
    let mut peer = Peer {
        addr: [0; 16],
        port,
        family: fam,
        _pad0: [0; 4],
    };
    match fam {
        family::INET => peer.addr[..4].copy_from_slice(&head[4..8]),
        family::INET6 => {
            // struct sockaddr_in6: family, port, flowinfo u32, addr [u8; 16].
            peer.addr = read_user(addr + 8).ok_or(())?;
        }
        _ => return Ok(()),
    }
    PEERS
        .insert(
            SocketKey {
                tgid,
                fd: args.get(0) as i32,
            },
            peer,
            0,
        )
        .map_err(|_| ())
}

/// `struct user_msghdr`: `msg_iov` at offset 16, `msg_iovlen` at 24 (x86_64).
#[inline(always)]
pub fn msghdr_iov(msg: u64) -> Option<(u64, u64)> {
    let [iov, iovlen]: [u64; 2] = read_user(msg + 16)?;
    Some((iov, iovlen))
}
