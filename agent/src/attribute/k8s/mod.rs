//! Pod attribution when the agent runs in a Kubernetes cluster.
//!
//! In a cluster (`KUBERNETES_SERVICE_HOST`/`_PORT` set and a service account mounted) a
//! background task lists and watches the pods of this node (`NODE_NAME`, from the DaemonSet's
//! downward API) and keeps a [`PodIndex`]: pod UID → [`PodMetadata`], and container id → pod UID
//! so that a process whose cgroup path names no pod (the cgroupfs driver on some runtimes, static
//! pods) is still attributed. Outside a cluster the feature is off: [`start_in_cluster`] returns
//! `None` and says so once.
//!
//! The API access is a plain HTTPS client (reqwest + rustls, the cluster CA as the only root):
//! one list, then a `watch=true` stream of JSON lines from its resource version; a 410 Gone
//! (resource version compacted away) means relist, any other failure means retry with backoff.

mod api;
mod watch;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Once, PoisonError, RwLock,
    },
    time::Duration,
};

pub use self::watch::PodWatcher;
use crate::attribute::cgroup::ContainerInfo;

/// Where Kubernetes mounts the pod's service account.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// What the agent knows about a pod on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMetadata {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub node_name: Option<String>,
    /// `Deployment` when the pod's ReplicaSet carries the Deployment's `pod-template-hash`;
    /// otherwise the controller's own kind (`ReplicaSet`, `StatefulSet`, `DaemonSet`, `Job`,
    /// `Node` for static pods, ...).
    pub owner_kind: Option<String>,
    pub owner_name: Option<String>,
}

/// Errors of the Kubernetes module. The watch task logs them and retries; only configuration
/// errors reach the caller.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error("failed to read {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid CA certificate in {path}")]
    Certificate {
        path: PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("failed to build the HTTP client")]
    Client {
        #[source]
        source: reqwest::Error,
    },
    #[error("{op} {url} failed")]
    Request {
        op: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{op} {url} answered HTTP {status}")]
    Status {
        op: &'static str,
        url: String,
        status: u16,
    },
    #[error("the watch's resource version is gone (HTTP 410): relisting")]
    Gone,
    #[error("watch ended with an error event: {code:?} {reason:?}: {message:?}")]
    WatchError {
        code: Option<u16>,
        reason: Option<String>,
        message: Option<String>,
    },
    #[error("malformed {what} JSON")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("unknown watch event type {kind:?}")]
    UnknownWatchEvent { kind: String },
    #[error("watch line longer than {limit} bytes")]
    LineTooLong { limit: usize },
    #[error("watch stream idle for {idle:?}")]
    Idle { idle: Duration },
}

/// How the API server is reached. Everything is injectable so the watch can be tested against
/// a plain-HTTP fake server.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `https://<KUBERNETES_SERVICE_HOST>:<KUBERNETES_SERVICE_PORT>` in a cluster.
    pub base_url: String,
    /// Bearer token source; `None` sends no Authorization header.
    pub token: Option<Token>,
    /// PEM bundle trusted as the only roots; `None` uses no TLS roots (plain HTTP only).
    pub ca_pem: Option<Vec<u8>>,
    /// Restrict the watch to this node's pods; `None` watches every pod of the cluster.
    pub node_name: Option<String>,
    /// First retry delay; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Server-side watch timeout (`timeoutSeconds`); the stream is reopened after it.
    pub watch_timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum Token {
    /// Re-read before every request: the kubelet rotates projected service account tokens
    /// (client-go reloads the file too).
    File(PathBuf),
    Static(String),
}

impl ClusterConfig {
    /// `Ok(None)` outside a cluster; `Err` when the cluster variables are set but the service
    /// account files cannot be read.
    pub fn from_env() -> Result<Option<Self>, K8sError> {
        let (Ok(host), Ok(port)) = (
            std::env::var("KUBERNETES_SERVICE_HOST"),
            std::env::var("KUBERNETES_SERVICE_PORT"),
        ) else {
            return Ok(None);
        };
        let dir = Path::new(SERVICE_ACCOUNT_DIR);
        let token = dir.join("token");
        if !token.is_file() {
            // Variables without a service account: automountServiceAccountToken is false, or
            // this is not a pod at all (a host that exported the variables). Treat as off.
            return Ok(None);
        }
        let ca_path = dir.join("ca.crt");
        let ca_pem = read(&ca_path)?;
        let namespace = read(&dir.join("namespace"))
            .map(|n| String::from_utf8_lossy(&n).trim().to_owned())
            .unwrap_or_default();
        let node_name = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty());
        if node_name.is_none() {
            log::warn!(
                "k8s: NODE_NAME is not set (the DaemonSet sets it from spec.nodeName): \
                 watching every pod of the cluster"
            );
        }
        // An IPv6 service host must be bracketed in a URL.
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        log::info!("k8s: in cluster (agent namespace {namespace:?}), API server {host}:{port}");
        Ok(Some(Self {
            base_url: format!("https://{host}:{port}"),
            token: Some(Token::File(token)),
            ca_pem: Some(ca_pem),
            node_name,
            ..Self::new(String::new())
        }))
    }

    /// Defaults for everything but the URL.
    pub fn new(base_url: String) -> Self {
        Self {
            base_url,
            token: None,
            ca_pem: None,
            node_name: None,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            watch_timeout: Duration::from_secs(290),
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, K8sError> {
    std::fs::read(path).map_err(|source| K8sError::ReadFile {
        path: path.to_owned(),
        source,
    })
}

/// Starts the pod watch when in a cluster; `None` (logged once) otherwise or when the service
/// account is unusable. Must be called inside a tokio runtime.
pub fn start_in_cluster() -> Option<PodWatcher> {
    static OFF: Once = Once::new();
    let config = match ClusterConfig::from_env() {
        Ok(Some(config)) => config,
        Ok(None) => {
            OFF.call_once(|| log::info!("k8s: not in a cluster, pod attribution is off"));
            return None;
        }
        Err(e) => {
            log::warn!("k8s: pod attribution is off: {}", error_chain(&e));
            return None;
        }
    };
    match PodWatcher::start(config) {
        Ok(watcher) => Some(watcher),
        Err(e) => {
            log::warn!("k8s: pod attribution is off: {}", error_chain(&e));
            None
        }
    }
}

/// `error: cause: cause` for log lines, since `Display` of these errors leaves the source out.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Pods of this node, shared between the watch task and the lookups. Cloning is cheap.
#[derive(Debug, Clone, Default)]
pub struct PodIndex {
    inner: Arc<RwLock<IndexState>>,
    /// Bumped at every change, so that what was built from a lookup knows when to look again.
    generation: Arc<AtomicU64>,
}

#[derive(Debug, Default)]
struct IndexState {
    pods: HashMap<String, PodMetadata>,
    /// Container id (no scheme) → pod UID.
    containers: HashMap<String, String>,
    /// Static pod config hash (the UID in its cgroup path) → API pod UID.
    mirrors: HashMap<String, String>,
    /// Pod UID → its container ids and mirror hash, to remove them on update or delete.
    keys: HashMap<String, (Vec<String>, Option<String>)>,
}

impl IndexState {
    fn upsert(&mut self, pod: &api::Pod) {
        let Some(meta) = api::pod_metadata(pod) else {
            return;
        };
        self.remove(&meta.uid);
        let ids = api::container_ids(pod);
        for id in &ids {
            self.containers.insert(id.clone(), meta.uid.clone());
        }
        let mirror = api::mirror_hash(pod).map(str::to_owned);
        if let Some(hash) = &mirror {
            self.mirrors.insert(hash.clone(), meta.uid.clone());
        }
        self.keys.insert(meta.uid.clone(), (ids, mirror));
        self.pods.insert(meta.uid.clone(), meta);
    }

    fn remove(&mut self, uid: &str) {
        self.pods.remove(uid);
        if let Some((ids, mirror)) = self.keys.remove(uid) {
            for id in ids {
                // Only if still ours: a container id never moves between pods, but be exact.
                if self.containers.get(&id).is_some_and(|u| u == uid) {
                    self.containers.remove(&id);
                }
            }
            if let Some(hash) = mirror {
                if self.mirrors.get(&hash).is_some_and(|u| u == uid) {
                    self.mirrors.remove(&hash);
                }
            }
        }
    }
}

impl PodIndex {
    /// The pod of a container: by the pod UID from its cgroup path (directly, or as a static
    /// pod's config hash), else by its container id.
    pub fn lookup(&self, container: &ContainerInfo) -> Option<PodMetadata> {
        let state = self.read();
        let by_uid = container.pod_uid.as_deref().and_then(|uid| {
            state.pods.get(uid).or_else(|| {
                state
                    .mirrors
                    .get(uid)
                    .and_then(|api_uid| state.pods.get(api_uid))
            })
        });
        by_uid
            .or_else(|| {
                state
                    .containers
                    .get(&container.container_id)
                    .and_then(|uid| state.pods.get(uid))
            })
            .cloned()
    }

    /// Changes whenever the index does.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Number of pods known, for status output.
    pub fn len(&self) -> usize {
        self.read().pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces everything with a fresh list (after start and after 410 Gone): pods deleted
    /// while the watch was down disappear.
    fn replace_all(&self, pods: &[api::Pod]) {
        let mut fresh = IndexState::default();
        for pod in pods {
            fresh.upsert(pod);
        }
        *self.write() = fresh;
        self.changed();
    }

    fn upsert(&self, pod: &api::Pod) {
        self.write().upsert(pod);
        self.changed();
    }

    fn remove(&self, pod: &api::Pod) {
        self.write().remove(&pod.metadata.uid);
        self.changed();
    }

    /// Bumped after the change landed, and read before a lookup: a lookup that raced a change
    /// is done again next time, never kept.
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    // A panic while holding the lock cannot leave the maps half-updated in a way that matters
    // more than losing attribution, so a poisoned lock is used as is.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, IndexState> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, IndexState> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// OpenTelemetry resource attributes (semantic conventions `k8s.*`) for a pod.
pub fn otel_attributes(meta: &PodMetadata) -> Vec<(&'static str, String)> {
    let mut attrs = vec![
        ("k8s.pod.name", meta.name.clone()),
        ("k8s.namespace.name", meta.namespace.clone()),
        ("k8s.pod.uid", meta.uid.clone()),
    ];
    if let Some(node) = &meta.node_name {
        attrs.push(("k8s.node.name", node.clone()));
    }
    if let (Some(kind), Some(name)) = (&meta.owner_kind, &meta.owner_name) {
        let key = match kind.as_str() {
            "Deployment" => Some("k8s.deployment.name"),
            "StatefulSet" => Some("k8s.statefulset.name"),
            "DaemonSet" => Some("k8s.daemonset.name"),
            "Job" => Some("k8s.job.name"),
            "ReplicaSet" => Some("k8s.replicaset.name"),
            // CronJob pods are owned by a Job; Node owns static pods: no convention applies.
            _ => None,
        };
        if let Some(key) = key {
            attrs.push((key, name.clone()));
        }
    }
    attrs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: &str) -> api::Pod {
        serde_json::from_str(json).expect("pod json")
    }

    #[test]
    fn lookup_by_uid_container_id_and_mirror_hash() {
        let index = PodIndex::default();
        index.replace_all(&[
            pod(r#"{"metadata":{"name":"a","namespace":"ns","uid":"uid-a"},
                   "status":{"containerStatuses":[{"containerID":"containerd://ida"}]}}"#),
            pod(
                r#"{"metadata":{"name":"static","namespace":"kube-system","uid":"uid-s",
                   "annotations":{"kubernetes.io/config.mirror":"hash-s"}}}"#,
            ),
        ]);
        let info = |id: &str, uid: Option<&str>| ContainerInfo {
            container_id: id.to_owned(),
            runtime: None,
            pod_uid: uid.map(str::to_owned),
        };
        let name = |c: ContainerInfo| index.lookup(&c).map(|m| m.name);
        assert_eq!(name(info("other", Some("uid-a"))).as_deref(), Some("a"));
        assert_eq!(name(info("ida", None)).as_deref(), Some("a"));
        // Unknown UID in the cgroup path: the container id still finds it.
        assert_eq!(name(info("ida", Some("uid-x"))).as_deref(), Some("a"));
        assert_eq!(name(info("x", Some("hash-s"))).as_deref(), Some("static"));
        assert_eq!(name(info("x", None)), None);

        // Update replaces the container ids; delete removes all keys.
        index.upsert(&pod(
            r#"{"metadata":{"name":"a","namespace":"ns","uid":"uid-a"},
                "status":{"containerStatuses":[{"containerID":"containerd://idb"}]}}"#,
        ));
        assert_eq!(name(info("ida", None)), None);
        assert_eq!(name(info("idb", None)).as_deref(), Some("a"));
        index.remove(&pod(r#"{"metadata":{"uid":"uid-a"}}"#));
        assert_eq!(name(info("idb", None)), None);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn otel_attributes_name_the_owner() {
        let mut meta = PodMetadata {
            uid: "u".into(),
            name: "web-6b7c9d-abcde".into(),
            namespace: "shop".into(),
            node_name: Some("node-1".into()),
            owner_kind: Some("Deployment".into()),
            owner_name: Some("web".into()),
        };
        assert_eq!(
            otel_attributes(&meta),
            [
                ("k8s.pod.name", "web-6b7c9d-abcde".to_owned()),
                ("k8s.namespace.name", "shop".to_owned()),
                ("k8s.pod.uid", "u".to_owned()),
                ("k8s.node.name", "node-1".to_owned()),
                ("k8s.deployment.name", "web".to_owned()),
            ]
        );
        for (kind, key) in [
            ("StatefulSet", "k8s.statefulset.name"),
            ("DaemonSet", "k8s.daemonset.name"),
            ("Job", "k8s.job.name"),
            ("ReplicaSet", "k8s.replicaset.name"),
        ] {
            meta.owner_kind = Some(kind.into());
            assert_eq!(otel_attributes(&meta).last().map(|a| a.0), Some(key));
        }
        meta.owner_kind = Some("Node".into());
        meta.node_name = None;
        assert_eq!(otel_attributes(&meta).len(), 3);
    }
}
