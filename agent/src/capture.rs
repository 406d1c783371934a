//! Loads and attaches the eBPF programs, reads captured requests from the ring buffer and the
//! kernel's counters. Owns every attached link: dropping [`Capture`] detaches them all.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use agent_common::{
    counter, direction, family, flags, syscall, EventHeader, CAPTURE_CAP_MAX, EVENT_HEADER_LEN,
    GLOBAL_AGENT_TGID, GLOBAL_CAPTURE_CAP, MAP_COUNTERS, MAP_EVENTS,
};
use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::RawTracePoint,
    Ebpf, EbpfLoader,
};
use bytes::Bytes;
use tokio::io::unix::AsyncFd;

use crate::findings::Direction;

/// The eBPF object built by agent/build.rs (empty when the host had no eBPF toolchain).
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("TRACEGAP_BPF_OBJECT"));

/// Program name → raw tracepoint it attaches to (see agent-ebpf/src/tp.rs for why raw).
const PROGRAMS: &[(&str, &str)] = &[
    ("tracegap_sys_enter", "sys_enter"),
    ("tracegap_sys_exit", "sys_exit"),
];

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "this agent binary was built without its eBPF object (no eBPF toolchain at build time): \
         build it with `cargo xtask build`"
    )]
    NoObject,
    #[error("loading eBPF programs needs root (CAP_BPF and CAP_PERFMON); run the agent as root")]
    NotRoot,
    #[error("loading the eBPF object failed (creating maps needs CAP_BPF)")]
    Load(#[source] aya::EbpfError),
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error(
        "program {name} failed to load or attach to the raw tracepoint {tracepoint} (tracing \
         programs need CAP_BPF and CAP_PERFMON)"
    )]
    Attach {
        name: &'static str,
        tracepoint: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map {name} has an unexpected type")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("registering the ring buffer with tokio failed")]
    Poll(#[source] std::io::Error),
    #[error("TLS uprobes")]
    Tls(#[source] crate::tls::TlsError),
}

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
    let direction = match h.direction {
        direction::OUTBOUND => Direction::Outbound,
        direction::INBOUND => Direction::Inbound,
        other => return Err(DecodeError::Direction(other)),
    };
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

/// Kernel counters summed over CPUs, indexed like `agent_common::counter`.
pub type KernelCounters = [u64; counter::COUNT as usize];

pub struct Capture {
    /// Keeps programs and links alive; dropped last.
    ebpf: Ebpf,
    /// TLS library files probed, and their uprobe links.
    tls: crate::tls::TlsProbes,
    /// Processes that exec'd, from the ring buffer, to check for TLS functions.
    execs: Vec<u32>,
    events: AsyncFd<RingBuf<MapData>>,
    counters: PerCpuArray<MapData, u64>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    attached: usize,
    /// The last batch emptied the ring buffer.
    drained: bool,
}

/// How long to let records accumulate after the ring buffer was emptied (the 8 MiB default
/// ring holds ~50k records: a third of a second at 150k/s).
const COALESCE: std::time::Duration = std::time::Duration::from_millis(10);

impl Capture {
    /// Loads the programs with the agent's own pid excluded and attaches them all.
    pub fn start(capture_bytes: u32, ring_bytes: u32, tls: bool) -> Result<Self, CaptureError> {
        if BPF_OBJECT.is_empty() {
            return Err(CaptureError::NoObject);
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(CaptureError::NotRoot);
        }
        let own_tgid = std::process::id();
        let cap = capture_bytes.min(CAPTURE_CAP_MAX as u32);
        let mut ebpf = EbpfLoader::new()
            .override_global(GLOBAL_AGENT_TGID, &own_tgid, true)
            .override_global(GLOBAL_CAPTURE_CAP, &cap, true)
            .map_max_entries(MAP_EVENTS, ring_bytes)
            .load(BPF_OBJECT)
            .map_err(CaptureError::Load)?;
        // The object logs only on rare paths; without a log map there is nothing to poll.
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                log::debug!("no eBPF logs: {e}");
                None
            }
        };
        let mut attached = 0;
        for &(name, tracepoint) in PROGRAMS {
            let program: &mut RawTracePoint = ebpf
                .program_mut(name)
                .ok_or(CaptureError::MissingProgram(name))?
                .try_into()
                .map_err(|source| CaptureError::Attach {
                    name,
                    tracepoint,
                    source,
                })?;
            program.load().map_err(|source| CaptureError::Attach {
                name,
                tracepoint,
                source,
            })?;
            program
                .attach(tracepoint)
                .map_err(|source| CaptureError::Attach {
                    name,
                    tracepoint,
                    source,
                })?;
            attached += 1;
        }
        let tls = if tls {
            let mut tls = crate::tls::load(&mut ebpf, BPF_OBJECT).map_err(CaptureError::Tls)?;
            tls.scan_all(&mut ebpf);
            log::info!(
                "TLS: {} uprobe links on {} OpenSSL files and {} Go executables",
                tls.links(),
                tls.probed().len(),
                tls.go_probed().len()
            );
            tls
        } else {
            log::info!("TLS capture off (--tls off): no uprobes");
            crate::tls::TlsProbes::disabled()
        };
        let events = RingBuf::try_from(
            ebpf.take_map(MAP_EVENTS)
                .ok_or(CaptureError::MissingMap(MAP_EVENTS))?,
        )
        .map_err(|source| CaptureError::Map {
            name: MAP_EVENTS,
            source,
        })?;
        let counters = PerCpuArray::try_from(
            ebpf.take_map(MAP_COUNTERS)
                .ok_or(CaptureError::MissingMap(MAP_COUNTERS))?,
        )
        .map_err(|source| CaptureError::Map {
            name: MAP_COUNTERS,
            source,
        })?;
        // SAFETY: the ring buffer owns its fd, which stays open and unchanged until the AsyncFd
        // (which owns the ring buffer) is dropped.
        let events =
            unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE) }
                .map_err(|e| CaptureError::Poll(e.into()))?;
        log::info!(
            "attached {attached} programs to raw syscall tracepoints (capture cap {cap} bytes, ring buffer {ring_bytes} bytes, agent pid {own_tgid} excluded)"
        );
        Ok(Self {
            ebpf,
            tls,
            execs: Vec::new(),
            events,
            counters,
            logger,
            attached,
            drained: false,
        })
    }

    pub fn attached(&self) -> usize {
        self.attached
    }

    /// Waits until the ring buffer has records, then decodes up to `max` of them. After a
    /// batch that emptied the ring, waits [`COALESCE`] first: at a steady rate the ring is
    /// nearly always empty, and waking for every record cost more CPU than handling it.
    pub async fn next_batch(
        &mut self,
        max: usize,
        out: &mut Vec<Result<CapturedEvent, DecodeError>>,
    ) -> std::io::Result<()> {
        if self.drained {
            tokio::time::sleep(COALESCE).await;
        }
        let mut guard = self.events.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while out.len() < max {
            let Some(item) = ring.next() else { break };
            push_or_exec(decode(&item), out, &mut self.execs);
        }
        self.drained = out.len() < max;
        if self.drained {
            guard.clear_ready();
        }
        drop(guard);
        for pid in self.execs.drain(..) {
            self.tls.on_exec(&mut self.ebpf, pid);
        }
        Ok(())
    }

    /// Probes TLS libraries that processes mapped since the last scan (rate-limited inside).
    pub fn rescan_tls(&mut self) {
        self.tls.rescan_if_due(&mut self.ebpf);
    }

    /// Drains what is in the ring buffer without waiting (used at shutdown).
    pub fn drain_now(&mut self, out: &mut Vec<Result<CapturedEvent, DecodeError>>) {
        let ring = self.events.get_mut();
        while let Some(item) = ring.next() {
            push_or_exec(decode(&item), out, &mut self.execs);
        }
        self.execs.clear();
    }

    /// Forwards log records the programs wrote (rare paths only) to the `log` crate.
    pub fn flush_logs(&mut self) {
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
    }

    pub fn counters(&self) -> KernelCounters {
        let mut sums = [0u64; counter::COUNT as usize];
        for (i, sum) in sums.iter_mut().enumerate() {
            if let Ok(values) = self.counters.get(&(i as u32), 0) {
                *sum = values.iter().sum();
            }
        }
        sums
    }
}

/// Exec notices (`syscall::EXEC`) are not requests: they go to `execs`, the rest to `out`.
fn push_or_exec(
    event: Result<CapturedEvent, DecodeError>,
    out: &mut Vec<Result<CapturedEvent, DecodeError>>,
    execs: &mut Vec<u32>,
) {
    match event {
        Ok(e) if e.syscall == syscall::EXEC => execs.push(e.pid),
        other => out.push(other),
    }
}

#[cfg(test)]
mod tests {
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
