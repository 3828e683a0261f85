//! Inputs as people give them: integer ranges, text lines, JSON lines.
//!
//! The command line and the job server read items the same way through
//! these, so a line reaches a script as its exact bytes and a JSON line
//! keeps its big integers wherever it came from.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use crate::json;
use crate::parallel::Input;

/// The most items a range may hold: 2^53, so every item is an exact Luau number.
pub const MAX_RANGE_LEN: u64 = 1 << 53;

/// An inclusive integer range, PowerShell-style: `1..100`, `-5..5`,
/// `10..1` (counting down); `1..=100` is accepted too.
///
/// ```
/// use runspace::inputs::Range;
/// let r: Range = "3..1".parse().unwrap();
/// assert_eq!(r.iter().collect::<Vec<_>>(), vec![3, 2, 1]);
/// assert_eq!(r.len(), 3);
/// assert_eq!(r.to_string(), "3..1");
/// assert!("1..x".parse::<Range>().unwrap_err().contains("'x' is not an integer"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// The first item.
    pub start: i64,
    /// The last item (inclusive).
    pub end: i64,
}

impl Range {
    /// The number of items (never zero: a range holds at least its start).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u64 {
        self.start.abs_diff(self.end) + 1
    }

    /// The items in order, counting down when `start > end`.
    pub fn iter(self) -> impl Iterator<Item = i64> + Send {
        let up = self.start <= self.end;
        let (lo, hi) = if up { (self.start, self.end) } else { (self.end, self.start) };
        let (a, b) = if up { (Some(lo..=hi), None) } else { (None, Some((lo..=hi).rev())) };
        a.into_iter().flatten().chain(b.into_iter().flatten())
    }
}

impl FromStr for Range {
    type Err = String;

    fn from_str(text: &str) -> Result<Range, String> {
        let bad = |why: &str| format!("invalid range '{text}': {why} (expected START..END, e.g. 1..100)");
        let (a, b) = text.split_once("..").ok_or_else(|| bad("no '..'"))?;
        let b = b.strip_prefix('=').unwrap_or(b);
        let start = a.trim().parse::<i64>().map_err(|_| bad(&format!("'{a}' is not an integer")))?;
        let end = b.trim().parse::<i64>().map_err(|_| bad(&format!("'{b}' is not an integer")))?;
        if start.abs_diff(end) >= MAX_RANGE_LEN {
            return Err(bad("more than 2^53 items"));
        }
        Ok(Range { start, end })
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

/// A line of text as an input: a string when it is UTF-8 (no copy), else
/// the lossless `{"$bytes": ...}` form, which reaches the script as the
/// exact bytes.
///
/// ```
/// use runspace::{inputs::line, Input};
/// use serde_json::json;
/// assert_eq!(line(b"hi".to_vec()), Input::Value(json!("hi")));
/// assert_eq!(line(vec![0xff]), Input::Value(json!({"$bytes": "/w=="})));
/// ```
pub fn line(bytes: Vec<u8>) -> Input {
    Input::Value(match String::from_utf8(bytes) {
        Ok(text) => Value::String(text),
        Err(e) => json::bytes_value(e.as_bytes()),
    })
}

/// A line of JSON Lines as an input: `None` for a blank line, the value
/// (read by [`json::parse`]) or an [`Input::Invalid`] saying why not.
///
/// ```
/// use runspace::{inputs::json_line, Input};
/// use serde_json::json;
/// assert_eq!(json_line(b"  "), None);
/// assert_eq!(json_line(b"18446744073709551616"), Some(Input::Value(json!("18446744073709551616"))));
/// assert!(matches!(json_line(b"{oops"), Some(Input::Invalid { .. })));
/// ```
pub fn json_line(bytes: &[u8]) -> Option<Input> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    Some(match json::parse(bytes) {
        Ok(value) => Input::Value(value),
        Err(e) => {
            Input::Invalid { error: format!("malformed JSON: {e}"), text: String::from_utf8_lossy(bytes).into_owned() }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let parse = |s: &str| s.parse::<Range>();
        assert_eq!(parse("1..100").unwrap().len(), 100);
        assert_eq!(parse("-1..=1").unwrap().iter().collect::<Vec<_>>(), vec![-1, 0, 1]);
        assert_eq!(parse("5..5").unwrap().iter().collect::<Vec<_>>(), vec![5]);
        assert!(parse("1-100").unwrap_err().contains("no '..'"));
        assert!(parse("-9223372036854775808..9223372036854775807").unwrap_err().contains("2^53"));
        let edge = parse("9223372036854775806..9223372036854775807").unwrap();
        assert_eq!(edge.iter().count(), 2);
        let edge = parse("-9223372036854775807..-9223372036854775808").unwrap();
        assert_eq!(edge.iter().collect::<Vec<_>>(), vec![i64::MIN + 1, i64::MIN]);
    }
}
