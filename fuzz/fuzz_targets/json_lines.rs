//! JSON input lines: the big-integer pre-scan never changes whether text is
//! valid JSON, never panics, and leaves no integer beyond ±2^53 as a number.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runspace::json::{parse, quote_big_integers, MAX_SAFE_INTEGER};
use runspace::{inputs, Input};
use serde_json::Value;

fn check_numbers(v: &Value) {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                assert!(i.unsigned_abs() <= MAX_SAFE_INTEGER, "{i} kept as a number");
            } else if let Some(u) = n.as_u64() {
                assert!(u <= MAX_SAFE_INTEGER, "{u} kept as a number");
            }
        }
        Value::Array(items) => items.iter().for_each(check_numbers),
        Value::Object(map) => map.values().for_each(check_numbers),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let plain = serde_json::from_slice::<Value>(data);
    let ours = parse(data);
    assert_eq!(plain.is_ok(), ours.is_ok(), "validity changed: {:?}", String::from_utf8_lossy(data));
    if let Ok(v) = &ours {
        check_numbers(v);
        // Nothing to quote: the very same value as serde_json's.
        if matches!(quote_big_integers(data), std::borrow::Cow::Borrowed(_)) {
            assert_eq!(Ok(v), plain.as_ref().map_err(|_| ()));
        }
    }
    match inputs::json_line(data) {
        None => assert!(data.iter().all(u8::is_ascii_whitespace)),
        Some(Input::Value(v)) => assert_eq!(Some(&v), ours.as_ref().ok()),
        Some(Input::Invalid { error, .. }) => assert!(ours.is_err() && error.starts_with("malformed JSON")),
    }
    // Text lines keep their exact bytes.
    match inputs::line(data.to_vec()) {
        Input::Value(Value::String(s)) => assert_eq!(s.as_bytes(), data),
        Input::Value(v) => assert_eq!(runspace::json::as_bytes(&v).as_deref(), Some(data)),
        Input::Invalid { .. } => unreachable!("a line is always a value"),
    }
});
