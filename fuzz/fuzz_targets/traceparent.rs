//! The traceparent validator: never panics; what it accepts formats back to an equivalent value.
#![no_main]

use agent::parse::trace_context::{parse_traceparent, to_hex};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let Ok(tp) = parse_traceparent(s) else { return };
    assert_ne!(tp.version, 0xff);
    assert_ne!(tp.trace_id, [0; 16]);
    assert_ne!(tp.parent_id, [0; 8]);
    let canonical = format!(
        "{:02x}-{}-{}-{:02x}",
        tp.version,
        to_hex(&tp.trace_id),
        to_hex(&tp.parent_id),
        tp.flags
    );
    assert_eq!(parse_traceparent(&canonical), Ok(tp), "{canonical}");
});
