//! Ring buffer records → [`CapturedEvent`]s. Nothing from the kernel is trusted: lengths are
//! checked before any read, and a bad record is an error (counted), never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use agent_common::{family, flags, EventHeader, CAPTURE_CAP_MAX, EVENT_HEADER_LEN};
use bytes::Bytes;

use crate::model::Direction;

/// One captured request prefix.
#[derive(Clone, Debug)]
pub struct CapturedEvent {
    pub monotonic_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    pub comm: String,
    pub direction: Direction,
    pub syscall: u8,
    pub flags: u8,
    /// The syscall's full length; more than `data.len()` means the capture was cut.
    pub total_len: u64,
    pub peer: Option<SocketAddr>,
    pub data: Bytes,
}

impl CapturedEvent {
    pub fn truncated(&self) -> bool {
        self.total_len > self.data.len() as u64 || self.flags & flags::INCOMPLETE != 0
    }

    /// Plaintext taken inside a TLS library (OpenSSL uprobes), not at a syscall.
    pub fn tls(&self) -> bool {
        self.flags & flags::TLS != 0
    }

    /// Frames of an HTTP/2 connection's request direction (agent-ebpf/src/h2.rs).
    pub fn h2(&self) -> bool {
        self.flags & flags::H2 != 0
    }

    /// An earlier event of this HTTP/2 connection was lost in the kernel.
    pub fn h2_gap(&self) -> bool {
        self.flags & flags::H2_GAP != 0
    }
}

/// Why a ring buffer record could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record shorter than its header")]
    Short,
    #[error("captured length larger than the record")]
    Length,
    #[error("unknown direction {0}")]
    Direction(u8),
}

/// Decodes one ring buffer record (header then payload).
pub fn decode(record: &[u8]) -> Result<CapturedEvent, DecodeError> {
    if record.len() < EVENT_HEADER_LEN {
        return Err(DecodeError::Short);
    }
    // SAFETY: the length was checked; EventHeader is plain old data and may be unaligned here.
    let h: EventHeader = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    let captured = h.captured_len as usize;
    if captured > CAPTURE_CAP_MAX || EVENT_HEADER_LEN + captured > record.len() {
        return Err(DecodeError::Length);
    }
    let direction =
        Direction::from_kernel(h.direction).ok_or(DecodeError::Direction(h.direction))?;
    let comm_len = h.comm.iter().position(|&b| b == 0).unwrap_or(h.comm.len());
    Ok(CapturedEvent {
        monotonic_ns: h.timestamp_ns,
        pid: h.tgid,
        tid: h.tid,
        fd: h.fd,
        comm: String::from_utf8_lossy(&h.comm[..comm_len]).into_owned(),
        direction,
        syscall: h.syscall,
        flags: h.flags,
        total_len: h.total_len,
        peer: peer(h.peer_family, h.peer_addr, h.peer_port),
        data: Bytes::copy_from_slice(&record[EVENT_HEADER_LEN..EVENT_HEADER_LEN + captured]),
    })
}

fn peer(fam: u16, addr: [u8; 16], port: u16) -> Option<SocketAddr> {
    let ip = match fam {
        family::INET => IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
        family::INET6 => {
            let v6 = Ipv6Addr::from(addr);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use agent_common::direction;

    use super::*;

    fn record(captured: &[u8], total: u64, dir: u8) -> Vec<u8> {
        let mut h = EventHeader {
            timestamp_ns: 5,
            total_len: total,
            tgid: 42,
            tid: 43,
            fd: 7,
            captured_len: captured.len() as u32,
            comm: [0; 16],
            peer_addr: [0; 16],
            peer_port: 8080,
            peer_family: family::INET,
            direction: dir,
            syscall: 0,
            flags: 0,
            _pad0: [0],
        };
        h.comm[..4].copy_from_slice(b"curl");
        h.peer_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        // SAFETY: EventHeader is repr(C) plain old data with explicit padding.
        let bytes = unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(&h).cast::<u8>(), EVENT_HEADER_LEN)
        };
        let mut v = bytes.to_vec();
        v.extend_from_slice(captured);
        v
    }

    #[test]
    fn decodes_a_record() {
        let ev = decode(&record(b"GET / HTTP/1.1\r\n", 100, direction::OUTBOUND)).expect("decodes");
        assert_eq!(ev.pid, 42);
        assert_eq!(ev.comm, "curl");
        assert_eq!(ev.peer, Some("127.0.0.1:8080".parse().expect("addr")));
        assert_eq!(ev.direction, Direction::Outbound);
        assert!(ev.truncated());
        assert_eq!(&ev.data[..], b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(decode(&[0u8; 10]).err(), Some(DecodeError::Short));
        let mut r = record(b"GET / HTTP/1.1\r\n", 16, direction::OUTBOUND);
        r.truncate(r.len() - 1);
        assert_eq!(decode(&r).err(), Some(DecodeError::Length));
        assert_eq!(
            decode(&record(b"GET / HTTP/1.1\r\n", 16, 9)).err(),
            Some(DecodeError::Direction(9))
        );
    }
}
