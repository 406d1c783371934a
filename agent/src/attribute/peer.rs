//! fd → peer address of sockets the kernel did not see connect, read from /proc and cached.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use procfs::process::{FDTarget, Process};

use crate::model::PidMap;

/// Sockets whose peer was looked up in /proc; past it the table is cleared.
const MAX_PEERS: usize = 65_536;
/// A looked-up peer is trusted this long (the fd may be closed and reused after).
const PEER_TTL: Duration = Duration::from_secs(5);

/// Peers of sockets the kernel did not see connect (opened before the agent started, or
/// accepted): reading /proc for them on every request would cost more than the request.
#[derive(Default)]
pub struct PeerCache {
    entries: PidMap<(u32, i32), (Option<SocketAddr>, Instant)>,
    pub lookups: u64,
}

impl PeerCache {
    pub fn get(&mut self, pid: u32, fd: i32) -> Option<SocketAddr> {
        if let Some((peer, at)) = self.entries.get(&(pid, fd)) {
            if at.elapsed() < PEER_TTL {
                return *peer;
            }
        }
        if self.entries.len() >= MAX_PEERS {
            self.entries.clear();
        }
        self.lookups += 1;
        let peer = socket_peer(pid, fd);
        self.entries.insert((pid, fd), (peer, Instant::now()));
        peer
    }
}

/// The remote address of socket `fd` of `pid`, from /proc/<pid>/fd and the process's own
/// network namespace's /proc/<pid>/net/tcp{,6}.
pub fn socket_peer(pid: u32, fd: i32) -> Option<SocketAddr> {
    let process = Process::new(pid as i32).ok()?;
    let fd_info = process.fd_from_fd(fd).ok()?;
    let FDTarget::Socket(inode) = fd_info.target else {
        return None;
    };
    let tcp = process.tcp().unwrap_or_default();
    let tcp6 = process.tcp6().unwrap_or_default();
    tcp.iter()
        .chain(tcp6.iter())
        .find(|e| e.inode == inode)
        .map(|e| e.remote_address)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd as _;

    use super::*;

    #[test]
    fn reads_a_socket_peer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stream = std::net::TcpStream::connect(addr).expect("connect");
        assert_eq!(
            socket_peer(std::process::id(), stream.as_raw_fd()),
            Some(addr)
        );
    }
}
