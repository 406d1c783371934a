//! Path templating: total, idempotent, keeps the segment count, and leaves no id behind.
#![no_main]

use agent::report::path_template::{is_id, template_path};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    let t = template_path(path);
    assert_eq!(t.split('/').count(), path.split('/').count());
    assert!(!t.split('/').any(is_id));
    assert_eq!(template_path(&t), t);
});
