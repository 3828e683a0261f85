//! How `rsp run` prints results: JSON Lines, JSON, CSV, bare values or a
//! table, streamed as items finish; and the summary on stderr.

use std::io::{self, Write};

use console::{style, Term};
use runspace::{ItemResult, Status};
use serde_json::Value;

use crate::common::diag::diag;

/// Output formats of `rsp run`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON record per item (the default when stdout is not a terminal).
    Jsonl,
    /// One JSON array of records, streamed.
    Json,
    /// A readable table (the default on a terminal).
    Table,
    /// CSV with a header: index,input,result,status,errors,duration_ms.
    Csv,
    /// Just each item's result, one per line (strings bare, others as JSON); errors go to stderr.
    Values,
}

/// Writes records in one format to a sink.
pub struct Printer<W: Write> {
    format: Format,
    out: W,
    written: u64,
    colour: bool,
    width: usize,
}

impl<W: Write> Printer<W> {
    pub fn new(format: Format, out: W, colour: bool) -> Printer<W> {
        let width = Term::stdout().size_checked().map_or(120, |(_, w)| w as usize).max(40);
        Printer { format, out, written: 0, colour, width }
    }

    /// Writes whatever precedes the first record.
    pub fn begin(&mut self) -> io::Result<()> {
        match self.format {
            Format::Json => self.out.write_all(b"["),
            Format::Csv => self.csv_row(&["index", "input", "result", "status", "errors", "duration_ms"]),
            Format::Table => {
                let header = format!("{:>7}  {:<19}  {:>9}  RESULT", "INDEX", "STATUS", "MS");
                let header = if self.colour { style(header).bold().to_string() } else { header };
                writeln!(self.out, "{header}")
            }
            Format::Jsonl | Format::Values => Ok(()),
        }
    }

    pub fn item(&mut self, item: &ItemResult) -> io::Result<()> {
        match self.format {
            Format::Jsonl => {
                serde_json::to_writer(&mut self.out, item)?;
                self.out.write_all(b"\n")?;
            }
            Format::Json => {
                self.out.write_all(if self.written == 0 { b"\n" } else { b",\n" })?;
                serde_json::to_writer(&mut self.out, item)?;
            }
            Format::Csv => {
                let errors = if item.errors.is_empty() { String::new() } else { item.errors.join("; ") };
                self.csv_row(&[
                    &item.index.to_string(),
                    &bare(&item.input),
                    &bare(&item.result),
                    item.status.as_str(),
                    &errors,
                    &format!("{:.3}", item.duration_ms),
                ])?;
            }
            Format::Values => {
                let ran = item.status == Status::Completed || item.status == Status::CompletedWithErrors;
                if ran && !item.result.is_null() {
                    // Bytes that are not UTF-8 are written as they are: this
                    // format is for shells, which take bytes.
                    match runspace::json::as_bytes(&item.result) {
                        Some(bytes) => self.out.write_all(&bytes)?,
                        None => write!(self.out, "{}", bare(&item.result))?,
                    }
                    self.out.write_all(b"\n")?;
                }
                for error in &item.errors {
                    diag!("rsp: item {}: {}", item.index, error);
                }
            }
            Format::Table => self.table_row(item)?,
        }
        self.written += 1;
        Ok(())
    }

    /// Writes whatever follows the last record, and flushes.
    pub fn end(&mut self) -> io::Result<()> {
        if self.format == Format::Json {
            self.out.write_all(if self.written == 0 { b"]\n" } else { b"\n]\n" })?;
        }
        self.flush()
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The format being written.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The sink itself, for output written as it is (command mode's values).
    pub fn out(&mut self) -> &mut W {
        &mut self.out
    }

    fn csv_row(&mut self, fields: &[&str]) -> io::Result<()> {
        let mut csv = csv::Writer::from_writer(Vec::with_capacity(128));
        csv.write_record(fields)?;
        let bytes = csv.into_inner().map_err(|e| e.into_error())?;
        self.out.write_all(&bytes)
    }

    fn table_row(&mut self, item: &ItemResult) -> io::Result<()> {
        let status = format!("{:<19}", item.status.as_str());
        let status = if self.colour { paint(item.status, &status) } else { status };
        let detail = match item.errors.last() {
            Some(error) if !item.status.is_success() => format!("{}  {}", bare(&item.result), error),
            _ => bare(&item.result),
        };
        let room = self.width.saturating_sub(7 + 2 + 19 + 2 + 9 + 2).max(10);
        writeln!(
            self.out,
            "{:>7}  {}  {:>9.2}  {}",
            item.index,
            status,
            item.duration_ms,
            truncate(&detail.replace('\n', " "), room)
        )
    }
}

/// A value as a shell wants it: strings without quotes, everything else as JSON.
pub fn bare(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn truncate(text: &str, room: usize) -> String {
    if text.chars().count() <= room {
        return text.to_string();
    }
    let mut out: String = text.chars().take(room.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `text` in the colour of `status`.
pub fn paint(status: Status, text: &str) -> String {
    let s = style(text);
    match status {
        Status::Completed => s.green(),
        Status::CompletedWithErrors => s.yellow(),
        Status::Failed => s.red(),
        Status::TimedOut => s.magenta(),
        Status::Stopped => s.dim(),
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(index: u64, result: Value, status: Status) -> ItemResult {
        serde_json::from_value(json!({
            "index": index, "input": index, "result": result, "status": status,
            "errors": if status.is_success() { json!([]) } else { json!(["boom, \"quoted\""]) },
            "duration_ms": 1.5
        }))
        .unwrap()
    }

    fn render(format: Format, items: &[ItemResult]) -> String {
        let mut p = Printer::new(format, Vec::new(), false);
        p.begin().unwrap();
        for i in items {
            p.item(i).unwrap();
        }
        p.end().unwrap();
        String::from_utf8(p.out).unwrap()
    }

    #[test]
    fn json_is_a_valid_array_even_when_empty() {
        let out = render(Format::Json, &[item(0, json!(1), Status::Completed), item(1, json!("x"), Status::Completed)]);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 2);
        let v: Value = serde_json::from_str(&render(Format::Json, &[])).unwrap();
        assert_eq!(v, json!([]));
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let out = render(Format::Csv, &[item(3, json!({"a": 1}), Status::Failed)]);
        let mut lines = out.lines();
        assert_eq!(lines.next().unwrap(), "index,input,result,status,errors,duration_ms");
        assert_eq!(lines.next().unwrap(), r#"3,3,"{""a"":1}",Failed,"boom, ""quoted""",1.500"#);
    }

    #[test]
    fn values_print_bare_results_only() {
        let out = render(
            Format::Values,
            &[
                item(0, json!("a b"), Status::Completed),
                item(1, json!(null), Status::Failed),
                item(2, json!([1]), Status::Completed),
            ],
        );
        assert_eq!(out, "a b\n[1]\n");
        let mut p = Printer::new(Format::Values, Vec::new(), false);
        p.item(&item(0, json!({"$bytes": "/wA="}), Status::Completed)).unwrap();
        assert_eq!(p.out, b"\xff\x00\n");
    }
}
