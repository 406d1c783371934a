//! The agent's state: every captured request and every span export flows through here once, in
//! order, on one task (no locks).

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use crate::{
    capture::{CapturedEvent, DecodeError},
    correlate::{
        finding_key, judge_outbound, propagation,
        traces::{ExportedSpan, Target, TraceState},
        ProcessStats, Verdict,
    },
    findings::{Direction, FindingKey, FindingKind, FindingStore, Subject},
    h2::H2Event,
    h2_conns::H2Connections,
    http::{parse_request, Protocol, Request, HTTP2_PREFACE, OTLP_GRPC_PORT},
    k8s::PodIndex,
    otlp::{ExportBatch, Transport},
    process::{PeerCache, ProcessCache, ProcessInfo},
    trace_context::TraceHeaders,
};

/// Counts of what the agent itself skipped or could not read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentCounters {
    pub events: u64,
    pub decode_errors: u64,
    /// Captures that started with a method but were not HTTP (binary data, garbage).
    pub parse_failures: u64,
    pub undetermined: u64,
    /// Requests without context from processes whose environment could not be read (exited
    /// first, or /proc not readable): whether they were instrumented is unknown, so they are not
    /// judged.
    pub process_unknown: u64,
    /// OTLP exports seen on the wire (to this agent or elsewhere).
    pub telemetry_exports: u64,
    /// HTTP/2 calls whose headers could not be decoded (connection joined mid-way, an event
    /// lost, a truncated capture hid a frame): counted, never judged.
    pub h2_undetermined: u64,
    /// HTTP/2 connections whose frames stopped making sense (loss or not HTTP/2 after all).
    pub h2_lost_sync: u64,
    pub export_batches: u64,
    /// Export batches with no exporting pid (socket and `process.pid` both unknown).
    pub unattributed_batches: u64,
}

/// How long a process has to show it is instrumented (export spans) after a request without
/// context, before the request is called `uninstrumented_client`.
pub const INSTRUMENTATION_SETTLE: Duration = Duration::from_secs(5);
/// Requests awaiting that verdict; past it the oldest are settled at once.
const MAX_PROVISIONAL: usize = 65_536;

struct Provisional {
    due: SystemTime,
    key: FindingKey,
    info: ProcessInfo,
    evidence: BTreeMap<String, String>,
    at: SystemTime,
}

pub struct Pipeline {
    pub processes: ProcessCache,
    pub peers: PeerCache,
    pub stats: HashMap<u32, ProcessStats>,
    pub findings: FindingStore,
    pub counters: AgentCounters,
    pub traces: TraceState,
    /// Processes seen sending OTLP exports: instrumented even without OTEL_* env.
    exporters: HashSet<u32>,
    /// `service.name` from each exporting process's resource.
    exported_service: HashMap<u32, String>,
    /// HTTP/2 connections being decoded.
    pub h2: H2Connections,
    /// Requests without context awaiting the instrumentation verdict of their process.
    provisional: VecDeque<Provisional>,
    span_grace: Duration,
    /// Pods of this node, when running in a Kubernetes cluster.
    pods: Option<PodIndex>,
    /// Wall clock minus CLOCK_MONOTONIC, to date kernel timestamps.
    boot_offset: Duration,
}

impl Pipeline {
    pub fn new(span_grace: Duration, pods: Option<PodIndex>) -> Self {
        Self {
            processes: ProcessCache::default(),
            peers: PeerCache::default(),
            stats: HashMap::new(),
            findings: FindingStore::default(),
            counters: AgentCounters::default(),
            traces: TraceState::default(),
            exporters: HashSet::new(),
            exported_service: HashMap::new(),
            provisional: VecDeque::new(),
            h2: H2Connections::default(),
            span_grace,
            pods,
            boot_offset: boot_offset(),
        }
    }

    pub fn handle(&mut self, event: Result<CapturedEvent, DecodeError>) {
        self.counters.events += 1;
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                self.counters.decode_errors += 1;
                log::debug!("undecodable ring buffer record: {e}");
                return;
            }
        };
        let preface = event.data.starts_with(HTTP2_PREFACE);
        if preface {
            self.h2_preface(&event);
        }
        if event.h2() || preface {
            for h2_event in self.h2.feed(&event) {
                match h2_event {
                    H2Event::Request(r) => {
                        let protocol = if r.is_grpc() {
                            Protocol::Grpc
                        } else {
                            Protocol::H2
                        };
                        let req = Request {
                            method: r.method,
                            path: r.path,
                            trace: TraceHeaders { headers: r.headers },
                            complete: true,
                            protocol,
                        };
                        self.handle_request(&event, &req);
                    }
                    H2Event::Undetermined { .. } => self.counters.h2_undetermined += 1,
                    H2Event::LostSync(_) => self.counters.h2_lost_sync += 1,
                }
            }
            return;
        }
        let Ok(req) = parse_request(&event.data) else {
            self.counters.parse_failures += 1;
            return;
        };
        self.handle_request(&event, &req);
    }

    /// One request (HTTP/1 or one HTTP/2 stream's headers) of a captured event.
    fn handle_request(&mut self, event: &CapturedEvent, req: &Request) {
        let at =
            SystemTime::UNIX_EPOCH + self.boot_offset + Duration::from_nanos(event.monotonic_ns);
        let info: ProcessInfo = self.processes.get(event.pid, &event.comm).clone();
        let stats = self.stats.entry(event.pid).or_default();
        stats.last_seen = Some(at);
        if event.direction == Direction::Inbound {
            stats.inbound += 1;
            if !req.is_telemetry() {
                if let Some(tp) = req.trace.traceparent() {
                    self.traces.inbound(event.pid, at, tp);
                }
            }
            return;
        }
        let instrumented = info.otel_env || self.exporters.contains(&event.pid);
        let verdict = judge_outbound(req, instrumented);
        match &verdict {
            Verdict::Telemetry => {
                stats.telemetry_exports += 1;
                self.counters.telemetry_exports += 1;
                self.exporters.insert(event.pid);
                return;
            }
            Verdict::Undetermined => self.counters.undetermined += 1,
            Verdict::Clean | Verdict::Finding(..) => {}
        }
        stats.count_outbound(propagation(req));
        let peer = match event.peer {
            Some(peer) => Some(peer),
            None if info.exited => None,
            None => self.peers.get(event.pid, event.fd),
        };
        if let Some(tp) = req.trace.traceparent() {
            self.traces
                .outbound(event.pid, at, tp, target(peer, req), self.span_grace);
        }
        let Verdict::Finding(kind, evidence) = verdict else {
            return;
        };
        let mut key = finding_key(kind, event.pid, Direction::Outbound, peer, req);
        key.tls = event.tls();
        if kind == FindingKind::UninstrumentedClient {
            // The process may export spans a moment later (SDKs export after the request):
            // decide between missing_traceparent and uninstrumented_client once that had time.
            if self.provisional.len() >= MAX_PROVISIONAL {
                self.resolve_provisional(|_| true);
            }
            self.provisional.push_back(Provisional {
                due: at + INSTRUMENTATION_SETTLE,
                key,
                info,
                evidence,
                at,
            });
            return;
        }
        let subject = self.subject(&info);
        self.findings.record(key, &subject, evidence, at);
    }

    /// Settles requests without context from processes not known to be instrumented when they
    /// were sent: seen exporting since → `missing_traceparent`; environment unreadable (exited
    /// first, or no permission) → not judged (counted); otherwise `uninstrumented_client`.
    fn resolve_provisional(&mut self, ready: impl Fn(&Provisional) -> bool) {
        let (now_ready, waiting): (VecDeque<_>, VecDeque<_>) =
            std::mem::take(&mut self.provisional)
                .into_iter()
                .partition(|p| ready(p));
        self.provisional = waiting;
        for p in now_ready {
            let mut key = p.key;
            if self.exporters.contains(&key.pid) {
                key.kind = FindingKind::MissingTraceparent;
            } else if p.info.exited || !p.info.environ_readable {
                self.counters.process_unknown += 1;
                continue;
            }
            let subject = self.subject(&p.info);
            self.findings.record(key, &subject, p.evidence, p.at);
        }
    }

    /// A connection starting HTTP/2 to the OTLP/gRPC port: the process exports spans (known
    /// before its first export call is decoded, and even if that call cannot be).
    fn h2_preface(&mut self, event: &CapturedEvent) {
        if event.direction == Direction::Outbound
            && event.peer.is_some_and(|p| p.port() == OTLP_GRPC_PORT)
        {
            self.exporters.insert(event.pid);
        }
    }

    /// One export request's spans from one process.
    pub fn handle_export(&mut self, batch: ExportBatch) {
        self.counters.export_batches += 1;
        let Some(pid) = batch.pid else {
            self.counters.unattributed_batches += 1;
            return;
        };
        self.exporters.insert(pid);
        if let Some(name) = batch.service_name {
            self.exported_service.insert(pid, name);
        }
        let spans: Vec<ExportedSpan> = batch
            .spans
            .iter()
            .map(|s| ExportedSpan {
                trace_id: s.trace_id,
                span_id: s.span_id,
                parent_span_id: s.parent_span_id,
                start: SystemTime::UNIX_EPOCH + Duration::from_nanos(s.start_unix_nanos),
                end: SystemTime::UNIX_EPOCH + Duration::from_nanos(s.end_unix_nanos),
            })
            .collect();
        if let Some(evidence) = self.traces.exported(pid, batch.received_at, &spans) {
            let path = match batch.transport {
                Transport::Grpc => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                Transport::HttpProtobuf | Transport::HttpJson => "/v1/traces",
            };
            let key = FindingKey {
                kind: FindingKind::SynchronousExport,
                pid,
                direction: Direction::Outbound,
                peer: None,
                method: "POST".into(),
                path: path.into(),
                tls: false,
                protocol: match batch.transport {
                    Transport::Grpc => crate::http::Protocol::Grpc,
                    Transport::HttpProtobuf | Transport::HttpJson => crate::http::Protocol::Http1,
                },
            };
            let info = self.processes.get(pid, "").clone();
            let subject = self.subject(&info);
            self.findings
                .record(key, &subject, evidence, batch.received_at);
        }
    }

    /// Judges outbound contexts whose span grace window ended, and settles provisional verdicts.
    pub fn judge_due(&mut self, now: SystemTime) {
        self.resolve_provisional(|p| p.due <= now);
        for f in self.traces.judge_due(now) {
            let info = self.processes.get(f.pid, "").clone();
            let subject = self.subject(&info);
            let key = FindingKey {
                kind: f.kind,
                pid: f.pid,
                direction: Direction::Outbound,
                peer: f.target.peer,
                method: f.target.method,
                path: f.target.path,
                tls: false,
                protocol: f.target.protocol,
            };
            self.findings.record(key, &subject, f.evidence, f.at);
        }
    }

    /// At exit: what is still waiting for spans is uncertain, not a finding.
    pub fn finish(&mut self) {
        self.resolve_provisional(|_| true);
        self.judge_due(SystemTime::now());
        self.traces.finish();
    }

    /// Forgets processes that exited (their findings stay until reported and evicted).
    pub fn sweep(&mut self) {
        let alive = |pid: u32| std::path::Path::new(&format!("/proc/{pid}")).exists();
        // An exited process exports nothing more: settle its requests before forgetting it.
        self.resolve_provisional(|p| !alive(p.key.pid));
        self.processes.sweep();
        self.exporters.retain(|pid| alive(*pid));
        self.exported_service.retain(|pid, _| alive(*pid));
        self.traces.retain(alive);
        self.h2.retain(alive);
        if self.stats.len() > crate::process::MAX_PROCESSES {
            self.stats.retain(|pid, _| alive(*pid));
        }
    }

    /// The service name: OTEL_* environment first, else the resource of its span exports.
    pub fn service_name(&self, pid: u32) -> Option<String> {
        self.processes
            .cached(pid)
            .and_then(|i| i.service_name.clone())
            .or_else(|| self.exported_service.get(&pid).cloned())
    }

    fn subject(&self, info: &ProcessInfo) -> Subject {
        Subject {
            comm: info.comm.clone(),
            exe: info.exe.clone(),
            service_name: info
                .service_name
                .clone()
                .or_else(|| self.exported_service.get(&info.pid).cloned()),
            container_id: info.container_id.clone(),
            k8s: self
                .pods
                .as_ref()
                .zip(info.container.as_ref())
                .and_then(|(pods, c)| pods.lookup(c))
                .map(|pod| crate::k8s::otel_attributes(&pod))
                .unwrap_or_default(),
        }
    }
}

fn target(peer: Option<SocketAddr>, req: &Request) -> Target {
    Target {
        peer,
        method: req.method.clone(),
        path: req.path.clone(),
        protocol: req.protocol,
    }
}

fn boot_offset() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let monotonic = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_sub(monotonic)
}
