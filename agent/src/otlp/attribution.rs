//! Which process exported a request: the owner of the client end of the connection.
//!
//! The client socket is in /proc/net/tcp{,6} with local == the peer address we see and remote
//! == our address on the connection; its inode appears as `socket:[inode]` among the fds of the
//! owning process. This only sees sockets of the agent's own network namespace; a client in
//! another namespace (a container without host networking) falls back to `process.pid`.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
};

use procfs::{
    net::TcpNetEntry,
    process::{all_processes, FDTarget},
};

/// Per-connection cache of the owning pid (a negative answer is cached too: the lookup scans
/// every process's fds, too costly to repeat for each request of a keep-alive connection).
#[derive(Debug)]
pub(crate) struct Attributor {
    cache: Mutex<HashMap<SocketAddr, Option<u32>>>,
    max_entries: usize,
}

impl Attributor {
    pub(crate) fn new(max_entries: usize) -> Self {
        Self {
            cache: Mutex::new(HashMap::new()),
            max_entries,
        }
    }

    /// The pid owning the client socket `peer` of a connection accepted on `local`.
    pub(crate) async fn socket_owner(
        self: &Arc<Self>,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Option<u32> {
        if let Some(cached) = self.lock().get(&peer) {
            return *cached;
        }
        // Reading /proc is blocking file I/O over possibly thousands of processes.
        let pid = tokio::task::spawn_blocking(move || lookup_socket_owner(peer, local))
            .await
            .unwrap_or_else(|e| {
                log::warn!("socket owner lookup for {peer} failed: {e}");
                None
            });
        let mut cache = self.lock();
        if cache.len() >= self.max_entries {
            // Entries leave when their connection closes, so a full cache means a connection
            // flood; dropping any one entry only costs a repeated lookup.
            if let Some(victim) = cache.keys().next().copied() {
                cache.remove(&victim);
            }
        }
        cache.insert(peer, pid);
        pid
    }

    /// Called when the connection from `peer` closes: its port may be reused by another process.
    pub(crate) fn forget(&self, peer: SocketAddr) {
        self.lock().remove(&peer);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Option<u32>>> {
        // The map stays consistent even if a holder panicked: every update is one call.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn lookup_socket_owner(peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    let mut entries = procfs::net::tcp().unwrap_or_default();
    // tcp6 is absent when IPv6 is disabled; the v4 table alone is then complete.
    entries.extend(procfs::net::tcp6().unwrap_or_default());
    let inode = client_inode(&entries, peer, local)?;
    pid_owning_socket(inode)
}

/// The inode of the client end of the connection `peer` → `local`.
pub(crate) fn client_inode(
    entries: &[TcpNetEntry],
    peer: SocketAddr,
    local: SocketAddr,
) -> Option<u64> {
    entries
        .iter()
        .find(|e| same_endpoint(e.local_address, peer) && same_endpoint(e.remote_address, local))
        // Inode 0 is a socket without a file (TIME_WAIT, orphaned): no process owns it.
        .map(|e| e.inode)
        .filter(|&inode| inode != 0)
}

/// A dual-stack listener sees an IPv4 client as `::ffff:a.b.c.d` while the client's own entry
/// is in the IPv4 table, so compare canonical addresses.
fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

fn pid_owning_socket(inode: u64) -> Option<u32> {
    // Processes we may not inspect (other users, when not root) or that exit meanwhile are
    // skipped: the caller falls back to the resource attribute.
    let processes = all_processes().ok()?;
    processes.flatten().find_map(|p| {
        let owns = p
            .fd()
            .ok()?
            .flatten()
            .any(|fd| matches!(fd.target, FDTarget::Socket(i) if i == inode));
        if owns {
            u32::try_from(p.pid).ok()
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use procfs::{net::TcpNetEntries, ExplicitSystemInfo, FromReadSI};

    use super::*;

    // Two ends of 127.0.0.1:40000 <-> 127.0.0.1:4317 plus the listener, as /proc/net/tcp shows
    // them on little-endian x86 (addresses in network order read as a host-order u32).
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:10DD 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:9C40 0100007F:10DD 01 00000000:00000000 00:00000000 00000000  1000        0 222 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:10DD 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 333 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:9C41 0100007F:10DD 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
";

    fn parse(text: &str) -> Vec<TcpNetEntry> {
        let info = ExplicitSystemInfo {
            boot_time_secs: 0,
            ticks_per_second: 100,
            page_size: 4096,
            is_little_endian: true,
        };
        TcpNetEntries::from_read(text.as_bytes(), &info)
            .expect("fixed /proc/net/tcp text parses")
            .0
    }

    fn v4(port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    }

    #[test]
    fn finds_client_end_not_server_end() {
        let entries = parse(TCP);
        assert_eq!(entries.len(), 4);
        assert_eq!(client_inode(&entries, v4(40000), v4(4317)), Some(222));
        // Reversed direction is the server's own accepted socket, not the client.
        assert_eq!(client_inode(&entries, v4(4317), v4(40000)), Some(333));
        assert_eq!(client_inode(&entries, v4(40002), v4(4317)), None);
    }

    #[test]
    fn socket_without_inode_is_unowned() {
        assert_eq!(client_inode(&parse(TCP), v4(40001), v4(4317)), None);
    }

    #[test]
    fn v4_mapped_peer_matches_v4_entry() {
        let mapped = |port| SocketAddr::new(IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()), port);
        assert_eq!(
            client_inode(&parse(TCP), mapped(40000), mapped(4317)),
            Some(222)
        );
        let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 40000);
        assert_eq!(client_inode(&parse(TCP), v6, v4(4317)), None);
    }

    #[test]
    fn tcp6_table_with_v4_mapped_client() {
        // A client on a dual-stack socket: its entry is in tcp6 as ::ffff:127.0.0.1.
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000100007F:9C42 0000000000000000FFFF00000100007F:10DE 01 00000000:00000000 00:00000000 00000000  1000        0 444 1 0000000000000000 20 4 30 10 -1
   1: 00000000000000000000000001000000:9C43 00000000000000000000000001000000:10DE 01 00000000:00000000 00:00000000 00000000  1000        0 555 1 0000000000000000 20 4 30 10 -1
";
        let entries = parse(tcp6);
        assert_eq!(client_inode(&entries, v4(40002), v4(4318)), Some(444));
        let v6 = |port| SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port);
        assert_eq!(client_inode(&entries, v6(40003), v6(4318)), Some(555));
    }

    #[tokio::test]
    async fn finds_own_process_and_forgets() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let server_addr = listener.local_addr().expect("local addr");
        let client = tokio::net::TcpStream::connect(server_addr)
            .await
            .expect("connect");
        let (_server_end, peer) = listener.accept().await.expect("accept");
        assert_eq!(client.local_addr().expect("client addr"), peer);

        let attributor = Arc::new(Attributor::new(2));
        let pid = attributor.socket_owner(peer, server_addr).await;
        assert_eq!(pid, Some(std::process::id()));
        assert_eq!(
            attributor.lock().get(&peer),
            Some(&Some(std::process::id()))
        );
        attributor.forget(peer);
        assert!(attributor.lock().is_empty());
        // Unknown connection: cached as unresolved, and the cache stays bounded.
        for port in 1..=3 {
            assert_eq!(attributor.socket_owner(v4(port), server_addr).await, None);
        }
        assert_eq!(attributor.lock().len(), 2);
    }
}
