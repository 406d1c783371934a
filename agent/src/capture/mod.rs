//! Loads and attaches the eBPF programs, reads captured requests from the ring buffer and the
//! kernel's counters. Owns every attached link: dropping [`Capture`] detaches them all.

mod event;
pub mod offsets;
pub mod uprobe;

use std::time::{Duration, Instant};

use agent_common::{
    Counter, ExportConn, KernelOffsets, SocketKey, CAPTURE_BUDGET_WINDOWS_PER_S, CAPTURE_CAP_MAX,
    EXPORT_PROCS_ENTRIES, GLOBAL_AGENT_TGID, GLOBAL_CAPTURE_BUDGET, GLOBAL_CAPTURE_CAP,
    GLOBAL_EXPORT_MAX_BYTES, GLOBAL_KERNEL_OFFSETS, GLOBAL_RECEIVER_PORTS, MAP_COUNTERS,
    MAP_EVENTS, MAP_EXPORT_CONNS, MAP_EXPORT_KEEP, MAP_EXPORT_PROCS, SAMPLE_ONE_IN,
};
use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, RawTracePoint},
    Btf, Ebpf, EbpfLoader,
};
use tokio::io::unix::AsyncFd;

pub use self::event::{
    decode, CapturedEvent, DecodeError, ExecDetails, Payloads, ProcessChange, ProcessEvent, Record,
};
use self::uprobe::{TlsError, TlsProbes};
use crate::model::KernelCounters;

/// `BPF_NOEXIST` (uapi/linux/bpf.h): a map update that only inserts.
const BPF_NOEXIST: u64 = 1;

/// The eBPF object built by agent/build.rs (empty when the host had no eBPF toolchain).
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("TRACEGAP_BPF_OBJECT"));

/// Program name → raw tracepoint it attaches to as a BTF tracepoint (`tp_btf`: the programs
/// load the saved registers directly; see agent-ebpf/src/tp.rs and args.rs).
const BTF_PROGRAMS: &[(&str, &str)] = &[
    ("tracegap_sys_enter", "sys_enter"),
    ("tracegap_sys_exit", "sys_exit"),
];

/// Program name → raw tracepoint it attaches to (see agent-ebpf/src/process.rs for the process
/// records).
const PROGRAMS: &[(&str, &str)] = &[
    ("tracegap_exec", "sched_process_exec"),
    ("tracegap_fork", "sched_process_fork"),
    ("tracegap_exit", "sched_process_exit"),
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
    #[error(
        "reading the kernel's BTF (/sys/kernel/btf/vmlinux) failed: the syscall programs are \
         BTF tracepoints and need a kernel built with CONFIG_DEBUG_INFO_BTF"
    )]
    Btf(#[source] aya::BtfError),
    #[error("map {name} has an unexpected type")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("registering the ring buffer with tokio failed")]
    Poll(#[source] std::io::Error),
    #[error("TLS uprobes")]
    Tls(#[source] TlsError),
}

/// What the kernel side is loaded with.
#[derive(Clone, Copy, Debug)]
pub struct CaptureConfig {
    /// Request bytes captured per syscall (`--capture-bytes`).
    pub capture_bytes: u32,
    /// HTTP/1 requests each CPU captures per second before sampling (`--max-capture-rate`);
    /// 0: no limit.
    pub max_capture_rate: u32,
    /// Ring buffer size (`--ring-buffer-bytes`).
    pub ring_bytes: u32,
    /// TLS uprobes (`--tls`).
    pub tls: bool,
    /// Bytes of one send of an export connection read at most; 0: no wire intake.
    pub export_max_bytes: u32,
    /// The agent's own receiver ports (gRPC, HTTP; 0 when off or read off the wire too):
    /// exports to them are the receiver's.
    pub receiver_ports: (u16, u16),
}

pub struct Capture {
    /// Keeps programs and links alive; dropped last.
    ebpf: Ebpf,
    /// TLS library files probed, and their uprobe links.
    tls: TlsProbes,
    /// Processes that exec'd, from the ring buffer, to check for TLS functions.
    execs: Vec<u32>,
    /// The buffer decoded payloads are copied into.
    payloads: Payloads,
    events: AsyncFd<RingBuf<MapData>>,
    counters: PerCpuArray<MapData, u64>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    attached: usize,
    /// The last batch emptied the ring buffer.
    drained: bool,
    /// Records read since `cycle_start`, the last wait after an emptied ring: the rate the
    /// next wait is sized by.
    cycle_records: u64,
    cycle_start: Instant,
}

/// The per-CPU budget per window for `--max-capture-rate` requests per second (rounded up,
/// so a small rate still captures); 0 stays 0 (no budget).
fn capture_budget(max_capture_rate: u32) -> u32 {
    max_capture_rate.div_ceil(CAPTURE_BUDGET_WINDOWS_PER_S)
}

/// Records one wake-up after an emptied ring aims to find. Waking for every record cost more
/// CPU than handling it; waking for thousands made the agent hold a core for a millisecond or
/// more, and the watched processes' p99 latency at saturation grew by as much (measured: a
/// 10 ms wait gave +1.4–2.0 ms p99 under wrk, a 1 ms wait +0.4 ms).
const COALESCE_RECORDS: u64 = 256;
/// Bounds of the wait: the shortest keeps wake-ups at most 1000 a second (each costs ~7 µs);
/// the longest is what a quiet host waits (the 8 MiB default ring holds ~50k records, a third
/// of a second at 150k/s).
const COALESCE_MIN: Duration = Duration::from_millis(1);
const COALESCE_MAX: Duration = Duration::from_millis(10);

/// How long to let records accumulate after the ring was emptied: the time `COALESCE_RECORDS`
/// take to arrive at the rate of the last cycle (`records` in `elapsed`), within the bounds.
fn coalesce(records: u64, elapsed: Duration) -> Duration {
    if records == 0 {
        return COALESCE_MAX;
    }
    elapsed
        .mul_f64(COALESCE_RECORDS as f64 / records as f64)
        .clamp(COALESCE_MIN, COALESCE_MAX)
}

impl Capture {
    /// Loads the programs with the agent's own pid excluded and attaches them all.
    pub fn start(config: &CaptureConfig) -> Result<Self, CaptureError> {
        let CaptureConfig {
            capture_bytes,
            max_capture_rate,
            ring_bytes,
            tls,
            export_max_bytes,
            receiver_ports,
        } = *config;
        if BPF_OBJECT.is_empty() {
            return Err(CaptureError::NoObject);
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(CaptureError::NotRoot);
        }
        let own_tgid = std::process::id();
        let cap = capture_bytes.min(CAPTURE_CAP_MAX as u32);
        let kernel_offsets = offsets::from_kernel().unwrap_or_else(|e| {
            log::warn!(
                "process records without details ({}): processes are identified from /proc, \
                 and one that exits before its request is handled is not judged",
                uprobe::chain(&e)
            );
            KernelOffsets::default()
        });
        let mut ebpf = EbpfLoader::new()
            .override_global(GLOBAL_AGENT_TGID, &own_tgid, true)
            .override_global(GLOBAL_CAPTURE_CAP, &cap, true)
            .override_global(
                GLOBAL_CAPTURE_BUDGET,
                &capture_budget(max_capture_rate),
                true,
            )
            .override_global(GLOBAL_KERNEL_OFFSETS, &kernel_offsets, true)
            .override_global(GLOBAL_EXPORT_MAX_BYTES, &export_max_bytes, true)
            .override_global(
                GLOBAL_RECEIVER_PORTS,
                &(u32::from(receiver_ports.0) << 16 | u32::from(receiver_ports.1)),
                true,
            )
            .map_max_entries(MAP_EVENTS, ring_bytes)
            .load(BPF_OBJECT)
            .map_err(CaptureError::Load)?;
        let mut attached = 0;
        {
            // Parsed again after the loader (which parses its own copy and keeps it private)
            // is gone, so that the two never sit in memory together.
            let btf = Btf::from_sys_fs().map_err(CaptureError::Btf)?;
            for &(name, tracepoint) in BTF_PROGRAMS {
                let attach_error = |source| CaptureError::Attach {
                    name,
                    tracepoint,
                    source,
                };
                let program: &mut BtfTracePoint = ebpf
                    .program_mut(name)
                    .ok_or(CaptureError::MissingProgram(name))?
                    .try_into()
                    .map_err(attach_error)?;
                program.load(tracepoint, &btf).map_err(attach_error)?;
                program.attach().map_err(attach_error)?;
                attached += 1;
            }
        }
        for &(name, tracepoint) in PROGRAMS {
            let attach_error = |source| CaptureError::Attach {
                name,
                tracepoint,
                source,
            };
            let program: &mut RawTracePoint = ebpf
                .program_mut(name)
                .ok_or(CaptureError::MissingProgram(name))?
                .try_into()
                .map_err(attach_error)?;
            program.load().map_err(attach_error)?;
            program.attach(tracepoint).map_err(attach_error)?;
            attached += 1;
        }
        let tls = if tls {
            let mut tls = uprobe::load(&mut ebpf, BPF_OBJECT).map_err(CaptureError::Tls)?;
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
            TlsProbes::disabled()
        };
        // After every program is loaded: the logger takes the log map out of `ebpf`, and the
        // `uprobe_multi` loader (uprobe/multi.rs) relocates against the maps still in it.
        // The object logs only on rare paths.
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                log::debug!("no eBPF logs: {e}");
                None
            }
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
        let sampling = if max_capture_rate == 0 {
            "every request captured".to_owned()
        } else {
            format!(
                "past {max_capture_rate} HTTP/1 requests/s per CPU one in {SAMPLE_ONE_IN} captured"
            )
        };
        log::info!(
            "attached {attached} programs to raw syscall tracepoints (capture cap {cap} bytes, ring buffer {ring_bytes} bytes, {sampling}, agent pid {own_tgid} excluded)"
        );
        Ok(Self {
            ebpf,
            tls,
            execs: Vec::new(),
            payloads: Payloads::default(),
            events,
            counters,
            logger,
            attached,
            drained: false,
            cycle_records: 0,
            cycle_start: Instant::now(),
        })
    }

    pub fn attached(&self) -> usize {
        self.attached
    }

    /// Reads export connection `key` whole from its next send on (the agent found it carries
    /// trace exports; the kernel marks the ones it recognises itself).
    pub fn mark_export(&mut self, key: SocketKey, tls: bool, h2: bool) {
        // Kept: a connection on probation stays marked when its probation ends.
        let kept = self
            .ebpf
            .map_mut(MAP_EXPORT_KEEP)
            .and_then(|m| aya::maps::HashMap::<_, SocketKey, u8>::try_from(m).ok())
            .map(|mut m| m.insert(key, 1, 0));
        // Marked, unless it is already (on probation): its stream offset then goes on.
        let conn = ExportConn {
            offset: 0,
            probation_left: 0,
            tls: u8::from(tls),
            lost: 0,
            h2: u8::from(h2),
            _pad0: [0],
        };
        let marked = self
            .ebpf
            .map_mut(MAP_EXPORT_CONNS)
            .and_then(|m| aya::maps::HashMap::<_, SocketKey, ExportConn>::try_from(m).ok())
            .map(|mut m| match m.insert(key, conn, BPF_NOEXIST) {
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EEXIST) =>
                {
                    Ok(())
                }
                other => other,
            });
        let hinted = self
            .ebpf
            .map_mut(MAP_EXPORT_PROCS)
            .and_then(|m| aya::maps::Array::<_, u32>::try_from(m).ok())
            .map(|mut m| m.set(key.tgid & (EXPORT_PROCS_ENTRIES - 1), key.tgid, 0));
        if !matches!(
            (kept, marked, hinted),
            (Some(Ok(())), Some(Ok(())), Some(Ok(())))
        ) {
            log::debug!("could not mark {key:?} as an export connection");
        }
    }

    /// Go executables not probed: built before Go's register ABI.
    pub fn go_tls_too_old(&self) -> usize {
        self.tls.go_too_old()
    }

    /// Waits until the ring buffer has records, then decodes up to `max` of them. After a
    /// batch that emptied the ring, waits first ([`coalesce`]): at a steady rate the ring is
    /// nearly always empty.
    pub async fn next_batch(
        &mut self,
        max: usize,
        out: &mut Vec<Result<Record, DecodeError>>,
    ) -> std::io::Result<()> {
        if self.drained {
            let wait = coalesce(self.cycle_records, self.cycle_start.elapsed());
            self.cycle_records = 0;
            self.cycle_start = Instant::now();
            tokio::time::sleep(wait).await;
        }
        let mut guard = self.events.readable_mut().await?;
        let ring = guard.get_inner_mut();
        let before = out.len();
        while out.len() < max {
            let Some(item) = ring.next() else { break };
            push_or_exec(decode(&item, &mut self.payloads), out, &mut self.execs);
        }
        self.cycle_records += (out.len() - before) as u64;
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
    pub fn drain_now(&mut self, out: &mut Vec<Result<Record, DecodeError>>) {
        let ring = self.events.get_mut();
        while let Some(item) = ring.next() {
            push_or_exec(decode(&item, &mut self.payloads), out, &mut self.execs);
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
        let mut sums = [0u64; Counter::COUNT];
        for (counter, sum) in Counter::ALL.iter().zip(sums.iter_mut()) {
            if let Ok(values) = self.counters.get(&counter.index(), 0) {
                *sum = values.iter().sum();
            }
        }
        KernelCounters::from_values(sums)
    }
}

/// Exec records also go to `execs`: the new executable may carry a TLS stack to probe.
fn push_or_exec(
    record: Result<Record, DecodeError>,
    out: &mut Vec<Result<Record, DecodeError>>,
    execs: &mut Vec<u32>,
) {
    if let Ok(Record::Process(ProcessEvent {
        pid,
        change: ProcessChange::Exec(_),
        ..
    })) = &record
    {
        execs.push(*pid);
    }
    out.push(record);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capture_rate_becomes_a_budget_per_window_rounded_up() {
        assert_eq!(capture_budget(0), 0, "0 stays no budget");
        assert_eq!(capture_budget(1), 1);
        assert_eq!(capture_budget(1000), 10);
        assert_eq!(capture_budget(20_001), 201);
    }

    #[test]
    fn the_wait_after_an_emptied_ring_shrinks_as_the_rate_grows() {
        let second = Duration::from_secs(1);
        assert_eq!(
            coalesce(0, second),
            COALESCE_MAX,
            "nothing came: a quiet host"
        );
        assert_eq!(
            coalesce(10_000, second),
            COALESCE_MAX,
            "256 records take 25 ms"
        );
        assert_eq!(coalesce(64_000, second), Duration::from_millis(4));
        assert_eq!(
            coalesce(1_000_000, second),
            COALESCE_MIN,
            "at most 1000 wake-ups/s"
        );
    }
}
