//! The JSON record of one item, written field by field.
//!
//! `rsp run` prints millions of records a second, and a generic serializer
//! walking `ItemResult` through serde's map machinery cost about a third of
//! the main thread. The record's shape is fixed, so its keys are written as
//! literal bytes, numbers through serde_json's own formatter (itoa, and the
//! same float formatting), plain strings straight into the buffer, and only
//! what is not plain — strings with bytes to escape, arrays, objects,
//! progress records — goes through `serde_json`. The bytes are exactly what
//! `serde_json::to_writer(&item)` writes (tested below, field by field).

use std::io::{self, Write};

use runspace::ItemResult;
use serde_json::ser::{CompactFormatter, Formatter};
use serde_json::Value;

/// Writes `item` as one compact JSON object (no newline).
pub fn write_item<W: Write + ?Sized>(out: &mut W, item: &ItemResult) -> io::Result<()> {
    out.write_all(b"{\"index\":")?;
    CompactFormatter.write_u64(out, item.index)?;
    out.write_all(b",\"input\":")?;
    write_value(out, &item.input)?;
    out.write_all(b",\"result\":")?;
    write_value(out, &item.result)?;
    if item.outputs > 1 {
        out.write_all(b",\"outputs\":")?;
        CompactFormatter.write_u32(out, item.outputs)?;
    }
    out.write_all(b",\"status\":\"")?;
    out.write_all(item.status.as_str().as_bytes())?;
    out.write_all(b"\",\"errors\":")?;
    write_strings(out, &item.errors)?;
    out.write_all(b",\"duration_ms\":")?;
    write_f64(out, item.duration_ms)?;
    if let Some(batch) = item.batch {
        out.write_all(b",\"batch\":")?;
        CompactFormatter.write_u64(out, batch)?;
    }
    if let Some(index) = item.batch_index {
        out.write_all(b",\"batch_index\":")?;
        CompactFormatter.write_u64(out, index)?;
    }
    if item.attempts != 1 {
        out.write_all(b",\"attempts\":")?;
        CompactFormatter.write_u32(out, item.attempts)?;
    }
    for (key, records) in [
        (&b",\"warning\":"[..], &item.warning),
        (b",\"verbose\":", &item.verbose),
        (b",\"debug\":", &item.debug),
        (b",\"information\":", &item.information),
    ] {
        if !records.is_empty() {
            out.write_all(key)?;
            write_strings(out, records)?;
        }
    }
    if !item.progress.is_empty() {
        out.write_all(b",\"progress\":")?;
        serde_json::to_writer(&mut *out, &item.progress)?;
    }
    out.write_all(b"}")
}

/// A value: the common scalars directly, the rest through serde_json.
fn write_value<W: Write + ?Sized>(out: &mut W, value: &Value) -> io::Result<()> {
    match value {
        Value::Null => out.write_all(b"null"),
        Value::Bool(b) => out.write_all(if *b { b"true" } else { b"false" }),
        Value::String(s) => write_str(out, s),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                CompactFormatter.write_u64(out, u)
            } else if let Some(i) = n.as_i64() {
                CompactFormatter.write_i64(out, i)
            } else {
                serde_json::to_writer(&mut *out, n).map_err(io::Error::from)
            }
        }
        Value::Array(_) | Value::Object(_) => serde_json::to_writer(&mut *out, value).map_err(io::Error::from),
    }
}

/// A string: written as it is when nothing in it needs escaping.
fn write_str<W: Write + ?Sized>(out: &mut W, s: &str) -> io::Result<()> {
    if s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        return serde_json::to_writer(&mut *out, s).map_err(io::Error::from);
    }
    out.write_all(b"\"")?;
    out.write_all(s.as_bytes())?;
    out.write_all(b"\"")
}

fn write_strings<W: Write + ?Sized>(out: &mut W, strings: &[String]) -> io::Result<()> {
    out.write_all(b"[")?;
    for (i, s) in strings.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        write_str(out, s)?;
    }
    out.write_all(b"]")
}

/// A float as serde_json writes one: its own formatting, `null` when not finite.
fn write_f64<W: Write + ?Sized>(out: &mut W, v: f64) -> io::Result<()> {
    if v.is_finite() {
        CompactFormatter.write_f64(out, v)
    } else {
        out.write_all(b"null")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runspace::{ProgressRecord, Status};
    use serde_json::json;

    fn both(item: &ItemResult) -> (String, String) {
        let mut ours = Vec::new();
        write_item(&mut ours, item).unwrap();
        (String::from_utf8(ours).unwrap(), serde_json::to_string(item).unwrap())
    }

    /// Every field set: a new field in `ItemResult` breaks this literal, and
    /// so reminds whoever adds it to write it here too.
    fn full(input: Value, result: Value, status: Status, duration_ms: f64) -> ItemResult {
        ItemResult {
            index: u64::MAX,
            input,
            result,
            outputs: 2,
            status,
            errors: vec!["boom \"quoted\"\n\ttab \u{1} \\ é 😀 </script>".into(), String::new()],
            duration_ms,
            batch: Some(7),
            batch_index: Some(0),
            attempts: 3,
            warning: vec!["w".into()],
            verbose: vec!["v\u{7f}".into()],
            debug: vec!["d".into(), "e".into()],
            information: vec!["i".into()],
            progress: vec![
                ProgressRecord { activity: "copy".into(), status: Some("a\"b".into()), percent: Some(50.0) },
                ProgressRecord { activity: "x".into(), status: None, percent: None },
            ],
        }
    }

    #[test]
    fn bytes_are_exactly_serde_jsons() {
        let values = [
            json!(null),
            json!(true),
            json!(false),
            json!(0),
            json!(-1),
            json!(i64::MIN),
            json!(u64::MAX),
            json!(1.5),
            json!(-0.0),
            json!(1e300),
            json!(0.1),
            json!(123456789.123),
            json!(""),
            json!("plain"),
            json!("needs \"escaping\"\r\n\u{0}\u{1f}"),
            json!("unicode é ✓ 😀 \u{2028}"),
            json!([1, "two", {"three": 3.0}]),
            json!({"b": 1, "a": [null, "x\ny"]}),
            json!({"$bytes": "/wA="}),
        ];
        let statuses =
            [Status::Completed, Status::CompletedWithErrors, Status::Failed, Status::TimedOut, Status::Stopped];
        let durations = [0.0, 0.001, 0.006, 1.5, 1234.5678, 1e-7, f64::MAX, f64::NAN, f64::INFINITY];
        for (i, value) in values.iter().enumerate() {
            let status = statuses[i % statuses.len()];
            let duration = durations[i % durations.len()];
            let (ours, theirs) = both(&full(value.clone(), values[values.len() - 1 - i].clone(), status, duration));
            assert_eq!(ours, theirs);
            // The common, minimal record: no optional fields.
            let minimal = ItemResult {
                outputs: i as u32 % 2,
                batch: None,
                batch_index: None,
                attempts: 1,
                warning: Vec::new(),
                verbose: Vec::new(),
                debug: Vec::new(),
                information: Vec::new(),
                progress: Vec::new(),
                errors: Vec::new(),
                ..full(json!(i), value.clone(), status, duration)
            };
            let (ours, theirs) = both(&minimal);
            assert_eq!(ours, theirs);
        }
        for d in durations {
            let (ours, theirs) = both(&full(json!(1), json!(2), Status::Completed, d));
            assert_eq!(ours, theirs, "duration {d}");
        }
    }
}
