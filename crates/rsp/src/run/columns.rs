//! Object results as columns, for the table and CSV formats: like
//! PowerShell's `Format-Table`, the first result decides. When it is an
//! object with a handful of keys, those keys become columns; a later result
//! with exactly the same keys fills them, and any other result is shown
//! whole (never dropped) in a `result` place of its own.

use serde_json::{Map, Value};

/// The most keys spread into columns; past it the result stays one column.
const MAX_COLUMNS: usize = 12;

/// The result columns chosen from the first result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    /// The keys, in the first result's order (serde_json's: sorted).
    pub keys: Vec<String>,
}

impl Columns {
    /// Columns for `first`, when it is an object worth spreading.
    pub fn from_first(first: &Value) -> Option<Columns> {
        let object = first.as_object()?;
        if object.is_empty() || object.len() > MAX_COLUMNS || runspace::json::as_bytes(first).is_some() {
            return None;
        }
        Some(Columns { keys: object.keys().cloned().collect() })
    }

    /// The result's values in column order, when it has exactly these keys.
    pub fn cells<'a>(&self, result: &'a Value) -> Option<Vec<&'a Value>> {
        let object: &Map<String, Value> = result.as_object()?;
        if object.len() != self.keys.len() {
            return None;
        }
        self.keys.iter().map(|k| object.get(k)).collect()
    }
}

/// `text` with control characters escaped (`\n`, `\t`, `\r`, `\x1b`…), so a
/// value can never break a row or drive the terminal.
pub fn escape_controls(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() && (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// `text` cut to `room` characters, an ellipsis marking the cut.
pub fn truncate(text: &str, room: usize) -> String {
    if text.chars().count() <= room {
        return text.to_string();
    }
    let mut out: String = text.chars().take(room.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `text` cut or padded to exactly `width` characters.
pub fn fit(text: &str, width: usize) -> String {
    let cut = truncate(text, width);
    let pad = width.saturating_sub(cut.chars().count());
    format!("{cut}{}", " ".repeat(pad))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_first_object_decides_and_other_shapes_do_not_fit() {
        let c = Columns::from_first(&json!({"name": "a", "size": 1})).unwrap();
        assert_eq!(c.keys, ["name", "size"]);
        assert_eq!(c.cells(&json!({"size": 2, "name": "b"})).unwrap(), [&json!("b"), &json!(2)]);
        assert!(c.cells(&json!({"name": "b"})).is_none());
        assert!(c.cells(&json!({"name": "b", "other": 1})).is_none());
        assert!(c.cells(&json!(3)).is_none());
        assert!(Columns::from_first(&json!(1)).is_none());
        assert!(Columns::from_first(&json!({})).is_none());
        assert!(Columns::from_first(&json!({"$bytes": "/w=="})).is_none(), "bytes are a value, not an object");
    }

    #[test]
    fn control_characters_are_escaped_and_text_is_fitted() {
        assert_eq!(escape_controls("a\nb\tc\r\u{1b}[31m\u{7f}\u{85}é"), "a\\nb\\tc\\r\\x1b[31m\\x7f\\x85é");
        assert_eq!(escape_controls("plain"), "plain");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(fit("ab", 4), "ab  ");
        assert_eq!(fit("abcdef", 4), "abc…");
    }
}
