//! The span rules on recorded sequences, each with its false-positive twin.

use super::*;

const GRACE: Duration = Duration::from_secs(30);

fn t(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) + Duration::from_millis(ms)
}

fn tp(trace: u8, parent: u8, sampled: bool) -> TraceParent {
    TraceParent {
        version: 0,
        trace_id: [trace; 16],
        parent_id: [parent; 8],
        flags: u8::from(sampled),
    }
}

fn span(trace: u8, id: u8, parent: Option<u8>, start_ms: u64) -> ExportedSpan {
    ExportedSpan {
        trace_id: [trace; 16],
        span_id: [id; 8],
        parent_span_id: parent.map(|p| [p; 8]),
        start: t(start_ms),
        end: t(start_ms + 20),
    }
}

fn target() -> Target {
    Target {
        peer: Some("127.0.0.1:9000".parse().expect("addr")),
        method: "GET".into(),
        path: "/downstream".into(),
        protocol: Default::default(),
    }
}

fn kinds(found: &[TraceFinding]) -> Vec<FindingKind> {
    found.iter().map(|f| f.kind).collect()
}

const PID: u32 = 100;

#[test]
fn propagating_server_is_clean() {
    let mut s = TraceState::default();
    s.inbound(PID, t(0), tp(1, 0x10, true));
    // Server span 0x20 (child of the caller's 0x10), client span 0x21 injected downstream.
    s.outbound(PID, t(5), tp(1, 0x21, true), target(), GRACE);
    s.exported(
        PID,
        t(100),
        &[span(1, 0x20, Some(0x10), 0), span(1, 0x21, Some(0x20), 4)],
    );
    assert!(s.judge_due(t(30_005)).is_empty());
    assert_eq!(s.counters.judged, 1);
}

#[test]
fn new_trace_while_handling_a_traced_request_is_broken_context() {
    let mut s = TraceState::default();
    s.inbound(PID, t(0), tp(1, 0x10, true));
    // The handler's goroutine started from context.Background(): a new root 0x30 in trace 2.
    s.outbound(PID, t(5), tp(2, 0x31, true), target(), GRACE);
    s.exported(
        PID,
        t(100),
        &[span(2, 0x30, None, 3), span(2, 0x31, Some(0x30), 4)],
    );
    // Nothing is judged before the grace window ends.
    assert!(s.judge_due(t(29_000)).is_empty());
    let found = s.judge_due(t(30_005));
    assert_eq!(kinds(&found), [FindingKind::BrokenContext]);
    assert_eq!(found[0].evidence["received_trace_id"], to_hex(&[1; 16]));
    assert_eq!(found[0].evidence["sent_trace_id"], to_hex(&[2; 16]));
}

#[test]
fn worker_without_inbound_traffic_is_never_broken() {
    let mut s = TraceState::default();
    s.outbound(PID, t(5), tp(2, 0x31, true), target(), GRACE);
    s.exported(
        PID,
        t(100),
        &[span(2, 0x30, None, 3), span(2, 0x31, Some(0x30), 4)],
    );
    assert!(s.judge_due(t(30_005)).is_empty());
}

#[test]
fn trace_started_before_the_request_arrived_is_not_broken() {
    let mut s = TraceState::default();
    // A background job's trace began before any traced request came in.
    s.inbound(PID, t(1_000), tp(1, 0x10, true));
    s.outbound(PID, t(1_005), tp(2, 0x31, true), target(), GRACE);
    s.exported(
        PID,
        t(1_100),
        &[span(2, 0x30, None, 0), span(2, 0x31, Some(0x30), 1_004)],
    );
    assert!(s.judge_due(t(40_000)).is_empty());
}

#[test]
fn injected_but_never_ended_span_is_unexported() {
    let mut s = TraceState::default();
    s.outbound(PID, t(5), tp(3, 0x41, true), target(), GRACE);
    // The process exports (its root ended) but never the injected child 0x41.
    s.exported(PID, t(100), &[span(3, 0x40, None, 0)]);
    let found = s.judge_due(t(30_005));
    assert_eq!(kinds(&found), [FindingKind::UnexportedSpan]);
    assert_eq!(found[0].evidence["parent_id"], to_hex(&[0x41; 8]));
    // The span turns up late: counted, not hidden.
    s.exported(PID, t(31_000), &[span(3, 0x41, Some(0x40), 1)]);
    assert_eq!(s.counters.late_spans, 1);
}

#[test]
fn ended_span_is_not_unexported() {
    let mut s = TraceState::default();
    s.outbound(PID, t(5), tp(3, 0x41, true), target(), GRACE);
    s.exported(
        PID,
        t(100),
        &[span(3, 0x40, None, 0), span(3, 0x41, Some(0x40), 1)],
    );
    assert!(s.judge_due(t(30_005)).is_empty());
}

#[test]
fn pass_through_proxy_is_not_judged() {
    let mut s = TraceState::default();
    s.exported(PID, t(0), &[span(9, 0x90, None, 0)]);
    s.inbound(PID, t(10), tp(4, 0x50, true));
    s.outbound(PID, t(12), tp(4, 0x50, true), target(), GRACE);
    assert!(s.judge_due(t(30_100)).is_empty());
}

#[test]
fn unsampled_and_unverifiable_contexts_are_counted_not_judged() {
    let mut s = TraceState::default();
    s.outbound(PID, t(5), tp(5, 0x61, false), target(), GRACE);
    s.outbound(PID + 1, t(5), tp(5, 0x62, true), target(), GRACE);
    s.exported(PID, t(10), &[span(6, 0x70, None, 0)]);
    assert!(s.judge_due(t(30_005)).is_empty());
    assert_eq!(s.counters.unsampled, 1);
    assert_eq!(
        s.counters.unverifiable,
        1,
        "pid {} never exported to us",
        PID + 1
    );
}

#[test]
fn pending_contexts_at_exit_are_uncertain() {
    let mut s = TraceState::default();
    s.outbound(PID, t(5), tp(5, 0x61, true), target(), GRACE);
    s.finish();
    assert_eq!(s.counters.pending_at_exit, 1);
    assert!(s.judge_due(t(60_000)).is_empty());
}

#[test]
fn one_span_per_export_at_a_sustained_rate_is_synchronous() {
    let mut s = TraceState::default();
    let mut verdict = None;
    for i in 0..SYNC_MIN_EXPORTS as u8 {
        verdict = s.exported(PID, t(u64::from(i) * 100), &[span(7, i + 1, None, 0)]);
    }
    let ev = verdict.expect("ten single-span exports within a second");
    assert_eq!(ev["spans_per_export"], "1");
}

#[test]
fn batched_or_slow_exports_are_not_synchronous() {
    let mut s = TraceState::default();
    for i in 0..20u8 {
        let batch = [span(7, 2 * i + 1, None, 0), span(7, 2 * i + 2, None, 0)];
        assert!(s.exported(PID, t(u64::from(i) * 100), &batch).is_none());
    }
    // A BatchSpanProcessor on a quiet service: one span per export, every 5 s.
    let mut s = TraceState::default();
    for i in 0..20u8 {
        assert!(s
            .exported(PID, t(u64::from(i) * 5_000), &[span(8, i + 1, None, 0)])
            .is_none());
    }
}

#[test]
fn tables_are_bounded() {
    let mut s = TraceState::default();
    for i in 0..(MAX_PENDING + 10) {
        s.outbound(PID, t(i as u64), tp(1, 1, true), target(), GRACE);
    }
    assert_eq!(s.counters.pending_dropped, 10);
    let spans: Vec<ExportedSpan> = (0..(MAX_SPANS + 5))
        .map(|i| {
            let mut sp = span(1, 0, None, 0);
            sp.span_id = (i as u64).to_le_bytes();
            sp
        })
        .collect();
    s.exported(PID, t(0), &spans);
    assert_eq!(s.counters.spans_evicted, 5);
}

#[test]
fn findings_carry_their_place_only_when_annotating() {
    let run = |annotate: bool| {
        let mut s = TraceState::default();
        if annotate {
            s.annotate();
        }
        s.inbound(PID, t(0), tp(1, 0x10, true));
        s.outbound(PID, t(5), tp(2, 0x31, true), target(), GRACE);
        // Server span 0x20 for the inbound request; new root 0x30 in trace 2.
        s.exported(
            PID,
            t(100),
            &[
                span(1, 0x20, Some(0x10), 0),
                span(2, 0x30, None, 3),
                span(2, 0x31, Some(0x30), 4),
            ],
        );
        s.judge_due(t(30_005))
    };
    assert_eq!(run(false)[0].place, None);
    let found = run(true);
    assert_eq!(kinds(&found), [FindingKind::BrokenContext]);
    let place = found[0].place.expect("placed");
    assert_eq!(place.trace_id, [1; 16], "in the inbound trace T");
    assert_eq!(place.span_id, None);
    assert_eq!(
        place.parent_span_id,
        Some([0x20; 8]),
        "under the server span"
    );
    assert_eq!(
        place.link,
        Some(([2; 16], [0x31; 8])),
        "linked to the new trace"
    );
    assert_eq!(place.start, t(5));
}

#[test]
fn unexported_span_placeholder_has_the_missing_id() {
    let mut s = TraceState::default();
    s.annotate();
    // Inbound in trace 3 from the caller's 0x10; the server span 0x40 was never ended, and the
    // client span 0x41 injected downstream is a child of it: neither exported.
    s.inbound(PID, t(0), tp(3, 0x10, true));
    s.outbound(PID, t(5), tp(3, 0x41, true), target(), GRACE);
    s.exported(PID, t(100), &[span(9, 0x90, None, 0)]);
    let found = s.judge_due(t(30_005));
    assert_eq!(kinds(&found), [FindingKind::UnexportedSpan]);
    let place = found[0].place.expect("placed");
    assert_eq!(place.trace_id, [3; 16]);
    assert_eq!(place.span_id, Some([0x41; 8]));
    assert_eq!(
        place.parent_span_id,
        Some([0x10; 8]),
        "under the context received"
    );
    assert_eq!((place.start, place.end), (t(0), t(5)));
}

#[test]
fn missing_context_is_placed_in_the_trace_being_handled() {
    let mut s = TraceState::default();
    assert_eq!(s.handling_place(PID, t(5)), None, "not annotating");
    s.annotate();
    assert_eq!(
        s.handling_place(PID, t(5)),
        None,
        "no inbound traced request"
    );
    s.inbound(PID, t(0), tp(1, 0x10, true));
    let place = s.handling_place(PID, t(5)).expect("placed");
    assert_eq!(place.trace_id, [1; 16]);
    assert_eq!(place.parent_span_id, Some([0x10; 8]));
    assert_eq!(
        s.handling_place(PID, t(6_000)),
        None,
        "outside the handling window"
    );
}

#[test]
fn one_placeholder_per_missing_span() {
    let mut s = TraceState::default();
    s.annotate();
    // The never-ended span 0x41 is the parent of two calls.
    s.outbound(PID, t(5), tp(3, 0x41, true), target(), GRACE);
    s.outbound(PID, t(6), tp(3, 0x41, true), target(), GRACE);
    s.exported(PID, t(100), &[span(3, 0x40, None, 0)]);
    let found = s.judge_due(t(30_010));
    assert_eq!(
        kinds(&found),
        [FindingKind::UnexportedSpan, FindingKind::UnexportedSpan]
    );
    assert!(found[0].place.is_some());
    assert_eq!(found[1].place, None, "the placeholder is exported once");
}
