//! HTTP/2 request streams as the kernel captures them: arbitrary bytes, cut into chunks at
//! arbitrary points with arbitrary uncaptured tails, after a real preface or joined mid-way. The
//! decoder never panics, keeps no value but trace context, and strips queries from paths.
#![no_main]

use agent::{
    model::HTTP2_PREFACE as PREFACE,
    parse::{
        h2::{H2Event, RequestStream},
        trace_context::is_trace_header,
    },
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut stream = if mode & 1 == 0 {
        RequestStream::from_start()
    } else {
        RequestStream::untrusted()
    };
    let mut input = Vec::with_capacity(PREFACE.len() + rest.len());
    if mode & 2 == 0 {
        input.extend_from_slice(PREFACE);
    }
    input.extend_from_slice(rest);
    // Chunk sizes and missing tails come from the mode byte's upper bits and the data itself.
    let step = usize::from(mode >> 2).max(1);
    let mut at = 0;
    while at < input.len() {
        let end = (at + step).min(input.len());
        let lost = u64::from(input[at] & 0x0f == 0x0f) * u64::from(input[at]);
        let total = (end - at) as u64 + lost;
        for event in stream.feed(&input[at..end], total, is_trace_header) {
            if let H2Event::Request(req) = event {
                for (name, _) in &req.headers {
                    assert!(is_trace_header(name), "kept a non-trace header: {name}");
                }
                assert!(!req.path.contains(['?', '#']), "query or fragment kept");
            }
        }
        at = end;
    }
});
