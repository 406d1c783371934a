//! Who sent a request: the process (comm, executable, OTel environment, service name, the
//! OpenTelemetry it links), its container and pod, and the socket's peer. Read from /proc, the
//! executable and the Kubernetes API, cached.
//!
//! Layout: `process` (pid → [`ProcessInfo`]), `inventory` (runtime and OpenTelemetry
//! components), `peer` (fd → peer address), `cgroup` (container and pod ids from the cgroup
//! path), `k8s` (the pods of this node).

pub mod cgroup;
pub mod inventory;
pub mod k8s;
pub mod peer;
pub mod process;

use std::{collections::HashSet, net::SocketAddr, sync::Arc};

use self::{
    inventory::{Inventories, Inventory, InventoryCounters},
    k8s::PodIndex,
    peer::PeerCache,
    process::{ExecFacts, ProcessCache, ProcessInfo},
};
use crate::{
    capture::{CapturedEvent, ProcessChange, ProcessEvent},
    model::{PidMap, MAX_PROCESSES},
};

/// The process a finding is about, as known when it was raised.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subject {
    pub comm: String,
    pub exe: Option<String>,
    pub service_name: Option<String>,
    pub container_id: Option<String>,
    /// `k8s.*` resource attributes of the process's pod, when running in a cluster.
    pub k8s: Vec<(&'static str, String)>,
    /// Its runtime and OpenTelemetry components; `None` when they could not be read.
    pub inventory: Option<Arc<Inventory>>,
}

/// How a process is named in the table, coverage lines and check summaries: kept as long as
/// its request counts are, after the process itself is forgotten.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Label {
    pub comm: String,
    pub service_name: Option<String>,
    pub inventory: Option<Arc<Inventory>>,
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
    pub inventory: InventoryCounters,
}

/// The attribute stage.
pub struct Attributor {
    processes: ProcessCache,
    inventories: Inventories,
    peers: PeerCache,
    /// `service.name` from each exporting process's resource.
    exported_service: PidMap<u32, String>,
    /// Pods of this node, when running in a Kubernetes cluster.
    pods: Option<PodIndex>,
    /// A process and its descendants, followed through fork records (`tracegap check`).
    tree: Option<HashSet<u32>>,
    /// Names of processes that made requests.
    labels: PidMap<u32, Label>,
    /// The subject last built for each process, shared by its findings until one of its
    /// sources changes (see [`CachedSubject`]).
    subjects: PidMap<u32, CachedSubject>,
}

/// A [`Subject`] and what it was built from: it is built again when the process entry, the
/// inventory or the pod index changed (the exported service name drops it outright).
struct CachedSubject {
    info: Arc<ProcessInfo>,
    inventory: Option<Arc<Inventory>>,
    pods_generation: u64,
    subject: Arc<Subject>,
}

/// Both absent, or the same shared value (not merely equal).
fn same_arc<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (a, b) => a.is_none() && b.is_none(),
    }
}

impl Attributor {
    pub fn new(pods: Option<PodIndex>) -> Self {
        Self {
            processes: ProcessCache::default(),
            inventories: Inventories::default(),
            peers: PeerCache::default(),
            exported_service: PidMap::default(),
            pods,
            tree: None,
            labels: PidMap::default(),
            subjects: PidMap::default(),
        }
    }

    /// A process exec'd, forked or ended.
    pub fn process_changed(&mut self, event: &ProcessEvent) {
        match &event.change {
            ProcessChange::Exec(Some(details)) => {
                self.processes.exec(
                    event.pid,
                    &ExecFacts {
                        comm: &event.comm,
                        path: details.path.as_deref(),
                        env: &details.env,
                        env_complete: details.env_complete,
                        cgroup_id: details.cgroup_id,
                    },
                );
                // The executable is read now, while the process is there to open it.
                let exe = self.processes.cached(event.pid).and_then(|i| i.exe.clone());
                self.inventories.exec(event.pid, exe.as_deref());
            }
            // Who it is now, /proc will tell.
            ProcessChange::Exec(None) => {
                self.processes.forget(event.pid);
                self.inventories.forget(event.pid);
            }
            ProcessChange::Fork { parent } => {
                self.processes.fork(*parent, event.pid, &event.comm);
                self.inventories.fork(*parent, event.pid);
                if let Some(tree) = &mut self.tree {
                    // A pid reused by a process outside the tree leaves it.
                    if tree.contains(parent) {
                        tree.insert(event.pid);
                    } else {
                        tree.remove(&event.pid);
                    }
                }
            }
            ProcessChange::Exit => self.processes.exit(event.pid),
        }
    }

    /// Follows `root` and every process it forks from now on, and theirs.
    pub fn follow_tree(&mut self, root: u32) {
        self.tree.get_or_insert_with(HashSet::new).insert(root);
    }

    /// The processes followed: the root and its descendants (exited ones included).
    pub fn tree(&self) -> Option<&HashSet<u32>> {
        self.tree.as_ref()
    }

    /// The process that made the syscall of `event`.
    pub fn process(&mut self, event: &CapturedEvent) -> Arc<ProcessInfo> {
        let info = Arc::clone(self.processes.get(event.pid, &event.comm));
        let inventory = self.inventories.of(&info);
        // Borrowed: the label is compared on every event and copied only when it changed.
        let service_name = info
            .service_name
            .as_ref()
            .or_else(|| self.exported_service.get(&event.pid));
        let same_inventory = |l: &Label| same_arc(&l.inventory, &inventory);
        match self.labels.get_mut(&event.pid) {
            Some(l)
                if l.comm == info.comm
                    && l.service_name.as_ref() == service_name
                    && same_inventory(l) => {}
            Some(l) => {
                l.comm.clone_from(&info.comm);
                l.service_name = service_name.cloned();
                l.inventory = inventory;
            }
            None => {
                self.labels.insert(
                    event.pid,
                    Label {
                        comm: info.comm.clone(),
                        service_name: service_name.cloned(),
                        inventory,
                    },
                );
            }
        }
        info
    }

    /// How `pid` is named, if it made requests.
    pub fn label(&self, pid: u32) -> Option<&Label> {
        self.labels.get(&pid)
    }

    /// A process known by pid alone (a span export, a verdict due later).
    pub fn process_by_pid(&mut self, pid: u32) -> Arc<ProcessInfo> {
        Arc::clone(self.processes.get(pid, ""))
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
        if self.exported_service.get(&pid) != Some(&name) {
            self.subjects.remove(&pid);
        }
        if let Some(label) = self.labels.get_mut(&pid) {
            if label.service_name.is_none() {
                label.service_name = Some(name.clone());
            }
        }
        self.exported_service.insert(pid, name);
    }

    /// The service name: OTEL_* environment first, else the resource of its span exports.
    pub fn service_name(&self, pid: u32) -> Option<String> {
        self.processes
            .cached(pid)
            .and_then(|i| i.service_name.clone())
            .or_else(|| self.exported_service.get(&pid).cloned())
    }

    /// The process, for a finding: built once per process and shared, until what it is built
    /// from changes.
    pub fn subject(&mut self, info: &Arc<ProcessInfo>) -> Arc<Subject> {
        let inventory = self.inventories.get(info.pid);
        let pods_generation = self.pods.as_ref().map_or(0, PodIndex::generation);
        if let Some(c) = self.subjects.get(&info.pid) {
            if Arc::ptr_eq(&c.info, info)
                && same_arc(&c.inventory, &inventory)
                && c.pods_generation == pods_generation
            {
                return Arc::clone(&c.subject);
            }
        }
        let subject = Arc::new(Subject {
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
            inventory: inventory.clone(),
        });
        // Bounded like the process cache; entries of forgotten processes go at the sweep.
        if self.subjects.len() >= MAX_PROCESSES && !self.subjects.contains_key(&info.pid) {
            self.subjects.clear();
        }
        self.subjects.insert(
            info.pid,
            CachedSubject {
                info: Arc::clone(info),
                inventory,
                pods_generation,
                subject: Arc::clone(&subject),
            },
        );
        subject
    }

    /// Forgets processes that exited, but those of the tree followed; labels go with the
    /// request counts they name (`has_counts`).
    pub fn sweep(&mut self, alive: impl Fn(u32) -> bool, has_counts: impl Fn(u32) -> bool) {
        let tree = self.tree.as_ref();
        let in_tree = |pid: u32| tree.is_some_and(|t| t.contains(&pid));
        self.processes.sweep(in_tree);
        let processes = &self.processes;
        self.inventories
            .sweep(|pid| processes.cached(pid).is_some() || has_counts(pid));
        self.exported_service
            .retain(|pid, _| alive(*pid) || in_tree(*pid));
        self.labels
            .retain(|pid, _| has_counts(*pid) || in_tree(*pid));
        let processes = &self.processes;
        self.subjects
            .retain(|pid, _| processes.cached(*pid).is_some());
    }

    pub fn counters(&self) -> AttributeCounters {
        AttributeCounters {
            exited_before_lookup: self.processes.exited_before_lookup,
            processes_cached: self.processes.len() as u64,
            from_records: self.processes.from_records,
            evicted: self.processes.evicted,
            inventory: self.inventories.counters.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_is_shared_until_what_it_is_built_from_changes() {
        let mut attributor = Attributor::new(None);
        let pid = std::process::id();
        let info = attributor.process_by_pid(pid);
        let first = attributor.subject(&info);
        assert!(
            Arc::ptr_eq(&first, &attributor.subject(&info)),
            "built once per process"
        );
        attributor.learn_exported_service(pid, "checkout".into());
        let named = attributor.subject(&info);
        assert!(
            !Arc::ptr_eq(&first, &named),
            "a new service name builds it again"
        );
        let expected = info
            .service_name
            .clone()
            .unwrap_or_else(|| "checkout".into());
        assert_eq!(named.service_name.as_deref(), Some(expected.as_str()));
        attributor.process_changed(&ProcessEvent {
            monotonic_ns: 0,
            pid,
            comm: info.comm.as_str().into(),
            change: ProcessChange::Exec(None),
        });
        let reloaded = attributor.process_by_pid(pid);
        assert!(
            !Arc::ptr_eq(&named, &attributor.subject(&reloaded)),
            "a new process entry builds it again"
        );
    }
}
