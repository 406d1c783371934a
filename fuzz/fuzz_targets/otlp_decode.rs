//! The OTLP receiver's decode path: protobuf, JSON and gzip bodies; never panics, never returns
//! a span with an invalid id, and the size limit holds after decompression.
#![no_main]

use agent::otlp::{decode_trace_body, BodyError};
use libfuzzer_sys::fuzz_target;

/// Small, so that the gzip limit is exercised.
const MAX: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the format and the encoding.
    let Some((&mode, body)) = data.split_first() else { return };
    let json = mode & 1 == 1;
    let gzip = mode & 2 == 2;
    match decode_trace_body(body, json, gzip, MAX) {
        Ok((spans, _invalid)) => {
            for s in spans {
                assert_ne!(s.trace_id, [0; 16]);
                assert_ne!(s.span_id, [0; 8]);
                assert_ne!(s.parent_span_id, Some([0; 8]));
            }
        }
        Err(BodyError::TooLarge) => assert!(gzip || body.len() > MAX),
        Err(BodyError::Corrupt | BodyError::Invalid) => {}
    }
});
