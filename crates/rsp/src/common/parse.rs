//! Parsers for the values options take: durations, sizes, ranges, `NAME=VALUE`.
//! Each error says what was wrong and what was expected.

use std::time::Duration;

use serde_json::Value;

/// `500ms`, `2s`, `1m30s`, or a bare number of seconds (`1.5`): the
/// library's one duration parser, so every flag agrees with the API.
pub fn duration(text: &str) -> Result<Duration, String> {
    runspace::units::parse_duration(text).map_err(|e| e.to_string())
}

/// A duration that must be longer than zero: a timeout of 0 would time
/// out every item before it starts.
pub fn timeout(text: &str) -> Result<Duration, String> {
    match duration(text)? {
        Duration::ZERO => Err(format!("invalid timeout '{text}': must be longer than zero (e.g. 500ms or 30s)")),
        d => Ok(d),
    }
}

/// `64MB`, `512K`, `1GiB`, `1048576` (bytes). Units are binary: 1 MB = 1024 KB.
pub fn size(text: &str) -> Result<usize, String> {
    let bytes = runspace::units::parse_size(text).map_err(|e| e.to_string())?;
    usize::try_from(bytes).map_err(|_| format!("invalid size '{text}': too large for this machine"))
}

pub use runspace::inputs::Range;

/// `1..100`, `-5..5`, `10..1`: the library's [`Range`], so `rsp run` and
/// `rsp job start` agree.
pub fn range(text: &str) -> Result<Range, String> {
    text.parse()
}

/// `NAME=VALUE`, VALUE parsed as JSON when it is valid JSON (integers beyond
/// ±2^53 as strings, `{"$bytes": ...}` as bytes), else taken as a string.
pub fn name_value(text: &str) -> Result<(String, Value), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("invalid '{text}': expected NAME=VALUE (e.g. limit=10 or name='\"x\"')"))?;
    if name.is_empty() {
        return Err(format!("invalid '{text}': the name before '=' is empty"));
    }
    let value = runspace::json::parse(value.as_bytes()).unwrap_or_else(|_| Value::String(value.to_string()));
    Ok((name.to_string(), value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations() {
        assert_eq!(duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(duration("soon").unwrap_err().contains("invalid duration 'soon'"));
        assert!(duration("-1").is_err());
        assert_eq!(timeout("0.5").unwrap(), Duration::from_millis(500));
        assert!(timeout("4e31").is_err());
        assert!(timeout("18446744073709551615s").is_err());
        for zero in ["0", "0s", "0.0", "0ms"] {
            assert!(timeout(zero).unwrap_err().contains("must be longer than zero"), "{zero}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(size("64MB").unwrap(), 64 << 20);
        assert_eq!(size("512k").unwrap(), 512 << 10);
        assert_eq!(size("1GiB").unwrap(), 1 << 30);
        assert_eq!(size("100").unwrap(), 100);
        assert!(size("12 parsecs").unwrap_err().contains("invalid size"));
        assert!(size("0").is_err());
    }

    #[test]
    fn name_values() {
        assert_eq!(name_value("n=10").unwrap(), ("n".into(), json!(10)));
        assert_eq!(name_value("s=hello").unwrap(), ("s".into(), json!("hello")));
        assert_eq!(name_value("o={\"a\":1}").unwrap(), ("o".into(), json!({"a": 1})));
        assert_eq!(name_value("e=").unwrap(), ("e".into(), json!("")));
        assert_eq!(name_value("big=18446744073709551616").unwrap().1, json!("18446744073709551616"));
        assert_eq!(name_value("neg=-9223372036854775809").unwrap().1, json!("-9223372036854775809"));
        assert!(name_value("novalue").unwrap_err().contains("expected NAME=VALUE"));
        assert!(name_value("=1").unwrap_err().contains("empty"));
    }
}
