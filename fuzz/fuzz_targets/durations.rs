//! Durations (`500ms`, `1m30s`, `1.5`, `4e31`): never panic; an accepted
//! value is within the documented maximum; seconds from any float are checked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runspace::units::{duration_from_secs, parse_duration, MAX_DURATION};

fuzz_target!(|data: &[u8]| {
    if data.len() >= 8 {
        let secs = f64::from_le_bytes(data[..8].try_into().unwrap());
        if let Ok(d) = duration_from_secs(secs) {
            assert!(d <= MAX_DURATION && secs >= 0.0, "{secs}");
        }
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse_duration(text) {
        Ok(d) => assert!(d <= MAX_DURATION, "{text:?} gave {d:?}"),
        Err(e) => assert!(e.to_string().contains(text.trim()) || text.trim().is_empty(), "{text:?}: {e}"),
    }
});
