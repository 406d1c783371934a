//! Who sent a request: the process (comm, executable, OTel environment, service name), its
//! container and pod, and the socket's peer. Read from /proc and the Kubernetes API, cached.
//!
//! Layout: `process` (pid → [`ProcessInfo`]), `peer` (fd → peer address), `cgroup` (container
//! and pod ids from the cgroup path), `k8s` (the pods of this node).

pub mod cgroup;
pub mod k8s;
pub mod peer;
pub mod process;

use std::{collections::HashMap, net::SocketAddr};

use self::{
    k8s::PodIndex,
    peer::PeerCache,
    process::{ExecFacts, ProcessCache, ProcessInfo},
};
use crate::capture::{CapturedEvent, ProcessChange, ProcessEvent};

/// The process a finding is about, as known when it was raised.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subject {
    pub comm: String,
    pub exe: Option<String>,
    pub service_name: Option<String>,
    pub container_id: Option<String>,
    /// `k8s.*` resource attributes of the process's pod, when running in a cluster.
    pub k8s: Vec<(&'static str, String)>,
}

/// Counts of what this stage learned and could not learn.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttributeCounters {
    /// Processes gone from /proc when they were looked up, with no record telling who they
    /// were.
    pub exited_before_lookup: u64,
    pub processes_cached: u64,
    /// Processes known from the kernel's exec and fork records.
    pub from_records: u64,
    /// Processes forgotten to stay within `MAX_PROCESSES`.
    pub evicted: u64,
}

/// The attribute stage.
pub struct Attributor {
    processes: ProcessCache,
    peers: PeerCache,
    /// `service.name` from each exporting process's resource.
    exported_service: HashMap<u32, String>,
    /// Pods of this node, when running in a Kubernetes cluster.
    pods: Option<PodIndex>,
}

impl Attributor {
    pub fn new(pods: Option<PodIndex>) -> Self {
        Self {
            processes: ProcessCache::default(),
            peers: PeerCache::default(),
            exported_service: HashMap::new(),
            pods,
        }
    }

    /// A process exec'd, forked or ended.
    pub fn process_changed(&mut self, event: &ProcessEvent) {
        match &event.change {
            ProcessChange::Exec(Some(details)) => self.processes.exec(
                event.pid,
                &ExecFacts {
                    comm: &event.comm,
                    path: details.path.as_deref(),
                    env: &details.env,
                    env_complete: details.env_complete,
                    cgroup_id: details.cgroup_id,
                },
            ),
            // Who it is now, /proc will tell.
            ProcessChange::Exec(None) => self.processes.forget(event.pid),
            ProcessChange::Fork { parent } => {
                self.processes.fork(*parent, event.pid, &event.comm);
            }
            ProcessChange::Exit => self.processes.exit(event.pid),
        }
    }

    /// The process that made the syscall of `event`.
    pub fn process(&mut self, event: &CapturedEvent) -> ProcessInfo {
        self.processes.get(event.pid, &event.comm).clone()
    }

    /// A process known by pid alone (a span export, a verdict due later).
    pub fn process_by_pid(&mut self, pid: u32) -> ProcessInfo {
        self.processes.get(pid, "").clone()
    }

    /// The cached entry of `pid`, without touching /proc.
    pub fn cached(&self, pid: u32) -> Option<&ProcessInfo> {
        self.processes.cached(pid)
    }

    /// The peer of the event's socket: the kernel's (seen at `connect`), else /proc's while the
    /// process is alive.
    pub fn peer(&mut self, event: &CapturedEvent, info: &ProcessInfo) -> Option<SocketAddr> {
        match event.peer {
            Some(peer) => Some(peer),
            None if info.exited => None,
            None => self.peers.get(event.pid, event.fd),
        }
    }

    /// `pid` exported spans with this `service.name` in its resource.
    pub fn learn_exported_service(&mut self, pid: u32, name: String) {
        self.exported_service.insert(pid, name);
    }

    /// The service name: OTEL_* environment first, else the resource of its span exports.
    pub fn service_name(&self, pid: u32) -> Option<String> {
        self.processes
            .cached(pid)
            .and_then(|i| i.service_name.clone())
            .or_else(|| self.exported_service.get(&pid).cloned())
    }

    pub fn subject(&self, info: &ProcessInfo) -> Subject {
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
                .map(|pod| k8s::otel_attributes(&pod))
                .unwrap_or_default(),
        }
    }

    /// Forgets processes that exited.
    pub fn sweep(&mut self, alive: impl Fn(u32) -> bool) {
        self.processes.sweep();
        self.exported_service.retain(|pid, _| alive(*pid));
    }

    pub fn counters(&self) -> AttributeCounters {
        AttributeCounters {
            exited_before_lookup: self.processes.exited_before_lookup,
            processes_cached: self.processes.len() as u64,
            from_records: self.processes.from_records,
            evicted: self.processes.evicted,
        }
    }
}
