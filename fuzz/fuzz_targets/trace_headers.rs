//! Classification of arbitrary trace-context header sets (names from the known set, any value).
#![no_main]

use agent::parse::trace_context::{parse_traceparent, Propagation, TraceHeaders, TRACEPARENT};
use libfuzzer_sys::fuzz_target;

const NAMES: &[&str] = &[
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-sampled",
    "uber-trace-id",
    "x-amzn-trace-id",
    "x-cloud-trace-context",
];

fuzz_target!(|data: &[u8]| {
    // Each header: one byte picks the name, the rest up to a 0 byte is the value.
    let headers = data
        .split(|b| *b == 0)
        .filter_map(|chunk| {
            let (&pick, value) = chunk.split_first()?;
            let name = NAMES[usize::from(pick) % NAMES.len()];
            Some((name.to_owned(), String::from_utf8_lossy(value).into_owned()))
        })
        .collect();
    let th = TraceHeaders { headers };
    let p = th.classify();
    if let Some(tp) = th.get(TRACEPARENT) {
        let valid = parse_traceparent(tp).is_ok();
        assert_eq!(p == Propagation::W3c, valid);
        assert_eq!(p == Propagation::Malformed, !valid);
        assert_eq!(th.traceparent().is_some(), valid);
    } else {
        assert!(!matches!(p, Propagation::W3c | Propagation::Malformed));
    }
});
