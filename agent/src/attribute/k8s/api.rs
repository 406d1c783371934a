//! The few parts of the Kubernetes pod API the agent reads, and pure conversions from them.
//!
//! Only the fields needed for attribution are declared; serde ignores the rest, so the large pod
//! objects cost little to decode. Everything here is pure and unit-tested on recorded JSON.

use std::collections::HashMap;

use serde::{Deserialize, Deserializer};

use super::{K8sError, PodMetadata};

/// Label the Deployment controller puts on the pods of each ReplicaSet; the ReplicaSet is named
/// `<deployment>-<hash>` with the same hash.
const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Annotation on a static pod's mirror: the kubelet's config hash, which is the pod UID the kubelet
/// uses for the cgroup path (`kubepods-pod<hash>.slice`), not the API server's UID.
const CONFIG_MIRROR: &str = "kubernetes.io/config.mirror";

/// `GET /api/v1/pods` (one page of it).
#[derive(Debug, Deserialize)]
pub struct PodList {
    #[serde(default)]
    pub metadata: ListMeta,
    #[serde(default, deserialize_with = "null_default")]
    pub items: Vec<Pod>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMeta {
    #[serde(default)]
    pub resource_version: String,
    /// Token for the next page; empty or absent on the last one.
    #[serde(default, rename = "continue")]
    pub continue_token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Pod {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub resource_version: String,
    #[serde(default, deserialize_with = "null_default")]
    pub labels: HashMap<String, String>,
    #[serde(default, deserialize_with = "null_default")]
    pub annotations: HashMap<String, String>,
    #[serde(default, deserialize_with = "null_default")]
    pub owner_references: Vec<OwnerReference>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OwnerReference {
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub controller: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub node_name: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default, deserialize_with = "null_default")]
    pub container_statuses: Vec<ContainerStatus>,
    #[serde(default, deserialize_with = "null_default")]
    pub init_container_statuses: Vec<ContainerStatus>,
    #[serde(default, deserialize_with = "null_default")]
    pub ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    /// `containerd://<id>`, `cri-o://<id>` or `docker://<id>`; absent while the container is
    /// being created.
    #[serde(default, rename = "containerID")]
    pub container_id: Option<String>,
}

/// A `metav1.Status`, sent as the object of an `ERROR` watch event (e.g. 410 Gone when the
/// resource version is too old).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Status {
    #[serde(default)]
    pub code: Option<u16>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// One line of a `watch=true` stream.
#[derive(Debug)]
pub enum WatchEvent {
    Added(Pod),
    Modified(Pod),
    Deleted(Pod),
    /// Only carries a newer resource version (`allowWatchBookmarks=true`).
    Bookmark {
        resource_version: String,
    },
    Error(Status),
}

#[derive(Deserialize)]
struct RawWatchEvent {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

pub fn parse_pod_list(body: &[u8]) -> Result<PodList, K8sError> {
    serde_json::from_slice(body).map_err(|source| K8sError::Json {
        what: "pod list",
        source,
    })
}

/// Parses one JSON line of a watch stream. Unknown event types are an error: the API defines
/// exactly these five. Bookmark objects are pods with only `metadata.resourceVersion` set, which
/// [`Pod`] accepts.
pub fn parse_watch_event(line: &[u8]) -> Result<WatchEvent, K8sError> {
    let json = |source| K8sError::Json {
        what: "watch event",
        source,
    };
    let raw: RawWatchEvent = serde_json::from_slice(line).map_err(json)?;
    let pod = |object| serde_json::from_value::<Pod>(object).map_err(json);
    Ok(match raw.kind.as_str() {
        "ADDED" => WatchEvent::Added(pod(raw.object)?),
        "MODIFIED" => WatchEvent::Modified(pod(raw.object)?),
        "DELETED" => WatchEvent::Deleted(pod(raw.object)?),
        "BOOKMARK" => WatchEvent::Bookmark {
            resource_version: pod(raw.object)?.metadata.resource_version,
        },
        "ERROR" => WatchEvent::Error(serde_json::from_value(raw.object).map_err(json)?),
        _ => return Err(K8sError::UnknownWatchEvent { kind: raw.kind }),
    })
}

/// The metadata the agent keeps for a pod; `None` for an object without a UID (never sent by a
/// real API server, but the data is external).
pub fn pod_metadata(pod: &Pod) -> Option<PodMetadata> {
    let meta = &pod.metadata;
    if meta.uid.is_empty() {
        return None;
    }
    // The controller reference is the one that manages the pod; other owners are incidental.
    let owner = meta
        .owner_references
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| meta.owner_references.first());
    let (owner_kind, owner_name) = match owner {
        Some(o) if o.kind == "ReplicaSet" => match deployment_of(&o.name, &meta.labels) {
            Some(deployment) => (Some("Deployment".to_owned()), Some(deployment)),
            None => (Some(o.kind.clone()), Some(o.name.clone())),
        },
        Some(o) => (Some(o.kind.clone()), Some(o.name.clone())),
        None => (None, None),
    };
    Some(PodMetadata {
        uid: meta.uid.clone(),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        node_name: pod.spec.node_name.clone(),
        owner_kind,
        owner_name,
    })
}

/// A ReplicaSet created by a Deployment is `<deployment>-<pod-template-hash>`. Without the label
/// the ReplicaSet was made by hand (or by another controller), so no Deployment is claimed.
fn deployment_of(replica_set: &str, labels: &HashMap<String, String>) -> Option<String> {
    let hash = labels.get(POD_TEMPLATE_HASH)?;
    let deployment = replica_set.strip_suffix(hash.as_str())?.strip_suffix('-')?;
    (!deployment.is_empty()).then(|| deployment.to_owned())
}

/// Container ids of every container of the pod (init and ephemeral ones too), without the
/// `<runtime>://` scheme, as the cgroup path shows them.
pub fn container_ids(pod: &Pod) -> Vec<String> {
    let status = &pod.status;
    status
        .container_statuses
        .iter()
        .chain(&status.init_container_statuses)
        .chain(&status.ephemeral_container_statuses)
        .filter_map(|s| s.container_id.as_deref())
        .filter_map(|id| {
            let id = id.split_once("://").map_or(id, |(_, id)| id);
            (!id.is_empty()).then(|| id.to_owned())
        })
        .collect()
}

/// The config hash of a static pod's mirror, which is the pod UID in its cgroup path.
pub fn mirror_hash(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .get(CONFIG_MIRROR)
        .map(String::as_str)
}

/// Kubernetes omits empty fields, but a `null` is valid JSON for them and must not fail the
/// whole list.
fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from `kubectl get --raw '/api/v1/pods?fieldSelector=spec.nodeName=node-1'`.
    const LIST: &str = r#"{
      "kind": "PodList", "apiVersion": "v1",
      "metadata": {"resourceVersion": "123456"},
      "items": [
        {"metadata": {"name": "checkout-7d9f8b6c5d-x2x4z", "namespace": "shop",
                      "uid": "8d2a6f4e-1b7c-4e3a-9f0d-5c6b7a8e9f01", "resourceVersion": "1200",
                      "labels": {"app": "checkout", "pod-template-hash": "7d9f8b6c5d"},
                      "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                        "name": "checkout-7d9f8b6c5d", "uid": "x", "controller": true,
                        "blockOwnerDeletion": true}]},
         "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "checkout:1"}]},
         "status": {"phase": "Running",
           "initContainerStatuses": [{"name": "init", "containerID": "containerd://aaaa"}],
           "containerStatuses": [{"name": "app", "containerID": "containerd://bbbb"},
                                 {"name": "sidecar"}]}},
        {"metadata": {"name": "db-0", "namespace": "shop", "uid": "u-db-0", "labels": null,
                      "ownerReferences": [{"kind": "StatefulSet", "name": "db", "controller": true}]},
         "spec": {"nodeName": "node-1"},
         "status": {"containerStatuses": [{"containerID": "cri-o://cccc"}]}},
        {"metadata": {"name": "kube-apiserver-node-1", "namespace": "kube-system", "uid": "u-api",
                      "annotations": {"kubernetes.io/config.mirror": "0123456789abcdef0123456789abcdef"},
                      "ownerReferences": [{"kind": "Node", "name": "node-1", "controller": true}]},
         "spec": {"nodeName": "node-1"}, "status": {}}
      ]
    }"#;

    #[test]
    fn parses_list_and_resolves_owners() {
        let list = parse_pod_list(LIST.as_bytes()).expect("valid list");
        assert_eq!(list.metadata.resource_version, "123456");
        assert_eq!(list.items.len(), 3);

        let checkout = pod_metadata(&list.items[0]).expect("uid");
        assert_eq!(checkout.name, "checkout-7d9f8b6c5d-x2x4z");
        assert_eq!(checkout.namespace, "shop");
        assert_eq!(checkout.node_name.as_deref(), Some("node-1"));
        assert_eq!(checkout.owner_kind.as_deref(), Some("Deployment"));
        assert_eq!(checkout.owner_name.as_deref(), Some("checkout"));
        assert_eq!(container_ids(&list.items[0]), ["bbbb", "aaaa"]);

        let db = pod_metadata(&list.items[1]).expect("uid");
        assert_eq!(db.owner_kind.as_deref(), Some("StatefulSet"));
        assert_eq!(db.owner_name.as_deref(), Some("db"));
        assert_eq!(container_ids(&list.items[1]), ["cccc"]);

        assert_eq!(
            mirror_hash(&list.items[2]),
            Some("0123456789abcdef0123456789abcdef")
        );
    }

    #[test]
    fn replica_set_without_hash_label_is_not_a_deployment() {
        let labels = HashMap::from([(POD_TEMPLATE_HASH.to_owned(), "abc".to_owned())]);
        assert_eq!(deployment_of("web-abc", &labels).as_deref(), Some("web"));
        assert_eq!(deployment_of("web-xyz", &labels), None);
        assert_eq!(deployment_of("abc", &labels), None);
        assert_eq!(deployment_of("-abc", &labels), None);
        assert_eq!(deployment_of("web-abc", &HashMap::new()), None);
    }

    #[test]
    fn parses_watch_events() {
        let added = br#"{"type":"ADDED","object":{"metadata":{"name":"p","uid":"u1","resourceVersion":"5"}}}"#;
        assert!(
            matches!(parse_watch_event(added), Ok(WatchEvent::Added(p)) if p.metadata.uid == "u1")
        );
        let bookmark =
            br#"{"type":"BOOKMARK","object":{"kind":"Pod","metadata":{"resourceVersion":"99"}}}"#;
        assert!(matches!(
            parse_watch_event(bookmark),
            Ok(WatchEvent::Bookmark { resource_version }) if resource_version == "99"
        ));
        let gone = br#"{"type":"ERROR","object":{"kind":"Status","status":"Failure","message":"too old resource version: 1 (5)","reason":"Expired","code":410}}"#;
        assert!(matches!(parse_watch_event(gone), Ok(WatchEvent::Error(s)) if s.code == Some(410)));
        assert!(matches!(
            parse_watch_event(br#"{"type":"WHAT","object":{}}"#),
            Err(K8sError::UnknownWatchEvent { .. })
        ));
        assert!(parse_watch_event(b"{not json").is_err());
        assert!(parse_watch_event(br#"{"type":"ADDED","object":{"metadata":7}}"#).is_err());
    }

    #[test]
    fn pod_without_uid_is_skipped() {
        let pod: Pod = serde_json::from_str(r#"{"metadata":{"name":"x"}}"#).expect("pod");
        assert!(pod_metadata(&pod).is_none());
    }
}
