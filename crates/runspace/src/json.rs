//! JSON as runspace reads it and writes it: the value conventions.
//!
//! Luau numbers are doubles and Luau strings are bytes; JSON numbers are
//! arbitrary and JSON strings are Unicode. Two conventions keep every value's
//! meaning across that border, in both directions:
//!
//! - **Integers beyond ±2^53 travel as strings.** A double cannot hold them
//!   exactly, and `serde_json` would quietly round an integer past the 64-bit
//!   range to a float. [`parse`] reads such an integer literal as the string
//!   of its digits (`18446744073709551616` becomes `"18446744073709551616"`),
//!   and a script that returns that string gives back the same text.
//! - **Bytes that are not UTF-8 travel as `{"$bytes": "<base64>"}`.** A Luau
//!   string that is not valid UTF-8 becomes that one-key object (standard
//!   base64, padded), and that object becomes the exact byte string again on
//!   its way into a script; [`bytes_value`] and [`as_bytes`] are the two
//!   directions. A table key that is not UTF-8 becomes the key
//!   `"$bytes:<base64>"`. Valid UTF-8 is always a plain string.
//!
//! The job server and the command line read JSON through [`parse`], so an
//! input line, a `--var`, an API request and `json.decode` agree.

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{Map, Value};

/// The key of the object that stands for a byte string that is not UTF-8.
pub const BYTES_KEY: &str = "$bytes";

/// The prefix of an object key that stands for a byte-string key that is not UTF-8.
pub const BYTES_KEY_PREFIX: &str = "$bytes:";

/// The largest integer a double holds exactly: 2^53.
pub const MAX_SAFE_INTEGER: u64 = 1 << 53;

/// Parses JSON text, reading integers beyond ±2^53 as strings of their
/// digits instead of rounding them.
///
/// ```
/// use serde_json::json;
/// let v = runspace::json::parse(br#"{"id": 18446744073709551616, "n": -9223372036854775809, "x": 1.5}"#).unwrap();
/// assert_eq!(v, json!({"id": "18446744073709551616", "n": "-9223372036854775809", "x": 1.5}));
/// ```
pub fn parse(text: &[u8]) -> serde_json::Result<Value> {
    // Parse as usual first: almost no text holds such an integer, and a walk
    // of the parsed value is cheaper than a scan of the text. Only when the
    // value holds a number that may have been one is the text scanned and
    // parsed again. Errors come from the first parse, so their positions
    // refer to the text as given.
    let value = serde_json::from_slice(text)?;
    if !has_unsafe_integer(&value) {
        return Ok(value);
    }
    serde_json::from_slice(&quote_big_integers(text))
}

/// Whether `value` holds a number that an integer literal beyond ±2^53
/// could have produced: such an integer itself, or an integral float that
/// large (serde_json's reading of a literal past the 64-bit range).
fn has_unsafe_integer(value: &Value) -> bool {
    match value {
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => u > MAX_SAFE_INTEGER,
            (None, Some(i)) => i.unsigned_abs() > MAX_SAFE_INTEGER,
            (None, None) => n.as_f64().is_some_and(|f| f.fract() == 0.0 && f.abs() >= MAX_SAFE_INTEGER as f64),
        },
        Value::Array(items) => items.iter().any(has_unsafe_integer),
        Value::Object(map) => map.values().any(has_unsafe_integer),
        _ => false,
    }
}

/// Puts quotes around every integer literal of `text` whose magnitude is
/// beyond 2^53, leaving strings, fractions and exponents alone. Linear,
/// and allocation-free when there is nothing to quote. Malformed text stays
/// malformed, and valid text stays valid.
///
/// ```
/// use runspace::json::quote_big_integers;
/// assert_eq!(&*quote_big_integers(b"[1, 9007199254740993]"), b"[1, \"9007199254740993\"]");
/// assert_eq!(&*quote_big_integers(b"[9007199254740992, \"18446744073709551616\"]"),
///            b"[9007199254740992, \"18446744073709551616\"]");
/// ```
pub fn quote_big_integers(text: &[u8]) -> Cow<'_, [u8]> {
    // 2^53 has 16 digits: text without a run of 16 digits has nothing to quote.
    if !has_digit_run(text, 16) {
        return Cow::Borrowed(text);
    }
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0; // text[..copied] is already in `out`
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'"' => i = skip_string(text, i),
            b'-' | b'0'..=b'9' => {
                let end = number_end(text, i);
                // A number where a key belongs is malformed; quoting it would
                // make it a key, so leave it for the parser to refuse.
                let is_key = text[end..].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b':');
                if !is_key && is_big_integer(&text[i..end]) {
                    let out = out.get_or_insert_with(|| Vec::with_capacity(text.len() + 8));
                    out.extend_from_slice(&text[copied..i]);
                    out.push(b'"');
                    out.extend_from_slice(&text[i..end]);
                    out.push(b'"');
                    copied = end;
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    match out {
        Some(mut out) => {
            out.extend_from_slice(&text[copied..]);
            Cow::Owned(out)
        }
        None => Cow::Borrowed(text),
    }
}

fn has_digit_run(text: &[u8], len: usize) -> bool {
    let mut run = 0;
    for &b in text {
        if b.is_ascii_digit() {
            run += 1;
            if run >= len {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

/// The index just past the string literal opening at `start` (or the end of
/// the text for an unterminated one).
fn skip_string(text: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < text.len() {
        match text[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    text.len()
}

/// The index just past the number-like token at `start`.
fn number_end(text: &[u8], start: usize) -> usize {
    let len = text[start..]
        .iter()
        .position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
        .unwrap_or(text.len() - start);
    start + len
}

/// Whether `token` is a well-formed JSON integer (`-?(0|[1-9][0-9]*)`)
/// beyond ±2^53. Anything else is left for the parser to judge.
fn is_big_integer(token: &[u8]) -> bool {
    let digits = token.strip_prefix(b"-").unwrap_or(token);
    if digits.len() < 16 || digits[0] == b'0' || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    // Beyond u64 is certainly beyond 2^53; within it, compare.
    std::str::from_utf8(digits).ok().and_then(|d| d.parse::<u64>().ok()).is_none_or(|n| n > MAX_SAFE_INTEGER)
}

/// A byte string as JSON: a plain string when it is UTF-8, else the
/// `{"$bytes": "<base64>"}` object.
///
/// ```
/// use serde_json::json;
/// assert_eq!(runspace::json::bytes_value(b"caf\xc3\xa9"), json!("café"));
/// assert_eq!(runspace::json::bytes_value(b"\xff\x00"), json!({"$bytes": "/wA="}));
/// ```
pub fn bytes_value(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_owned()),
        Err(_) => {
            let mut map = Map::with_capacity(1);
            map.insert(BYTES_KEY.to_owned(), Value::String(STANDARD.encode(bytes)));
            Value::Object(map)
        }
    }
}

/// The bytes a `{"$bytes": "<base64>"}` object stands for; `None` for any
/// other value (including such an object whose text is not valid base64,
/// which stays an ordinary object).
///
/// ```
/// use serde_json::json;
/// assert_eq!(runspace::json::as_bytes(&json!({"$bytes": "/wA="})), Some(vec![0xff, 0]));
/// assert_eq!(runspace::json::as_bytes(&json!({"$bytes": "not base64!"})), None);
/// ```
pub fn as_bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::Object(map) if map.len() == 1 => match map.get(BYTES_KEY)? {
            Value::String(b64) => STANDARD.decode(b64).ok(),
            _ => None,
        },
        _ => None,
    }
}

/// A byte-string table key as an object key: itself when it is UTF-8, else
/// `"$bytes:<base64>"`.
pub fn bytes_key(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => format!("{BYTES_KEY_PREFIX}{}", STANDARD.encode(bytes)),
    }
}

/// The bytes a `"$bytes:<base64>"` object key stands for; `None` for any
/// other key.
pub fn key_bytes(key: &str) -> Option<Vec<u8>> {
    STANDARD.decode(key.strip_prefix(BYTES_KEY_PREFIX)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn big_integers_become_strings_and_small_ones_stay_numbers() {
        let v = parse(b"[9007199254740992, -9007199254740992, 9007199254740993, -9007199254740993]").unwrap();
        assert_eq!(v, json!([9007199254740992u64, -9007199254740992i64, "9007199254740993", "-9007199254740993"]));
        let v = parse(b"[18446744073709551616, -9223372036854775809, 123456789012345678901234567890]").unwrap();
        assert_eq!(v, json!(["18446744073709551616", "-9223372036854775809", "123456789012345678901234567890"]));
    }

    #[test]
    fn strings_fractions_and_exponents_are_left_alone() {
        let text = br#"{"k18446744073709551616": "18446744073709551616 \" 18446744073709551616", "f": 18446744073709551616.5, "e": 18446744073709551616e0}"#;
        let v = parse(text).unwrap();
        assert_eq!(v["k18446744073709551616"], json!("18446744073709551616 \" 18446744073709551616"));
        assert!(v["f"].is_f64() && v["e"].is_f64());
    }

    #[test]
    fn malformed_text_stays_malformed() {
        for bad in [&b"[00000000000000000001]"[..], b"[-]", b"[1e]", b"\"unterminated 18446744073709551616", b"[1"] {
            let quoted = quote_big_integers(bad);
            assert!(serde_json::from_slice::<Value>(&quoted).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(parse(b"{18446744073709551616: 1}").is_err());
    }

    #[test]
    fn nothing_to_quote_borrows() {
        assert!(matches!(quote_big_integers(br#"{"a": [1, 2.5, "x"]}"#), Cow::Borrowed(_)));
        assert!(matches!(quote_big_integers(b"\"12345678901234567890\""), Cow::Borrowed(_)));
    }

    #[test]
    fn bytes_round_trip() {
        for bytes in [&b""[..], b"plain", b"\xff", b"a\x00b\xc3", "é".as_bytes()] {
            let v = bytes_value(bytes);
            let back = as_bytes(&v).or_else(|| v.as_str().map(|s| s.as_bytes().to_vec()));
            assert_eq!(back.as_deref(), Some(bytes));
            let key = bytes_key(bytes);
            assert_eq!(key_bytes(&key).unwrap_or_else(|| key.clone().into_bytes()), bytes);
        }
        assert_eq!(as_bytes(&json!({"$bytes": "AA==", "other": 1})), None);
        assert_eq!(as_bytes(&json!({"$bytes": 1})), None);
        assert_eq!(key_bytes("plain"), None);
    }
}
