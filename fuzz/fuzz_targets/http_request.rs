//! HTTP request prefixes as the kernel captures them: the parser never panics, keeps only
//! trace-context header values, and the propagation verdict is total.
#![no_main]

use agent::parse::{http1::parse_request, trace_context::is_trace_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = parse_request(data) else { return };
    for (name, _) in &req.trace.headers {
        assert!(is_trace_header(name), "kept a non-trace header: {name}");
    }
    assert!(!req.path.contains(['?', '#']), "query or fragment kept");
    let _propagation = req.trace.classify();
    let _parent = req.trace.traceparent();
    let _telemetry = req.is_telemetry();
});
