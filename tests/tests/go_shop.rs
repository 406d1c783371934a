//! The seed's own world: Go services on the OpenTelemetry Go SDK (tests/go: loadgen → frontend →
//! checkout → inventory over HTTP and payment over gRPC, grpc-go), built with the Go on PATH
//! (1.26) into target/go/ by `cargo xtask test`. Each seed fault is a switch of one service
//! (SHOP_FAULTS); every test asserts the exact findings of the pids it started, and that every
//! other shop process has none.
//!
//! Export modes: (a) the SDKs export to the agent's OTLP receivers (the span rules see the
//! spans; `--forward-to` passes them on to Jaeger); (b) the SDKs export straight to a Collector
//! in front of Jaeger: the agent only sees the exports go by, so the span rules count the
//! contexts `unverifiable` (what is true today).

// Crate roots look for modules beside them; this one lives in go_shop/ so that cargo does not
// take it for a test target of its own.
#[path = "go_shop/harness.rs"]
mod harness;

use std::time::Duration;

use serde_json::json;
use tracegap_tests::{findings_of, kinds_of, last_counters, show};

use harness::{
    agent, annotating_agent, assert_clean, assert_full_coverage, assert_route, collector, coverage,
    settle, the_finding, wait_for_go_tls_probes, Export, Jaeger, Setup, Shop, CHARGE,
    COMPLETE_TRACE,
};

/// Mode (a), every switch off: no finding for any shop process, every request carries W3C
/// context, every context judged against the spans, and the agent forwards the exports to
/// Jaeger, where each purchase is one connected trace of nine spans.
#[test]
fn go_shop_all_switches_off_no_finding_and_complete_traces_in_jaeger() {
    let jaeger = Jaeger::start();
    let forward = format!("http://{}", jaeger.otlp_http);
    let agent = agent(&["--forward-to", &forward]);
    let shop = Shop::start(Export::to_agent(&agent), Setup::default());
    let n = 50;
    let load = shop.load(n);
    settle();
    let lines = agent.stop();

    let mut pids = shop.pids().to_vec();
    pids.push(("loadgen", load.pid));
    assert_clean(&lines, &pids);
    let n64 = n as u64;
    assert_full_coverage(&lines, load.pid, n64);
    assert_full_coverage(&lines, shop.frontend.pid(), n64);
    // 50 HTTP requests to inventory and 50 gRPC calls to payment.
    assert_full_coverage(&lines, shop.checkout.pid(), 2 * n64);
    let c = coverage(&lines, shop.checkout.pid());
    assert_eq!(c["service_name"], "checkout", "{c}");
    let counters = last_counters(&lines);
    let traces = &counters["agent"]["traces"];
    assert_eq!(
        traces["judged"],
        4 * n64,
        "four outbound contexts per purchase, each judged against the spans: {counters}"
    );
    assert_eq!(traces["unverifiable"], 0, "{counters}");
    assert_eq!(counters["agent"]["unattributed_batches"], 0, "{counters}");

    // Forwarded unchanged: Jaeger has every purchase as one trace, every span's parent in it.
    assert_eq!(load.sampled, n);
    for (id, _) in load.trace_ids.iter().take(5) {
        let spans = jaeger.wait_trace(id, COMPLETE_TRACE.len());
        let mut services: Vec<&str> = spans.iter().map(|(s, _, _)| s.as_str()).collect();
        services.sort_unstable();
        assert_eq!(services, COMPLETE_TRACE, "trace {id}: {spans:?}");
        for (service, span, parent) in &spans {
            if let Some(parent) = parent {
                assert!(
                    spans.iter().any(|(_, s, _)| s == parent),
                    "{service} span {span} of trace {id} has a parent not in the trace"
                );
            }
        }
        assert_eq!(
            spans.iter().filter(|(_, _, p)| p.is_none()).count(),
            1,
            "one root: {spans:?}"
        );
    }
}

/// Frontend's HTTP client without `otelhttp.NewTransport`: its calls to checkout carry no
/// context (the process has OTEL_* variables, so `missing_traceparent`, not uninstrumented).
#[test]
fn go_shop_no_otelhttp_transport_is_missing_traceparent() {
    let agent = agent(&[]);
    let shop = Shop::start(
        Export::to_agent(&agent),
        Setup::default().fault("frontend", "no-transport"),
    );
    let load = shop.load(30);
    settle();
    let lines = agent.stop();
    let f = the_finding(
        &lines,
        shop.frontend.pid(),
        "missing_traceparent",
        "frontend",
    );
    assert_route(
        f,
        &Shop::peer(shop.checkout_port),
        "POST",
        "/checkout",
        "http/1.1",
        false,
    );
    assert_eq!(f["count"], 30, "{f}");
    assert_eq!(
        coverage(&lines, shop.frontend.pid())["coverage_percent"],
        0.0
    );
    let mut others = shop.pids()[1..].to_vec();
    others.push(("loadgen", load.pid));
    assert_clean(&lines, &others);
}

/// Checkout never calls `otel.SetTextMapPropagator`: `Inject` writes nothing, on HTTP and on
/// gRPC alike.
#[test]
fn go_shop_no_propagator_is_missing_traceparent_on_http_and_grpc() {
    let agent = agent(&[]);
    let shop = Shop::start(
        Export::to_agent(&agent),
        Setup::default().fault("checkout", "no-propagator"),
    );
    let load = shop.load(20);
    settle();
    let lines = agent.stop();
    let pid = shop.checkout.pid();
    assert_eq!(
        kinds_of(&lines, pid),
        ["missing_traceparent"],
        "{}",
        show(&lines)
    );
    let mut found = findings_of(&lines, pid);
    found.sort_by_key(|f| f["path"].as_str().map(str::to_owned));
    assert_eq!(found.len(), 2, "{found:?}");
    assert_route(
        found[0],
        &Shop::peer(shop.inventory_port),
        "GET",
        "/reserve",
        "http/1.1",
        false,
    );
    assert_route(
        found[1],
        &Shop::peer(shop.payment_port),
        "POST",
        CHARGE,
        "grpc",
        false,
    );
    for f in found {
        assert_eq!(f["service_name"], "checkout", "{f}");
        assert_eq!(f["comm"], "checkout", "{f}");
        assert_eq!(f["count"], 20, "{f}");
    }
    let mut others = vec![shop.pids()[0], shop.pids()[2], shop.pids()[3]];
    others.push(("loadgen", load.pid));
    assert_clean(&lines, &others);
}

/// Checkout's gRPC client without the otelgrpc stats handler: 100 calls on one HTTP/2
/// connection (HPACK dynamic-table references from the second call on), each judged.
#[test]
fn go_shop_no_otelgrpc_handler_is_missing_traceparent_for_each_of_100_calls() {
    let agent = agent(&[]);
    let shop = Shop::start(
        Export::to_agent(&agent),
        Setup::default().fault("checkout", "no-grpc-handler"),
    );
    let load = shop.load(100);
    settle();
    let lines = agent.stop();
    let f = the_finding(
        &lines,
        shop.checkout.pid(),
        "missing_traceparent",
        "checkout",
    );
    assert_route(
        f,
        &Shop::peer(shop.payment_port),
        "POST",
        CHARGE,
        "grpc",
        false,
    );
    assert_eq!(f["count"], 100, "every call on the connection: {f}");
    let c = coverage(&lines, shop.checkout.pid());
    assert_eq!(
        (&c["requests"], &c["with_context"], &c["without_context"]),
        (&json!(200), &json!(100), &json!(100)),
        "100 HTTP requests with context, 100 gRPC calls without: {c}"
    );
    // Every Charge call decoded: the count and the coverage above. (The host-wide `h2_lost_sync`
    // and `h2_undetermined` counters are not asserted: payment's OTLP/gRPC export of ~100 spans
    // is one write of several DATA frames longer than the capture cap, the frame header past
    // the cap is unseen and that telemetry connection loses sync — measured: over OTLP/HTTP
    // instead, none does — and other processes on the host count there too.)
    let mut others = vec![shop.pids()[0], shop.pids()[2], shop.pids()[3]];
    others.push(("loadgen", load.pid));
    assert_clean(&lines, &others);
}

/// Checkout calls inventory from a goroutine with `context.Background()`: a new trace that
/// checkout itself started while handling a traced request.
#[test]
fn go_shop_background_context_in_a_goroutine_is_broken_context() {
    let agent = agent(&[]);
    let shop = Shop::start(
        Export::to_agent(&agent),
        Setup::default().fault("checkout", "background-context"),
    );
    let load = shop.load(20);
    let pid = shop.checkout.pid();
    agent.wait_for("broken_context", Duration::from_secs(30), |lines| {
        findings_of(lines, pid)
            .iter()
            .any(|f| f["kind"] == "broken_context" && f["count"] == 20)
    });
    settle();
    let lines = agent.stop();
    let f = the_finding(&lines, pid, "broken_context", "checkout");
    assert_route(
        f,
        &Shop::peer(shop.inventory_port),
        "GET",
        "/reserve",
        "http/1.1",
        false,
    );
    assert_eq!(f["count"], 20, "{f}");
    assert_ne!(
        f["evidence"]["received_trace_id"], f["evidence"]["sent_trace_id"],
        "{f}"
    );
    let mut others = vec![shop.pids()[0], shop.pids()[2], shop.pids()[3]];
    others.push(("loadgen", load.pid));
    assert_clean(&lines, &others);
}

/// Checkout's hand-made client span for inventory is never ended: the parent id it sends is
/// never among its exported spans.
#[test]
fn go_shop_span_never_ended_is_unexported_span() {
    let agent = agent(&[]);
    let shop = Shop::start(
        Export::to_agent(&agent),
        Setup::default().fault("checkout", "unended-span"),
    );
    let load = shop.load(20);
    let pid = shop.checkout.pid();
    agent.wait_for("unexported_span", Duration::from_secs(30), |lines| {
        findings_of(lines, pid)
            .iter()
            .any(|f| f["kind"] == "unexported_span" && f["count"] == 20)
    });
    settle();
    let lines = agent.stop();
    let f = the_finding(&lines, pid, "unexported_span", "checkout");
    assert_route(
        f,
        &Shop::peer(shop.inventory_port),
        "GET",
        "/reserve",
        "http/1.1",
        false,
    );
    assert_eq!(f["count"], 20, "{f}");
    assert!(
        f["evidence"]["parent_id"]
            .as_str()
            .is_some_and(|p| p.len() == 16),
        "{f}"
    );
    let mut others = vec![shop.pids()[0], shop.pids()[2], shop.pids()[3]];
    others.push(("loadgen", load.pid));
    assert_clean(&lines, &others);
}

/// Inventory uses `sdktrace.WithSyncer` (SimpleSpanProcessor): one export request per span.
#[test]
fn go_shop_with_syncer_is_synchronous_export() {
    let agent = agent(&[]);
    let shop = Shop::start(
        Export::to_agent(&agent),
        Setup::default().fault("inventory", "sync-export"),
    );
    let load = shop.load(20);
    settle();
    let lines = agent.stop();
    let f = the_finding(
        &lines,
        shop.inventory.pid(),
        "synchronous_export",
        "inventory",
    );
    assert_eq!(f["method"], "POST", "{f}");
    assert_eq!(f["path"], "/v1/traces", "{f}");
    assert_eq!(f["protocol"], "http/1.1", "{f}");
    assert_eq!(f["evidence"]["spans_per_export"], "1", "{f}");
    let mut others = vec![shop.pids()[0], shop.pids()[1], shop.pids()[3]];
    others.push(("loadgen", load.pid));
    assert_clean(&lines, &others);
}

/// Frontend registers only the B3 propagator: its calls carry X-B3-* and no traceparent.
#[test]
fn go_shop_b3_only_is_non_w3c_propagation() {
    let agent = agent(&[]);
    let shop = Shop::start(
        Export::to_agent(&agent),
        Setup::default().fault("frontend", "b3-only"),
    );
    let load = shop.load(20);
    settle();
    let lines = agent.stop();
    let f = the_finding(
        &lines,
        shop.frontend.pid(),
        "non_w3c_propagation",
        "frontend",
    );
    assert_route(
        f,
        &Shop::peer(shop.checkout_port),
        "POST",
        "/checkout",
        "http/1.1",
        false,
    );
    assert_eq!(f["count"], 20, "{f}");
    assert!(
        f["evidence"]["x-b3-traceid"]
            .as_str()
            .is_some_and(|id| id.len() == 32),
        "{f}"
    );
    let c = coverage(&lines, shop.frontend.pid());
    assert_eq!(
        (&c["other_context"], &c["with_context"]),
        (&json!(20), &json!(0)),
        "{c}"
    );
    let mut others = shop.pids()[1..].to_vec();
    others.push(("loadgen", load.pid));
    assert_clean(&lines, &others);
}

/// Every service samples 1% of new traces: unsampled contexts (flags 00) promise no span, so
/// nothing is a finding; each is counted `unsampled`, each sampled one judged.
#[test]
fn go_shop_ratio_sampler_is_no_finding_and_counted_unsampled() {
    let agent = agent(&[]);
    let all = "sample-1pct";
    let shop = Shop::start(
        Export::to_agent(&agent),
        Setup::default()
            .fault("frontend", all)
            .fault("checkout", all)
            .fault("inventory", all)
            .fault("payment", all)
            .fault("loadgen", all),
    );
    let n = 100;
    let load = shop.load(n);
    settle();
    let lines = agent.stop();
    let mut pids = shop.pids().to_vec();
    pids.push(("loadgen", load.pid));
    assert_clean(&lines, &pids);
    assert!(
        load.sampled < n / 2,
        "1% sampling kept {} of {n}",
        load.sampled
    );
    let counters = last_counters(&lines);
    let traces = &counters["agent"]["traces"];
    let (n, sampled) = (n as u64, load.sampled as u64);
    assert_eq!(
        traces["unsampled"],
        4 * (n - sampled),
        "four contexts per unsampled purchase: {counters}"
    );
    assert_eq!(traces["judged"], 4 * sampled, "{counters}");
    // Unsampled context is still W3C context: coverage is whole.
    assert_full_coverage(&lines, shop.frontend.pid(), n);
}

/// HTTPS between checkout and inventory (Go crypto/tls, HTTP/2 by ALPN, a certificate made at
/// start): the Go 1.26 TLS probes see the plaintext. Half of checkout's calls go without
/// otelhttp: those are `missing_traceparent` over TLS, the other half carry context.
#[test]
fn go_shop_https_between_checkout_and_inventory_is_judged_over_go_tls() {
    let agent = agent(&[]);
    let shop = Shop::start(
        Export::to_agent(&agent),
        Setup {
            fraction: Some("0.5"),
            https: true,
            ..Setup::default()
        }
        .fault("checkout", "no-transport"),
    );
    // A uprobe covers a Go executable from the moment the agent attaches it, tens of
    // milliseconds after exec (README, TLS), and an HTTP/2 connection whose preface went out
    // before is not decoded. Long-running services take traffic later than that: make sure of
    // it rather than race (and fail with the agent's log if it refused a file).
    wait_for_go_tls_probes(&agent, &["checkout", "inventory"]);
    let load = shop.load(40);
    settle();
    let lines = agent.stop();
    let f = the_finding(
        &lines,
        shop.checkout.pid(),
        "missing_traceparent",
        "checkout",
    );
    assert_route(
        f,
        &Shop::peer(shop.inventory_port),
        "GET",
        "/reserve",
        "h2",
        true,
    );
    assert_eq!(f["count"], 20, "half of 40: {f}");
    let c = coverage(&lines, shop.checkout.pid());
    assert_eq!(
        (&c["requests"], &c["with_context"], &c["without_context"]),
        (&json!(80), &json!(60), &json!(20)),
        "40 HTTPS requests (half with context) and 40 gRPC calls: {c}"
    );
    let mut others = vec![shop.pids()[0], shop.pids()[2], shop.pids()[3]];
    others.push(("loadgen", load.pid));
    assert_clean(&lines, &others);
}

/// Mode (b): the SDKs export straight to a Collector (otlp → batch → otlp) in front of Jaeger.
/// Exporting to a Collector, not to the agent: the wire rules hold (frontend without otelhttp:
/// `missing_traceparent`), and so do the span rules, from the exports the agent reads off the
/// wire on their way to the Collector (OTLP/HTTP from three services, OTLP/gRPC from payment,
/// neither to the agent's ports): checkout's never-ended span is `unexported_span`.
#[test]
fn go_shop_exporting_to_a_collector_is_judged_from_the_wire() {
    let jaeger = Jaeger::start();
    let (_collector, collector) = collector(&jaeger);
    let agent = agent(&[]);
    let shop = Shop::start(
        collector,
        Setup::default()
            .fault("frontend", "no-transport")
            .fault("checkout", "unended-span"),
    );
    let n = 20;
    let load = shop.load(n);
    let checkout = shop.checkout.pid();
    agent.wait_for("unexported_span", Duration::from_secs(30), |lines| {
        findings_of(lines, checkout)
            .iter()
            .any(|f| f["kind"] == "unexported_span" && f["count"] == n)
    });
    settle();
    let lines = agent.stop();

    let f = the_finding(
        &lines,
        shop.frontend.pid(),
        "missing_traceparent",
        "frontend",
    );
    assert_route(
        f,
        &Shop::peer(shop.checkout_port),
        "POST",
        "/checkout",
        "http/1.1",
        false,
    );
    let mut others = vec![shop.pids()[2], shop.pids()[3]];
    others.push(("loadgen", load.pid));
    assert_clean(&lines, &others);
    let f = the_finding(&lines, shop.checkout.pid(), "unexported_span", "checkout");
    assert_route(
        f,
        &Shop::peer(shop.inventory_port),
        "GET",
        "/reserve",
        "http/1.1",
        false,
    );
    assert_eq!(f["count"], n, "{f}");
    let counters = last_counters(&lines);
    let agent_counters = &counters["agent"];
    assert_eq!(
        counters["receiver"]["export_requests"], 0,
        "none reached the agent's receiver: {counters}"
    );
    assert!(
        agent_counters["wire_exports"].as_u64() >= Some(5),
        "the exports to the Collector were read off the wire: {counters}"
    );
    // Every service's spans, over OTLP/HTTP and (payment, to a port the kernel does not know
    // as OTLP's: read on probation) OTLP/gRPC.
    for (name, pid) in shop.pids() {
        let exported = lines
            .iter()
            .rev()
            .find(|l| l["kind"] == "coverage" && l["pid"] == pid)
            .and_then(|l| l["spans_exported"].as_u64());
        assert!(
            exported >= Some(n as u64),
            "{name}: {exported:?}\n{counters}"
        );
    }
    // The spans did reach Jaeger through the Collector.
    let (id, _) = &load.trace_ids[0];
    let spans = jaeger.wait_trace(id, 3);
    assert!(spans.iter().any(|(s, _, _)| s == "loadgen"), "{spans:?}");
}

/// The other span rules from the wire too, as when exporting to the agent: checkout hands a
/// goroutine `context.Background()` (`broken_context`); inventory exports each span alone
/// (`synchronous_export`).
#[test]
fn go_shop_exporting_to_a_collector_broken_context_and_syncer_from_the_wire() {
    let jaeger = Jaeger::start();
    let (_collector, collector) = collector(&jaeger);
    let agent = agent(&[]);
    let shop = Shop::start(
        collector,
        Setup::default()
            .fault("checkout", "background-context")
            .fault("inventory", "sync-export"),
    );
    let n = 20;
    let load = shop.load(n);
    let checkout = shop.checkout.pid();
    agent.wait_for("broken_context", Duration::from_secs(30), |lines| {
        findings_of(lines, checkout)
            .iter()
            .any(|f| f["kind"] == "broken_context" && f["count"] == n)
    });
    settle();
    let lines = agent.stop();
    let f = the_finding(&lines, checkout, "broken_context", "checkout");
    assert_route(
        f,
        &Shop::peer(shop.inventory_port),
        "GET",
        "/reserve",
        "http/1.1",
        false,
    );
    let f = the_finding(
        &lines,
        shop.inventory.pid(),
        "synchronous_export",
        "inventory",
    );
    assert_eq!(f["path"], "/v1/traces", "{f}");
    assert_eq!(f["evidence"]["spans_per_export"], "1", "{f}");
    let counters = last_counters(&lines);
    assert_eq!(
        counters["receiver"]["export_requests"], 0,
        "none reached the agent's receiver: {counters}"
    );
    let mut others = vec![shop.pids()[0], shop.pids()[3]];
    others.push(("loadgen", load.pid));
    assert_clean(&lines, &others);
}

/// The annotation span named `name` of a trace from Jaeger's query API, after checking the
/// whole trace: every span's parent is in it and no span carries Jaeger's "invalid parent span
/// IDs" warning.
#[track_caller]
fn annotation_in<'a>(
    trace: &'a serde_json::Value,
    name: &str,
    service: &str,
) -> &'a serde_json::Value {
    let spans = trace["spans"].as_array().expect("spans");
    for s in spans {
        let warnings = s["warnings"].to_string();
        assert!(
            !warnings.contains("invalid parent"),
            "span {} {}: {warnings}\n{trace}",
            s["operationName"],
            s["spanID"]
        );
        if let Some(parent) = s["references"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["refType"] == "CHILD_OF"))
        {
            assert!(
                spans.iter().any(|x| x["spanID"] == parent["spanID"]),
                "the parent of {} is in the trace: {trace}",
                s["operationName"]
            );
        }
    }
    let a = spans
        .iter()
        .find(|s| s["operationName"] == name)
        .unwrap_or_else(|| panic!("no {name:?} in {trace}"));
    let process = &trace["processes"][a["processID"].as_str().expect("processID")];
    assert_eq!(process["serviceName"], service, "{a}");
    let tags = a["tags"].as_array().expect("tags");
    let tag = |k: &str| {
        tags.iter()
            .find(|t| t["key"] == k)
            .map(|t| t["value"].clone())
    };
    assert_eq!(tag("tracegap.annotation"), Some(json!(true)), "{a}");
    assert_eq!(tag("span.kind"), Some(json!("internal")), "{a}");
    a
}

/// Checkout's never-ended client span, as Jaeger shows it: without tracegap, inventory's
/// server span names a parent that never arrives ("invalid parent span IDs"); with the
/// placeholder `tracegap: span never exported` (the missing span's own id, under checkout's
/// server span), the purchase is one connected trace again. One annotation per minute for the
/// finding: the other purchases stay as they were (the control), counted as rate limited.
#[test]
fn go_shop_unexported_span_placeholder_reconnects_the_trace_in_jaeger() {
    let jaeger = Jaeger::start();
    let agent = annotating_agent(&jaeger, "60s");
    let shop = Shop::start(
        Export::to_agent(&agent),
        Setup::default().fault("checkout", "unended-span"),
    );
    let load = shop.load(10);
    let pid = shop.checkout.pid();
    agent.wait_for("unexported_span", Duration::from_secs(30), |lines| {
        findings_of(lines, pid)
            .iter()
            .any(|f| f["kind"] == "unexported_span" && f["count"] == 10)
    });
    let (id, trace) = jaeger.wait_annotated(&load.trace_ids, "tracegap: span never exported");
    let a = annotation_in(&trace, "tracegap: span never exported", "checkout");
    let spans = trace["spans"].as_array().expect("spans");
    let children: Vec<_> = spans
        .iter()
        .filter(|s| {
            s["references"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["spanID"] == a["spanID"]))
        })
        .collect();
    assert!(
        !children.is_empty(),
        "inventory's server span hangs from the placeholder: {trace}"
    );
    for c in children {
        let p = &trace["processes"][c["processID"].as_str().expect("processID")];
        assert_eq!(p["serviceName"], "inventory", "{c}");
    }
    // The control: another purchase, not annotated, has the orphan and Jaeger's warning.
    let (other, _) = load
        .trace_ids
        .iter()
        .find(|(t, _)| *t != id)
        .expect("another purchase");
    let other = jaeger
        .raw_trace(other)
        .expect("the other purchase in Jaeger");
    assert!(
        other.to_string().contains("invalid parent"),
        "without the placeholder Jaeger warns: {other}"
    );
    let lines = agent.stop();
    let counters = last_counters(&lines);
    assert_eq!(counters["agent"]["annotations"], 1, "{counters}");
    assert_eq!(
        counters["agent"]["annotations_rate_limited"], 9,
        "{counters}"
    );
}

/// Frontend without otelhttp: `tracegap: missing_traceparent` in the purchase trace T where it
/// ends, naming the call to checkout.
#[test]
fn go_shop_missing_traceparent_annotation_in_jaeger() {
    let jaeger = Jaeger::start();
    let agent = annotating_agent(&jaeger, "0s");
    let shop = Shop::start(
        Export::to_agent(&agent),
        Setup::default().fault("frontend", "no-transport"),
    );
    let load = shop.load(10);
    let (_, trace) = jaeger.wait_annotated(&load.trace_ids, "tracegap: missing_traceparent");
    let a = annotation_in(&trace, "tracegap: missing_traceparent", "frontend");
    let tags = a["tags"].as_array().expect("tags");
    let tag = |k: &str| {
        tags.iter()
            .find(|t| t["key"] == k)
            .map(|t| t["value"].clone())
    };
    assert_eq!(tag("url.path"), Some(json!("/checkout")), "{a}");
    assert_eq!(tag("http.request.method"), Some(json!("POST")), "{a}");
    assert_eq!(
        tag("server.port"),
        Some(json!(i64::from(shop.checkout_port))),
        "{a}"
    );
    drop(agent.stop());
}

/// Checkout's goroutine with `context.Background()`: `tracegap: broken_context` in the purchase
/// trace T, under checkout's server span, linked to the new trace checkout started.
#[test]
fn go_shop_broken_context_annotation_in_jaeger() {
    let jaeger = Jaeger::start();
    let agent = annotating_agent(&jaeger, "0s");
    let shop = Shop::start(
        Export::to_agent(&agent),
        Setup::default().fault("checkout", "background-context"),
    );
    let load = shop.load(10);
    let (id, trace) = jaeger.wait_annotated(&load.trace_ids, "tracegap: broken_context");
    let a = annotation_in(&trace, "tracegap: broken_context", "checkout");
    let refs = a["references"].as_array().expect("references");
    let parent = refs
        .iter()
        .find(|r| r["refType"] == "CHILD_OF")
        .expect("a parent");
    let spans = trace["spans"].as_array().expect("spans");
    let server = spans
        .iter()
        .find(|s| s["spanID"] == parent["spanID"])
        .expect("parent in the trace");
    let p = &trace["processes"][server["processID"].as_str().expect("processID")];
    assert_eq!(
        p["serviceName"], "checkout",
        "under checkout's server span: {server}"
    );
    let link = refs
        .iter()
        .find(|r| r["traceID"] != id.as_str())
        .unwrap_or_else(|| panic!("a link to the new trace: {a}"));
    let linked = jaeger
        .raw_trace(link["traceID"].as_str().expect("traceID"))
        .expect("the new trace is in Jaeger");
    assert!(
        linked["spans"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["spanID"] == link["spanID"])),
        "the linked span is in the new trace: {linked}"
    );
    drop(agent.stop());
}
