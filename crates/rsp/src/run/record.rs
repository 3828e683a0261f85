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
    let streams = item.streams();
    out.write_all(b"\",\"errors\":")?;
    write_strings(out, &streams.error)?;
    out.write_all(b",\"duration_ms\":")?;
    write_ms(out, item.duration_ms)?;
    if let Some(batch) = item.batch() {
        out.write_all(b",\"batch\":")?;
        CompactFormatter.write_u64(out, batch)?;
    }
    if let Some(index) = item.batch_index() {
        out.write_all(b",\"batch_index\":")?;
        CompactFormatter.write_u64(out, index)?;
    }
    if item.attempts != 1 {
        out.write_all(b",\"attempts\":")?;
        CompactFormatter.write_u32(out, item.attempts)?;
    }
    for (key, records) in [
        (&b",\"warning\":"[..], &streams.warning),
        (b",\"verbose\":", &streams.verbose),
        (b",\"debug\":", &streams.debug),
        (b",\"information\":", &streams.information),
    ] {
        if !records.is_empty() {
            out.write_all(key)?;
            write_strings(out, records)?;
        }
    }
    if !streams.progress.is_empty() {
        out.write_all(b",\"progress\":")?;
        serde_json::to_writer(&mut *out, &streams.progress)?;
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

/// A duration in milliseconds, as `write_f64` writes it.
///
/// The engine measures most items in whole microseconds, and for those the shortest
/// decimal that reads back as the same `f64` (what the float formatter
/// looks for) is the microseconds over 1000 with the trailing zeros
/// dropped: below 10^15 microseconds it has at most 15 significant digits,
/// and decimals that short are further apart than a double's spacing, so
/// no shorter one rounds to the same value. Written with integer
/// arithmetic, that costs a third of the general formatter. Anything else
/// (a timed-out item's time, a record read back from a file) goes to it.
fn write_ms<W: Write + ?Sized>(out: &mut W, v: f64) -> io::Result<()> {
    let micros = (v * 1e3).round();
    if !(v.is_sign_positive() && (0.0..1e15).contains(&micros) && micros / 1e3 == v) {
        return write_f64(out, v);
    }
    let micros = micros as u64;
    let (whole, frac) = (micros / 1000, (micros % 1000) as u16);
    CompactFormatter.write_u64(out, whole)?;
    let digits = [b'.', b'0' + (frac / 100) as u8, b'0' + (frac / 10 % 10) as u8, b'0' + (frac % 10) as u8];
    // "2.0", "2.5", "2.05", "2.005": at least one digit after the point.
    let len = match frac {
        0 => 2,
        f if f % 100 == 0 => 2,
        f if f % 10 == 0 => 3,
        _ => 4,
    };
    out.write_all(&digits[..len])
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
    use runspace::{ProgressRecord, Status, Streams};
    use serde_json::json;

    fn both(item: &ItemResult) -> (String, String) {
        let mut ours = Vec::new();
        write_item(&mut ours, item).unwrap();
        (String::from_utf8(ours).unwrap(), serde_json::to_string(item).unwrap())
    }

    /// Every field set: a new stream in `Streams` breaks this literal, and
    /// so reminds whoever adds it to write it here too.
    fn full(input: Value, result: Value, status: Status, duration_ms: f64) -> ItemResult {
        let mut item = minimal(u64::MAX, input, result, status, duration_ms);
        item.outputs = 2;
        item.attempts = 3;
        item.set_batch(7, 0);
        item.set_streams(Streams {
            error: vec!["boom \"quoted\"\n\ttab \u{1} \\ é 😀 </script>".into(), String::new()],
            warning: vec!["w".into()],
            verbose: vec!["v\u{7f}".into()],
            debug: vec!["d".into(), "e".into()],
            information: vec!["i".into()],
            progress: vec![
                ProgressRecord { activity: "copy".into(), status: Some("a\"b".into()), percent: Some(50.0) },
                ProgressRecord { activity: "x".into(), status: None, percent: None },
            ],
        });
        item
    }

    /// No optional field: what most items are.
    fn minimal(index: u64, input: Value, result: Value, status: Status, duration_ms: f64) -> ItemResult {
        let mut item = ItemResult::new(index, input, status);
        item.result = result;
        item.duration_ms = duration_ms;
        item
    }

    /// The integer path of `write_ms` against the float formatter, over
    /// every duration below 0.2 s, a spread up to and past its bound, and
    /// values that are not whole microseconds (which it must hand on).
    #[test]
    fn durations_are_written_as_the_float_formatter_writes_them() {
        let mut micros: Vec<u64> = (0..200_000).collect();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            micros.push(x % 2_000_000_000_000_000);
        }
        micros.extend([999_999_999_999_999, 1_000_000_000_000_000, 1 << 53, u64::MAX]);
        let mut durations: Vec<f64> = micros.iter().map(|&n| n as f64 / 1e3).collect();
        durations.extend([-0.0, -1.0, 0.0005, 1e-7, 0.1 + 0.2, 1.0 / 3.0, 5e-324, f64::MAX, f64::NAN, f64::INFINITY]);
        for v in durations {
            let mut ours = Vec::new();
            write_ms(&mut ours, v).unwrap();
            let theirs = if v.is_finite() { serde_json::to_string(&v).unwrap() } else { "null".into() };
            assert_eq!(String::from_utf8(ours).unwrap(), theirs, "{v:e}");
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
            let mut minimal = minimal(u64::MAX, json!(i), value.clone(), status, duration);
            minimal.outputs = i as u32 % 2;
            let (ours, theirs) = both(&minimal);
            assert_eq!(ours, theirs);
        }
        for d in durations {
            let (ours, theirs) = both(&full(json!(1), json!(2), Status::Completed, d));
            assert_eq!(ours, theirs, "duration {d}");
        }
    }

    #[test]
    fn records_read_back_as_they_were_written() {
        for item in [
            full(json!({"a": [1, 2]}), json!("r"), Status::Failed, 2.5),
            minimal(3, json!(1), json!(1), Status::Completed, 0.25),
        ] {
            // `outputs` is written only past one: 0 and 1 read back as 1.
            let mut item = item;
            item.outputs = item.outputs.max(1);
            let mut text = Vec::new();
            write_item(&mut text, &item).unwrap();
            let back: ItemResult = serde_json::from_slice(&text).unwrap();
            assert_eq!(back, item);
            assert_eq!(back.streams(), item.streams());
            assert_eq!((back.batch(), back.batch_index()), (item.batch(), item.batch_index()));
        }
    }
}
