//! List-then-watch of the node's pods, feeding a [`PodIndex`].

use std::time::Duration;

use reqwest::{Client, RequestBuilder, Response, StatusCode};
use tokio::task::JoinHandle;

use super::{
    api::{self, WatchEvent},
    error_chain, ClusterConfig, K8sError, PodIndex, Token,
};

/// Page size of the list: a node runs at most a few hundred pods, so usually one page.
const LIST_LIMIT: &str = "500";
/// A pod object is a few KiB; a line this long is not a pod, and must not grow memory unbounded.
const MAX_LINE: usize = 16 * 1024 * 1024;
/// Slack over the server-side watch timeout before a silent stream counts as dead (a node that
/// vanished behind a load balancer sends no FIN).
const IDLE_SLACK: Duration = Duration::from_secs(30);

/// The running watch. Dropping it stops the background task.
#[derive(Debug)]
pub struct PodWatcher {
    index: PodIndex,
    task: JoinHandle<()>,
}

impl PodWatcher {
    /// Spawns the list/watch task on the current tokio runtime.
    pub fn start(config: ClusterConfig) -> Result<Self, K8sError> {
        let client = ApiClient::new(config)?;
        let index = PodIndex::default();
        let task = tokio::spawn(run(client, index.clone()));
        Ok(Self { index, task })
    }

    pub fn index(&self) -> &PodIndex {
        &self.index
    }
}

impl Drop for PodWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct ApiClient {
    http: Client,
    config: ClusterConfig,
}

impl ApiClient {
    fn new(config: ClusterConfig) -> Result<Self, K8sError> {
        let mut builder = Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // The watch is one long request; keep the connection pool from holding dead ones.
            .pool_idle_timeout(Duration::from_secs(60));
        if let Some(pem) = &config.ca_pem {
            // ca.crt may hold several certificates (CA rotation puts old and new side by side).
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|source| {
                K8sError::Certificate {
                    path: "ca.crt".into(),
                    source,
                }
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|source| K8sError::Client { source })?;
        Ok(Self { http, config })
    }

    fn pods_url(&self) -> String {
        format!("{}/api/v1/pods", self.config.base_url.trim_end_matches('/'))
    }

    fn request(&self) -> Result<RequestBuilder, K8sError> {
        let mut req = self.http.get(self.pods_url());
        if let Some(node) = &self.config.node_name {
            req = req.query(&[("fieldSelector", format!("spec.nodeName={node}"))]);
        }
        let token = match &self.config.token {
            Some(Token::File(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| K8sError::ReadFile {
                        path: path.clone(),
                        source,
                    })?
                    .trim()
                    .to_owned(),
            ),
            Some(Token::Static(token)) => Some(token.clone()),
            None => None,
        };
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        Ok(req)
    }

    async fn send(&self, op: &'static str, req: RequestBuilder) -> Result<Response, K8sError> {
        let url = self.pods_url();
        let resp = req.send().await.map_err(|source| K8sError::Request {
            op,
            url: url.clone(),
            source,
        })?;
        match resp.status() {
            s if s.is_success() => Ok(resp),
            // A continue token or resource version that etcd compacted away.
            StatusCode::GONE => Err(K8sError::Gone),
            s => Err(K8sError::Status {
                op,
                url,
                status: s.as_u16(),
            }),
        }
    }

    /// Lists every page; returns the pods and the resource version to watch from.
    async fn list(&self) -> Result<(Vec<api::Pod>, String), K8sError> {
        let mut pods = Vec::new();
        let mut continue_token: Option<String> = None;
        loop {
            let mut req = self
                .request()?
                .query(&[("limit", LIST_LIMIT)])
                .timeout(Duration::from_secs(60));
            if let Some(token) = &continue_token {
                req = req.query(&[("continue", token)]);
            }
            let resp = self.send("list", req).await?;
            let body = resp.bytes().await.map_err(|source| K8sError::Request {
                op: "list",
                url: self.pods_url(),
                source,
            })?;
            let page = api::parse_pod_list(&body)?;
            pods.extend(page.items);
            match page.metadata.continue_token.filter(|t| !t.is_empty()) {
                Some(token) => continue_token = Some(token),
                None => return Ok((pods, page.metadata.resource_version)),
            }
        }
    }

    /// Streams events from `resource_version` into the index until the server closes the
    /// stream; returns the last resource version seen, to resume from. The backoff is reset once
    /// the server accepted the watch.
    async fn watch(
        &self,
        index: &PodIndex,
        resource_version: &str,
        backoff: &mut Backoff,
    ) -> Result<String, K8sError> {
        let timeout = self.config.watch_timeout;
        let req = self.request()?.query(&[
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", resource_version),
            ("timeoutSeconds", &timeout.as_secs().to_string()),
        ]);
        let mut resp = self.send("watch", req).await?;
        backoff.reset();
        let mut last = resource_version.to_owned();
        let mut lines = LineBuffer::default();
        let idle = timeout + IDLE_SLACK;
        loop {
            let chunk = tokio::time::timeout(idle, resp.chunk())
                .await
                .map_err(|_elapsed| K8sError::Idle { idle })?
                .map_err(|source| K8sError::Request {
                    op: "watch",
                    url: self.pods_url(),
                    source,
                })?;
            let Some(chunk) = chunk else {
                return Ok(last);
            };
            for line in lines.push(&chunk)? {
                if let Some(rv) = apply(index, api::parse_watch_event(&line)?)? {
                    last = rv;
                }
            }
        }
    }
}

/// Applies one event; returns the resource version to resume from, if it carries one.
fn apply(index: &PodIndex, event: WatchEvent) -> Result<Option<String>, K8sError> {
    let rv = |pod: &api::Pod| Some(pod.metadata.resource_version.clone()).filter(|v| !v.is_empty());
    Ok(match event {
        WatchEvent::Added(pod) | WatchEvent::Modified(pod) => {
            index.upsert(&pod);
            rv(&pod)
        }
        WatchEvent::Deleted(pod) => {
            index.remove(&pod);
            rv(&pod)
        }
        WatchEvent::Bookmark { resource_version } => {
            Some(resource_version).filter(|v| !v.is_empty())
        }
        WatchEvent::Error(status) if status.code == Some(410) => return Err(K8sError::Gone),
        WatchEvent::Error(status) => {
            return Err(K8sError::WatchError {
                code: status.code,
                reason: status.reason,
                message: status.message,
            })
        }
    })
}

/// Splits a byte stream into lines; chunks do not respect line boundaries.
#[derive(Default)]
struct LineBuffer {
    pending: Vec<u8>,
}

impl LineBuffer {
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<Vec<u8>>, K8sError> {
        self.pending.extend_from_slice(chunk);
        let mut lines = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = line.trim_ascii();
            if !line.is_empty() {
                lines.push(line.to_vec());
            }
        }
        if self.pending.len() > MAX_LINE {
            return Err(K8sError::LineTooLong { limit: MAX_LINE });
        }
        Ok(lines)
    }
}

/// The task: list, watch until the stream ends or fails, and start over as needed. Never
/// returns; stopped by aborting it.
async fn run(client: ApiClient, index: PodIndex) {
    let mut backoff = Backoff::new(client.config.backoff_initial, client.config.backoff_max);
    loop {
        let mut resource_version = match client.list().await {
            Ok((pods, rv)) => {
                index.replace_all(&pods);
                log::info!("k8s: listed {} pods (resource version {rv})", index.len());
                rv
            }
            Err(e) => {
                let delay = backoff.next_delay();
                log::warn!("k8s: {}; retrying in {delay:?}", error_chain(&e));
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        loop {
            match client.watch(&index, &resource_version, &mut backoff).await {
                // The server's timeoutSeconds: resume at once from where it stopped.
                Ok(rv) => resource_version = rv,
                Err(K8sError::Gone) => {
                    // Relist, but not in a tight loop should the server keep answering 410 to
                    // fresh resource versions: the backoff grows unless a watch got through.
                    let delay = backoff.next_delay();
                    log::info!(
                        "k8s: resource version {resource_version} expired, relisting in {delay:?}"
                    );
                    tokio::time::sleep(delay).await;
                    break;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    log::warn!("k8s: {}; rewatching in {delay:?}", error_chain(&e));
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// Exponential backoff, so that an API server that is down is not hammered by every node.
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
#[path = "watch_tests.rs"]
mod tests;
