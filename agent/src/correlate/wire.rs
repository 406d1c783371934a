//! Judging what processes put on the wire: one function per rule, pure over the request and
//! what is known about the process. Per-process counts feed the table and coverage.

use std::{collections::BTreeMap, time::SystemTime};

use crate::{
    findings::FindingKind,
    parse::{
        trace_context::{parse_traceparent, Propagation, TRACEPARENT},
        Request,
    },
};

/// The outcome for one outbound request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Carries valid W3C context (or vendor context we do not judge).
    Clean,
    Finding(FindingKind, BTreeMap<String, String>),
    /// The capture ended before the header block did and no context was seen: unknown.
    Undetermined,
    /// The process's own OTLP export: never judged.
    Telemetry,
}

/// Judges one outbound request of a process. `instrumented`: the process has OTEL_* env or has
/// been seen exporting telemetry.
pub fn judge_outbound(req: &Request, instrumented: bool) -> Verdict {
    if req.is_telemetry() {
        return Verdict::Telemetry;
    }
    let propagation = propagation(req);
    let evidence = evidence(req);
    match propagation {
        Propagation::W3c | Propagation::Vendor => Verdict::Clean,
        Propagation::Undetermined => Verdict::Undetermined,
        Propagation::Malformed => Verdict::Finding(FindingKind::MalformedTraceparent, evidence),
        Propagation::B3 | Propagation::Jaeger => {
            Verdict::Finding(FindingKind::NonW3cPropagation, evidence)
        }
        Propagation::None if instrumented => {
            Verdict::Finding(FindingKind::MissingTraceparent, evidence)
        }
        Propagation::None => Verdict::Finding(FindingKind::UninstrumentedClient, evidence),
    }
}

/// The propagation label of a request; a cut header block without context is undetermined.
pub fn propagation(req: &Request) -> Propagation {
    match req.trace.classify() {
        Propagation::None if !req.complete => Propagation::Undetermined,
        p => p,
    }
}

/// Trace-context headers seen (the only header values ever kept), plus why a traceparent failed.
fn evidence(req: &Request) -> BTreeMap<String, String> {
    let mut ev: BTreeMap<String, String> = req.trace.headers.iter().cloned().collect();
    if let Some(tp) = req.trace.get(TRACEPARENT) {
        if let Err(e) = parse_traceparent(tp) {
            ev.insert("traceparent_error".into(), e.to_string());
        }
    }
    ev
}

/// Requests of one process, by what they carried.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessStats {
    /// Outbound requests by propagation, indexed like [`Propagation::ALL`].
    outbound: [u64; Propagation::ALL.len()],
    pub inbound: u64,
    pub telemetry_exports: u64,
    /// Spans the process exported that reached the span rules (receiver or wire).
    pub spans_exported: u64,
    pub last_seen: Option<SystemTime>,
}

impl ProcessStats {
    pub fn count_outbound(&mut self, p: Propagation) {
        if let Some(i) = Propagation::ALL.iter().position(|&q| q == p) {
            self.outbound[i] += 1;
        }
    }

    /// Outbound requests that carried `p`.
    pub fn outbound_with(&self, p: Propagation) -> u64 {
        Propagation::ALL
            .iter()
            .position(|&q| q == p)
            .map_or(0, |i| self.outbound[i])
    }

    /// Every outbound request (OTLP exports are not counted here).
    pub fn outbound(&self) -> u64 {
        self.outbound.iter().sum()
    }

    /// B3, Jaeger or vendor context.
    pub fn other_context(&self) -> u64 {
        [Propagation::B3, Propagation::Jaeger, Propagation::Vendor]
            .into_iter()
            .map(|p| self.outbound_with(p))
            .sum()
    }

    /// Share of judged outbound requests that carry valid W3C context, in percent.
    pub fn coverage_percent(&self) -> Option<f64> {
        let judged = self.outbound() - self.outbound_with(Propagation::Undetermined);
        (judged > 0).then(|| 100.0 * self.outbound_with(Propagation::W3c) as f64 / judged as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::http1::parse_request;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn req(headers: &str) -> Request {
        parse_request(format!("GET /api?x=1 HTTP/1.1\r\nHost: h\r\n{headers}\r\n").as_bytes())
            .expect("parses")
    }

    fn kind(v: Verdict) -> Option<FindingKind> {
        match v {
            Verdict::Finding(k, _) => Some(k),
            _ => None,
        }
    }

    #[test]
    fn rules_for_outbound_requests() {
        assert_eq!(
            judge_outbound(&req(&format!("traceparent: {TP}\r\n")), true),
            Verdict::Clean
        );
        assert_eq!(
            kind(judge_outbound(&req(""), true)),
            Some(FindingKind::MissingTraceparent)
        );
        assert_eq!(
            kind(judge_outbound(&req(""), false)),
            Some(FindingKind::UninstrumentedClient)
        );
        assert_eq!(
            kind(judge_outbound(&req("traceparent: 00-xyz\r\n"), false)),
            Some(FindingKind::MalformedTraceparent)
        );
        assert_eq!(
            kind(judge_outbound(
                &req("b3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1\r\n"),
                true
            )),
            Some(FindingKind::NonW3cPropagation)
        );
        assert_eq!(
            judge_outbound(
                &req("x-amzn-trace-id: Root=1-5759e988-bd862e3fe1be46a994272793\r\n"),
                true
            ),
            Verdict::Clean
        );
    }

    #[test]
    fn a_truncated_capture_is_never_missing_traceparent() {
        let cut = parse_request(b"GET /a HTTP/1.1\r\nHost: h\r\nX-Pad: aaaa").expect("parses");
        assert!(!cut.complete);
        assert_eq!(judge_outbound(&cut, true), Verdict::Undetermined);
        // ...but a traceparent seen before the cut still counts.
        let cut =
            parse_request(format!("GET /a HTTP/1.1\r\ntraceparent: {TP}\r\nX-Pad: aa").as_bytes())
                .expect("parses");
        assert_eq!(judge_outbound(&cut, true), Verdict::Clean);
    }

    #[test]
    fn otlp_exports_are_not_judged() {
        let export = parse_request(b"POST /v1/traces HTTP/1.1\r\nHost: c\r\n\r\n").expect("parses");
        assert_eq!(judge_outbound(&export, true), Verdict::Telemetry);
    }

    #[test]
    fn malformed_evidence_says_why() {
        let Verdict::Finding(_, ev) = judge_outbound(&req("traceparent: 00-xyz\r\n"), true) else {
            panic!("expected a finding");
        };
        assert_eq!(ev.get("traceparent").map(String::as_str), Some("00-xyz"));
        assert_eq!(
            ev.get("traceparent_error").map(String::as_str),
            Some("wrong length")
        );
    }

    #[test]
    fn coverage() {
        let mut s = ProcessStats::default();
        s.count_outbound(Propagation::W3c);
        s.count_outbound(Propagation::None);
        s.count_outbound(Propagation::Undetermined);
        assert_eq!(s.coverage_percent(), Some(50.0));
    }
}
