//! Ring buffer records → [`Record`]s: captured requests, and the process changes (exec, fork,
//! exit) that tell the agent who sent them. Nothing from the kernel is trusted: lengths are
//! checked before any read, and a bad record is an error (counted), never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use agent_common::{
    family, flags, syscall, EventHeader, ProcessRecord, CAPTURE_CAP_MAX, EVENT_HEADER_LEN,
    EXEC_ENV_MAX, EXEC_FILENAME_MAX, PROCESS_RECORD_LEN,
};
use bytes::{Bytes, BytesMut};
use compact_str::CompactString;

use crate::model::Direction;

/// One captured request prefix.
#[derive(Clone, Debug)]
pub struct CapturedEvent {
    pub monotonic_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    pub comm: CompactString,
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

    /// A chunk of an export connection's stream (its `total_len` is its offset in the stream).
    pub fn export_stream(&self) -> bool {
        self.flags & flags::EXPORT_STREAM != 0
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

/// What a ring buffer record is.
#[derive(Clone, Debug)]
pub enum Record {
    /// A captured request prefix (or HTTP/2 frames).
    Request(CapturedEvent),
    /// A process started, forked or ended (agent-ebpf/src/process.rs).
    Process(ProcessEvent),
}

impl Record {
    /// `bpf_ktime_get_ns` when the kernel wrote it (CLOCK_MONOTONIC).
    pub fn monotonic_ns(&self) -> u64 {
        match self {
            Self::Request(e) => e.monotonic_ns,
            Self::Process(p) => p.monotonic_ns,
        }
    }
}

/// A change of a process, in order with its requests.
#[derive(Clone, Debug)]
pub struct ProcessEvent {
    pub monotonic_ns: u64,
    pub pid: u32,
    /// The process's name after the change.
    pub comm: CompactString,
    pub change: ProcessChange,
}

#[derive(Clone, Debug)]
pub enum ProcessChange {
    /// The process exec'd; `None` when the kernel could not read the details (no BTF offsets,
    /// or unreadable memory): /proc then has to tell.
    Exec(Option<ExecDetails>),
    /// The process was forked by `parent` (and is who it is until it execs).
    Fork {
        parent: u32,
    },
    Exit,
}

/// The new image of an exec.
#[derive(Clone, Debug)]
pub struct ExecDetails {
    /// The path execve was given.
    pub path: Option<String>,
    /// The environment block (`KEY=VALUE\0...`): the attribute stage keeps only its
    /// OpenTelemetry facts.
    pub env: Bytes,
    /// `env` is the whole block.
    pub env_complete: bool,
    pub cgroup_id: u64,
}

/// Where the payloads of decoded requests are copied: one buffer that many records share,
/// reused once the records pointing into it are dropped (the pipeline drops a batch before it
/// decodes the next). A copy per record (`Bytes::copy_from_slice`) cost a malloc and a free
/// each: 11 % of the agent's CPU under a 50k req/s flood, as a batch allocates up to 1,024 at
/// once, past the allocator's per-thread cache.
#[derive(Default)]
pub struct Payloads(BytesMut);

impl Payloads {
    /// Room taken at a time when the buffer is full: a few hundred request prefixes.
    const CHUNK: usize = 64 * 1024;

    fn copy(&mut self, bytes: &[u8]) -> Bytes {
        if self.0.capacity() < bytes.len() {
            // Reclaims the buffer in place when no record points into it any more.
            self.0.reserve(bytes.len().max(Self::CHUNK));
        }
        self.0.extend_from_slice(bytes);
        self.0.split().freeze()
    }
}

/// Decodes one ring buffer record (header then payload); a request's payload is copied into
/// `payloads`.
pub fn decode(record: &[u8], payloads: &mut Payloads) -> Result<Record, DecodeError> {
    let h = header(record)?;
    let payload = &record[EVENT_HEADER_LEN..EVENT_HEADER_LEN + h.captured_len as usize];
    let comm = comm(&h);
    let change = match h.syscall {
        syscall::EXEC => ProcessChange::Exec(exec_details(&h, payload)?),
        syscall::FORK => ProcessChange::Fork {
            parent: process_record(payload)?.parent_tgid,
        },
        syscall::EXIT => ProcessChange::Exit,
        _ => return request(&h, comm, payloads.copy(payload)).map(Record::Request),
    };
    Ok(Record::Process(ProcessEvent {
        monotonic_ns: h.timestamp_ns,
        pid: h.tgid,
        comm,
        change,
    }))
}

/// The header, with its payload length checked against the record.
fn header(record: &[u8]) -> Result<EventHeader, DecodeError> {
    if record.len() < EVENT_HEADER_LEN {
        return Err(DecodeError::Short);
    }
    // SAFETY: the length was checked; EventHeader is plain old data and may be unaligned here.
    let h: EventHeader = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    let payload_max = match h.syscall {
        syscall::EXEC => PROCESS_RECORD_LEN + EXEC_FILENAME_MAX + EXEC_ENV_MAX,
        syscall::FORK => PROCESS_RECORD_LEN,
        _ => CAPTURE_CAP_MAX,
    };
    let captured = h.captured_len as usize;
    if captured > payload_max || EVENT_HEADER_LEN + captured > record.len() {
        return Err(DecodeError::Length);
    }
    Ok(h)
}

/// Kept inline (a comm is at most 15 bytes): no allocation per event.
fn comm(h: &EventHeader) -> CompactString {
    let len = h.comm.iter().position(|&b| b == 0).unwrap_or(h.comm.len());
    CompactString::from_utf8_lossy(&h.comm[..len])
}

fn request(
    h: &EventHeader,
    comm: CompactString,
    data: Bytes,
) -> Result<CapturedEvent, DecodeError> {
    let direction =
        Direction::from_kernel(h.direction).ok_or(DecodeError::Direction(h.direction))?;
    Ok(CapturedEvent {
        monotonic_ns: h.timestamp_ns,
        pid: h.tgid,
        tid: h.tid,
        fd: h.fd,
        comm,
        direction,
        syscall: h.syscall,
        flags: h.flags,
        total_len: h.total_len,
        peer: peer(h.peer_family, h.peer_addr, h.peer_port),
        data,
    })
}

fn process_record(payload: &[u8]) -> Result<ProcessRecord, DecodeError> {
    if payload.len() < PROCESS_RECORD_LEN {
        return Err(DecodeError::Length);
    }
    // SAFETY: the length was checked; ProcessRecord is plain old data, maybe unaligned here.
    Ok(unsafe { std::ptr::read_unaligned(payload.as_ptr().cast()) })
}

fn exec_details(h: &EventHeader, payload: &[u8]) -> Result<Option<ExecDetails>, DecodeError> {
    if h.flags & flags::PROCESS_DETAILS == 0 {
        return Ok(None);
    }
    let p = process_record(payload)?;
    let rest = &payload[PROCESS_RECORD_LEN..];
    let (path, env) = (
        rest.get(..EXEC_FILENAME_MAX).ok_or(DecodeError::Length)?,
        rest.get(EXEC_FILENAME_MAX..).ok_or(DecodeError::Length)?,
    );
    let path_len = (p.filename_len as usize).min(EXEC_FILENAME_MAX);
    let env_len = p.env_len as usize;
    let env = env.get(..env_len).ok_or(DecodeError::Length)?;
    Ok(Some(ExecDetails {
        path: (path_len > 0).then(|| String::from_utf8_lossy(&path[..path_len]).into_owned()),
        env: Bytes::copy_from_slice(env),
        env_complete: p.env_total as usize <= env_len,
        cgroup_id: p.cgroup_id,
    }))
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

    fn decode_one(record: &[u8]) -> Result<Record, DecodeError> {
        decode(record, &mut Payloads::default())
    }

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
    fn payloads_share_one_buffer_reused_once_their_records_are_dropped() {
        let mut payloads = Payloads::default();
        let first = payloads.copy(&[1; 1000]);
        let second = payloads.copy(&[2; 1000]);
        assert_eq!((&first[..], &second[..]), (&[1; 1000][..], &[2; 1000][..]));
        let start = first.as_ptr();
        assert_eq!(second.as_ptr(), start.wrapping_add(1000), "one buffer");
        drop((first, second));
        // Use up the rest of the buffer, dropping each copy as the pipeline drops a batch.
        while payloads.0.capacity() >= 1000 {
            drop(payloads.copy(&[3; 1000]));
        }
        let held = payloads.copy(&[4; 1000]);
        assert_eq!(
            held.as_ptr(),
            start,
            "the buffer is reclaimed, not reallocated"
        );
        assert_eq!(&held[..], &[4; 1000][..]);
        // A record still alive keeps its bytes: the next buffer is a new one.
        while payloads.0.capacity() >= 1000 {
            drop(payloads.copy(&[5; 1000]));
        }
        let next = payloads.copy(&[6; 1000]);
        assert_ne!(next.as_ptr(), start);
        assert_eq!((&held[..], &next[..]), (&[4; 1000][..], &[6; 1000][..]));
    }

    #[test]
    fn decodes_a_record() {
        let Ok(Record::Request(ev)) =
            decode_one(&record(b"GET / HTTP/1.1\r\n", 100, direction::OUTBOUND))
        else {
            panic!("a request record");
        };
        assert_eq!(ev.pid, 42);
        assert_eq!(ev.comm, "curl");
        assert_eq!(ev.peer, Some("127.0.0.1:8080".parse().expect("addr")));
        assert_eq!(ev.direction, Direction::Outbound);
        assert!(ev.truncated());
        assert_eq!(&ev.data[..], b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(decode_one(&[0u8; 10]).err(), Some(DecodeError::Short));
        let mut r = record(b"GET / HTTP/1.1\r\n", 16, direction::OUTBOUND);
        r.truncate(r.len() - 1);
        assert_eq!(decode_one(&r).err(), Some(DecodeError::Length));
        assert_eq!(
            decode_one(&record(b"GET / HTTP/1.1\r\n", 16, 9)).err(),
            Some(DecodeError::Direction(9))
        );
    }

    fn process_record(kind: u8, flags: u8, process: ProcessRecord, rest: &[u8]) -> Vec<u8> {
        let mut r = record(&[], 0, direction::OUTBOUND);
        // SAFETY: ProcessRecord is repr(C) plain old data without implicit padding.
        let p = unsafe {
            std::slice::from_raw_parts(
                std::ptr::from_ref(&process).cast::<u8>(),
                PROCESS_RECORD_LEN,
            )
        };
        r.extend_from_slice(p);
        r.extend_from_slice(rest);
        let payload = (r.len() - EVENT_HEADER_LEN) as u32;
        // syscall, flags and captured_len in place.
        r[EVENT_HEADER_LEN - 3] = kind;
        r[EVENT_HEADER_LEN - 2] = flags;
        r[28..32].copy_from_slice(&payload.to_ne_bytes());
        r
    }

    #[test]
    fn decodes_process_records() {
        let mut path = [0u8; EXEC_FILENAME_MAX];
        path[..13].copy_from_slice(b"/usr/bin/curl");
        let env = b"A=1\0OTEL_SERVICE_NAME=x\0";
        let mut rest = path.to_vec();
        rest.extend_from_slice(env);
        let exec = ProcessRecord {
            cgroup_id: 7,
            parent_tgid: 0,
            filename_len: 13,
            env_len: env.len() as u32,
            env_total: env.len() as u32,
        };
        let Ok(Record::Process(p)) = decode_one(&process_record(
            syscall::EXEC,
            flags::PROCESS_DETAILS,
            exec,
            &rest,
        )) else {
            panic!("an exec record");
        };
        assert_eq!((p.pid, p.comm.as_str()), (42, "curl"));
        let ProcessChange::Exec(Some(d)) = p.change else {
            panic!("exec details");
        };
        assert_eq!(d.path.as_deref(), Some("/usr/bin/curl"));
        assert_eq!(&d.env[..], env);
        assert!(d.env_complete);
        assert_eq!(d.cgroup_id, 7);

        // Cut: the block was larger than what came.
        let cut = ProcessRecord {
            env_total: 99_999,
            ..exec
        };
        let Ok(Record::Process(ProcessEvent {
            change: ProcessChange::Exec(Some(d)),
            ..
        })) = decode_one(&process_record(
            syscall::EXEC,
            flags::PROCESS_DETAILS,
            cut,
            &rest,
        ))
        else {
            panic!("an exec record");
        };
        assert!(!d.env_complete);

        // Without details (no BTF offsets): header only.
        assert!(matches!(
            decode_one(&process_record(syscall::EXEC, 0, exec, &rest)),
            Ok(Record::Process(ProcessEvent {
                change: ProcessChange::Exec(None),
                ..
            }))
        ));

        let fork = ProcessRecord {
            parent_tgid: 41,
            ..exec
        };
        assert!(matches!(
            decode_one(&process_record(syscall::FORK, 0, fork, &[])),
            Ok(Record::Process(ProcessEvent {
                change: ProcessChange::Fork { parent: 41 },
                ..
            }))
        ));
    }

    #[test]
    fn rejects_bad_process_records() {
        let exec = ProcessRecord {
            cgroup_id: 0,
            parent_tgid: 0,
            filename_len: 0,
            env_len: 100,
            env_total: 100,
        };
        // env_len says more than the record holds.
        let r = process_record(
            syscall::EXEC,
            flags::PROCESS_DETAILS,
            exec,
            &[0; EXEC_FILENAME_MAX],
        );
        assert_eq!(decode_one(&r).err(), Some(DecodeError::Length));
        // A fork record too short for its parent.
        let mut r = process_record(syscall::FORK, 0, exec, &[]);
        r.truncate(EVENT_HEADER_LEN + 4);
        r[28..32].copy_from_slice(&4u32.to_ne_bytes());
        assert_eq!(decode_one(&r).err(), Some(DecodeError::Length));
    }
}
