//! Property tests: the parsers never panic and keep no header value but trace context, the
//! traceparent validator accepts exactly the W3C grammar, path templating is total, and the
//! agent's tables stay within their bounds whatever is fed to them.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use agent::{
    correlate::traces::{ExportedSpan, TraceState},
    findings::{FindingKey, FindingKind, FindingStore, Subject, Target, MAX_FINDINGS},
    model::Direction,
    parse::{
        http1::parse_request,
        trace_context::{
            is_trace_header, parse_traceparent, to_hex, Propagation, TraceHeaders, TraceParent,
            TraceParentError,
        },
    },
    report::path_template::{is_id, template_path, ID},
};
use proptest::prelude::*;

fn traceparent_parts() -> impl Strategy<Value = (u8, [u8; 16], [u8; 8], u8)> {
    (
        any::<u8>().prop_filter("ff is invalid", |v| *v != 0xff),
        any::<[u8; 16]>().prop_filter("non-zero", |t| *t != [0; 16]),
        any::<[u8; 8]>().prop_filter("non-zero", |p| *p != [0; 8]),
        any::<u8>(),
    )
}

fn format_tp(version: u8, trace: &[u8], parent: &[u8], flags: u8) -> String {
    format!(
        "{version:02x}-{}-{}-{flags:02x}",
        to_hex(trace),
        to_hex(parent)
    )
}

/// A header name: an HTTP token.
fn header_name() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9-]{0,20}"
}

/// Trace-context header names in any case.
fn trace_name() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![
            "traceparent",
            "tracestate",
            "b3",
            "x-b3-traceid",
            "uber-trace-id",
            "x-amzn-trace-id",
        ]),
        any::<u64>(),
    )
        .prop_map(|(n, mask)| {
            n.chars()
                .enumerate()
                .map(|(i, c)| {
                    if mask >> (i % 64) & 1 == 1 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn valid_traceparents_round_trip((v, trace, parent, flags) in traceparent_parts()) {
        let s = format_tp(v, &trace, &parent, flags);
        let tp = parse_traceparent(&s).expect("valid by construction");
        prop_assert_eq!(tp, TraceParent { version: v, trace_id: trace, parent_id: parent, flags });
        prop_assert_eq!(format_tp(tp.version, &tp.trace_id, &tp.parent_id, tp.flags), s);
    }

    #[test]
    fn version_00_takes_no_suffix(
        (_, trace, parent, flags) in traceparent_parts(),
        suffix in "-[a-z0-9]{1,10}",
    ) {
        let s = format!("{}{suffix}", format_tp(0, &trace, &parent, flags));
        prop_assert_eq!(parse_traceparent(&s), Err(TraceParentError::Length));
    }

    #[test]
    fn uppercase_hex_is_rejected((v, trace, parent, flags) in traceparent_parts()) {
        let s = format_tp(v, &trace, &parent, flags);
        let upper = s.to_ascii_uppercase();
        if upper != s {
            prop_assert!(parse_traceparent(&upper).is_err());
        }
    }

    #[test]
    fn traceparent_never_panics(s in ".{0,80}") {
        if let Ok(tp) = parse_traceparent(&s) {
            prop_assert_ne!(tp.version, 0xff);
            prop_assert_ne!(tp.trace_id, [0; 16]);
            prop_assert_ne!(tp.parent_id, [0; 8]);
        }
    }

    #[test]
    fn parse_request_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _result = parse_request(&bytes);
        let mut prefixed = b"GET ".to_vec();
        prefixed.extend_from_slice(&bytes);
        if let Ok(req) = parse_request(&prefixed) {
            for (name, _) in &req.trace.headers {
                prop_assert!(is_trace_header(name), "{}", name);
            }
        }
    }

    /// Every other header's value (a secret here) is gone after parsing, whatever the names,
    /// order, or where the capture was cut.
    #[test]
    fn only_trace_context_values_survive_parsing(
        others in prop::collection::vec((header_name(), "[a-zA-Z0-9+/=]{1,30}"), 0..20),
        traces in prop::collection::vec(trace_name(), 0..4),
        cut in any::<prop::sample::Index>(),
        path_id in any::<u32>(),
    ) {
        let mut raw = format!("GET /users/{path_id}?token=QUERYSECRET HTTP/1.1\r\n");
        for (name, value) in &others {
            if is_trace_header(&name.to_ascii_lowercase()) {
                continue;
            }
            raw.push_str(&format!("{name}: SECRET{value}\r\n"));
        }
        for name in &traces {
            raw.push_str(&format!("{name}: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"));
        }
        raw.push_str("Authorization: Bearer SECRET\r\nCookie: SECRET=1\r\n\r\n");
        let bytes = raw.as_bytes();
        for end in [bytes.len(), cut.index(bytes.len() + 1)] {
            let Ok(req) = parse_request(&bytes[..end]) else { continue };
            let shown = format!("{req:?}");
            prop_assert!(!shown.contains("SECRET"), "{}", shown);
            for (name, _) in &req.trace.headers {
                prop_assert!(is_trace_header(name));
                prop_assert_eq!(name, &name.to_ascii_lowercase());
            }
            prop_assert_eq!(&req.path, &format!("/users/{path_id}"));
            if req.complete {
                prop_assert_eq!(req.trace.headers.len(), traces.len());
            }
        }
    }

    #[test]
    fn classification_follows_traceparent_validity(value in ".{0,70}", b3 in any::<bool>()) {
        let mut headers = vec![("traceparent".to_owned(), value.clone())];
        if b3 {
            headers.push(("b3".to_owned(), "a-b-1".to_owned()));
        }
        let p = TraceHeaders { headers }.classify();
        let want = if parse_traceparent(&value).is_ok() { Propagation::W3c } else { Propagation::Malformed };
        prop_assert_eq!(p, want);
    }

    #[test]
    fn path_templating_is_total_and_idempotent(
        segs in prop::collection::vec(prop_oneof![
            "[a-z]{1,8}",
            "[0-9]{1,12}",
            "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            "[0-9a-f]{16,32}",
            ".{0,6}",
        ], 0..8),
    ) {
        let path = format!("/{}", segs.join("/"));
        let t = template_path(&path);
        prop_assert_eq!(t.split('/').count(), path.split('/').count());
        prop_assert!(!t.split('/').any(is_id));
        prop_assert_eq!(template_path(&t), t.clone());
        for (raw, out) in path.split('/').zip(t.split('/')) {
            let kept_or_templated = raw == out || (is_id(raw) && out == ID);
            prop_assert!(kept_or_templated, "{} → {}", raw, out);
        }
    }
}

fn key(i: u32, pid: u32) -> FindingKey {
    let req = parse_request(format!("GET /p/{i} HTTP/1.1\r\n\r\n").as_bytes()).expect("parses");
    let target = Target {
        peer: None,
        method: req.method.clone(),
        path: req.path.clone(),
        protocol: req.protocol,
    };
    FindingKey::new(
        FindingKind::ALL[(i % 7) as usize],
        pid,
        Direction::Outbound,
        &target,
        false,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4, ..ProptestConfig::default() })]

    /// Past MAX_FINDINGS the least recently seen finding goes, and every eviction is counted.
    #[test]
    fn finding_store_is_bounded(extra in 1u32..2000, repeats in 0u32..2) {
        let mut store = FindingStore::default();
        let subject = Subject::default();
        let distinct = MAX_FINDINGS as u32 + extra;
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for i in 0..distinct {
            for _ in 0..=repeats {
                store.record(key(i, 1), &subject, BTreeMap::new(), t0 + Duration::from_millis(u64::from(i)));
            }
            prop_assert!(store.len() <= MAX_FINDINGS);
        }
        prop_assert_eq!(store.len() as u64 + store.evicted, u64::from(distinct));
        // The newest survived.
        prop_assert!(store.all().any(|f| f.key == key(distinct - 1, 1)));
        let changed = store.take_changed();
        prop_assert!(changed.len() <= MAX_FINDINGS);
    }

    /// Whatever the mix of processes, contexts and spans, the trace state stays bounded.
    #[test]
    fn trace_state_is_bounded(seed in any::<u64>(), pids in prop_oneof![1u32..8, 4000u32..6000]) {
        let mut state = TraceState::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut x = seed | 1;
        let mut next = || { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x };
        for i in 0..60_000u64 {
            let r = next();
            let pid = (r % u64::from(pids)) as u32 + 1;
            let at = t0 + Duration::from_micros(i);
            let mut trace_id = [0u8; 16];
            trace_id[..8].copy_from_slice(&next().to_le_bytes());
            trace_id[15] = 1;
            let mut parent_id = next().to_le_bytes();
            parent_id[7] |= 1;
            let tp = TraceParent { version: 0, trace_id, parent_id, flags: 1 };
            match r >> 61 {
                0 | 1 => state.inbound(pid, at, tp),
                2 | 3 => state.outbound(pid, at, tp, Target { peer: None, method: "GET".into(), path: "/".into(), protocol: Default::default() }, Duration::from_secs(30)),
                _ => {
                    let spans: Vec<ExportedSpan> = (0..(r % 8)).map(|k| ExportedSpan {
                        trace_id,
                        span_id: (next() | 1).to_le_bytes(),
                        parent_span_id: (k % 2 == 0).then(|| (next() | 1).to_le_bytes()),
                        start: at,
                        end: at,
                    }).collect();
                    let _sync = state.exported(pid, at, &spans);
                }
            }
        }
        // The hard bound: at most 4096 processes, each within its per-process caps (inbound
        // 2048, received 4096, pending 4096, spans and their order 2×20k, roots 20k, exports 10,
        // flagged 4096).
        let per_process = 2048 + 4096 + 4096 + 2 * 20_000 + 20_000 + 10 + 4096;
        let procs = (pids as usize).min(4096);
        prop_assert!(state.entries() <= procs * (1 + per_process), "{}", state.entries());
        let _findings = state.judge_due(t0 + Duration::from_secs(3600));
        state.retain(|_| false);
        prop_assert_eq!(state.entries(), 0);
    }
}

/// One process receiving far more distinct traced requests than any table holds: its tables
/// stay at their caps (trace ids received, contexts, roots, spans).
#[test]
fn one_busy_process_stays_within_caps() {
    let mut state = TraceState::default();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for i in 0..200_000u64 {
        let at = t0 + Duration::from_micros(i);
        let mut trace_id = [1u8; 16];
        trace_id[..8].copy_from_slice(&i.to_le_bytes());
        let mut parent_id = [1u8; 8];
        parent_id[..7].copy_from_slice(&i.to_le_bytes()[..7]);
        let tp = TraceParent {
            version: 0,
            trace_id,
            parent_id,
            flags: 1,
        };
        state.inbound(7, at, tp);
        let root = ExportedSpan {
            trace_id,
            span_id: parent_id,
            parent_span_id: None,
            start: at,
            end: at,
        };
        let _sync = state.exported(7, at, &[root]);
    }
    // inbound 2048 + received ≤ 4096 + spans/order 2×20k + roots ≤ 20k + exports 10 + 1 proc.
    let bound = 2048 + 4096 + 2 * 20_000 + 20_000 + 10 + 1;
    assert!(state.entries() <= bound, "{} > {bound}", state.entries());
}

#[test]
fn process_cache_is_bounded_and_forgets_exited_processes() {
    use agent::{attribute::process::ProcessCache, model::MAX_PROCESSES};
    let mut cache = ProcessCache::default();
    // pids above the kernel's pid_max limit (4194304) never exist: each is an exited process.
    for pid in 0..(MAX_PROCESSES as u32 + 100) {
        let _info = cache.get(5_000_000 + pid, "gone");
        assert!(cache.len() <= MAX_PROCESSES);
    }
    assert_eq!(cache.len(), MAX_PROCESSES);
    cache.sweep(|_| false);
    assert_eq!(
        cache.len(),
        0,
        "exited processes are forgotten at the sweep"
    );
}
