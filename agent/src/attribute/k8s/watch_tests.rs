//! The list/watch loop against a scripted fake API server on 127.0.0.1 (plain HTTP).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use super::*;
use crate::attribute::cgroup::ContainerInfo;

/// What the fake server answers to the next request, in order.
enum Reply {
    Json(String),
    /// A watch stream: these lines, then close (`hold: false`) or keep the connection open.
    Stream {
        lines: Vec<String>,
        hold: bool,
    },
    Status(u16),
}

/// Request line and Authorization header of one request.
type Seen = (String, Option<String>);

struct FakeApi {
    base_url: String,
    /// Request line and Authorization header of each request, in order.
    requests: Arc<Mutex<Vec<Seen>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl FakeApi {
    async fn start(script: Vec<Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            for reply in script {
                let (mut sock, _) = listener.accept().await.expect("accept");
                let request = read_head(&mut sock).await;
                seen.lock().expect("lock").push(request);
                if let Some(sock) = answer(sock, reply).await {
                    held.push(sock);
                }
            }
            // Script done: hold further connections unanswered so the client cannot spin.
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                held.push(sock);
            }
        });
        Self {
            base_url: format!("http://{addr}"),
            requests,
            _task: task,
        }
    }

    fn request_lines(&self) -> Vec<String> {
        self.requests
            .lock()
            .expect("lock")
            .iter()
            .map(|(line, _)| line.clone())
            .collect()
    }
}

async fn read_head(sock: &mut TcpStream) -> Seen {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut buf).await.expect("read request");
        assert!(n > 0, "client closed before sending a request");
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8(head).expect("ascii head");
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default().to_owned();
    let auth = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim().to_owned());
    (request_line, auth)
}

async fn answer(mut sock: TcpStream, reply: Reply) -> Option<TcpStream> {
    let fixed = |status: u16, body: &str| {
        format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
    };
    match reply {
        Reply::Json(body) => write(&mut sock, fixed(200, &body).as_bytes()).await,
        Reply::Status(code) => {
            let body = format!(r#"{{"kind":"Status","code":{code}}}"#);
            write(&mut sock, fixed(code, &body).as_bytes()).await;
        }
        Reply::Stream { lines, hold } => {
            // No length, no chunking: the body ends when the connection closes (HTTP/1.1).
            write(
                &mut sock,
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",
            )
            .await;
            for line in lines {
                // Split each line over two writes: the client must reassemble lines.
                let (a, b) = line.split_at(line.len() / 2);
                write(&mut sock, a.as_bytes()).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
                write(&mut sock, format!("{b}\n").as_bytes()).await;
            }
            if hold {
                return Some(sock);
            }
        }
    }
    // Dropping the socket closes it; a failed shutdown only means the client left first.
    let _closed: std::io::Result<()> = sock.shutdown().await;
    None
}

async fn write(sock: &mut TcpStream, bytes: &[u8]) {
    sock.write_all(bytes).await.expect("write reply");
    sock.flush().await.expect("flush");
}

fn pod(uid: &str, name: &str, rv: u32, container: &str) -> String {
    format!(
        r#"{{"metadata":{{"name":"{name}","namespace":"ns","uid":"{uid}","resourceVersion":"{rv}",
            "labels":{{"pod-template-hash":"abc"}},
            "ownerReferences":[{{"kind":"ReplicaSet","name":"web-abc","controller":true}}]}},
           "spec":{{"nodeName":"node-1"}},
           "status":{{"containerStatuses":[{{"containerID":"containerd://{container}"}}]}}}}"#
    )
    .replace('\n', "")
}

fn list(rv: u32, pods: &[String]) -> Reply {
    Reply::Json(format!(
        r#"{{"kind":"PodList","metadata":{{"resourceVersion":"{rv}"}},"items":[{}]}}"#,
        pods.join(",")
    ))
}

fn event(kind: &str, object: &str) -> String {
    format!(r#"{{"type":"{kind}","object":{object}}}"#)
}

fn config(base_url: &str) -> ClusterConfig {
    ClusterConfig {
        token: Some(Token::Static("test-token".to_owned())),
        node_name: Some("node-1".to_owned()),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        ..ClusterConfig::new(base_url.to_owned())
    }
}

fn by_container(index: &PodIndex, id: &str) -> Option<String> {
    index
        .lookup(&ContainerInfo {
            container_id: id.to_owned(),
            runtime: Some("containerd"),
            pod_uid: None,
        })
        .map(|m| m.name)
}

/// Bounded wait for the background task, instead of a fixed sleep.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn list_watch_events_and_relist_on_410_event() {
    let api = FakeApi::start(vec![
        list(100, &[pod("a", "pod-a", 90, "ida"), pod("b", "pod-b", 91, "idb")]),
        Reply::Stream {
            lines: vec![
                event("ADDED", &pod("c", "pod-c", 101, "idc")),
                event("DELETED", &pod("b", "pod-b", 102, "idb")),
                event("BOOKMARK", r#"{"kind":"Pod","metadata":{"resourceVersion":"104"}}"#),
            ],
            hold: false,
        },
        // Resumed from the bookmark; etcd compacted it meanwhile.
        Reply::Stream {
            lines: vec![event(
                "ERROR",
                r#"{"kind":"Status","reason":"Expired","message":"too old resource version","code":410}"#,
            )],
            hold: false,
        },
        list(200, &[pod("a", "pod-a", 150, "ida"), pod("d", "pod-d", 160, "idd")]),
        Reply::Stream {
            lines: vec![
                event("MODIFIED", &pod("a", "pod-a", 201, "ida2")),
                event("ADDED", &pod("e", "pod-e", 202, "ide")),
                event("DELETED", &pod("d", "pod-d", 203, "idd")),
            ],
            hold: true,
        },
    ])
    .await;
    let watcher = PodWatcher::start(config(&api.base_url)).expect("client");
    let index = watcher.index().clone();

    wait_until("the events after the relist", || {
        by_container(&index, "ide").is_some() && by_container(&index, "idd").is_none()
    })
    .await;
    assert_eq!(by_container(&index, "ida2").as_deref(), Some("pod-a"));
    assert_eq!(by_container(&index, "ida"), None, "MODIFIED replaces ids");
    assert_eq!(
        by_container(&index, "idb"),
        None,
        "deleted before the relist"
    );
    assert_eq!(
        by_container(&index, "idc"),
        None,
        "the relist dropped what it no longer lists"
    );
    assert_eq!(index.len(), 2);
    let meta = index
        .lookup(&ContainerInfo {
            container_id: "x".to_owned(),
            runtime: None,
            pod_uid: Some("e".to_owned()),
        })
        .expect("pod e by uid");
    assert_eq!(meta.owner_kind.as_deref(), Some("Deployment"));
    assert_eq!(meta.owner_name.as_deref(), Some("web"));

    let lines = api.request_lines();
    assert_eq!(lines.len(), 5, "{lines:#?}");
    let node = "fieldSelector=spec.nodeName%3Dnode-1";
    for line in &lines {
        assert!(line.starts_with("GET /api/v1/pods?"), "{line}");
        assert!(line.contains(node), "{line}");
    }
    assert!(lines[0].contains("limit=500") && !lines[0].contains("watch"));
    assert!(lines[1].contains("watch=true") && lines[1].contains("resourceVersion=100"));
    assert!(lines[2].contains("resourceVersion=104"), "{}", lines[2]);
    assert!(!lines[3].contains("watch"), "relist: {}", lines[3]);
    assert!(lines[4].contains("resourceVersion=200"), "{}", lines[4]);
    let requests = api.requests.lock().expect("lock").clone();
    for (_, auth) in requests {
        assert_eq!(auth.as_deref(), Some("Bearer test-token"));
    }
}

#[tokio::test]
async fn retries_errors_and_relists_on_http_410() {
    let api = FakeApi::start(vec![
        Reply::Status(500),
        list(1, &[pod("a", "pod-a", 1, "ida")]),
        Reply::Status(410),
        list(2, &[pod("b", "pod-b", 2, "idb")]),
        Reply::Stream {
            lines: Vec::new(),
            hold: true,
        },
    ])
    .await;
    let watcher = PodWatcher::start(config(&api.base_url)).expect("client");
    let index = watcher.index().clone();
    wait_until("the relist", || api.request_lines().len() == 5).await;
    assert_eq!(by_container(&index, "idb").as_deref(), Some("pod-b"));
    assert_eq!(by_container(&index, "ida"), None);
    let lines = api.request_lines();
    assert!(lines[2].contains("watch=true") && lines[2].contains("resourceVersion=1&"));
    assert!(lines[4].contains("resourceVersion=2&"), "{}", lines[4]);
    drop(watcher);
}

#[test]
fn line_buffer_reassembles_lines() {
    let mut buf = LineBuffer::default();
    assert!(buf.push(b"{\"a\"").expect("ok").is_empty());
    let lines = buf.push(b":1}\n\n{\"b\":2}\r\n{\"c\"").expect("ok");
    assert_eq!(lines, [b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]);
    assert_eq!(buf.push(b":3}\n").expect("ok"), [b"{\"c\":3}".to_vec()]);
    let mut buf = LineBuffer::default();
    assert!(buf.push(&vec![b'x'; MAX_LINE + 1]).is_err());
}

#[test]
fn backoff_doubles_to_the_cap_and_resets() {
    let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
    let delays: Vec<_> = (0..5).map(|_| b.next_delay().as_secs()).collect();
    assert_eq!(delays, [1, 2, 4, 5, 5]);
    b.reset();
    assert_eq!(b.next_delay(), Duration::from_secs(1));
}
