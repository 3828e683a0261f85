//! How `rsp run` prints results: JSON Lines, JSON, CSV, bare values or a
//! table, streamed as items finish; and the summary on stderr.

use std::io::{self, Write};
use std::time::Duration;

use console::{style, Term};
use runspace::{ItemResult, RunProgress, Status};
use serde_json::Value;

use crate::diag::diag;

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

fn paint(status: Status, text: &str) -> String {
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

/// Counts by status and the run's shape, for the summary and the exit code.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    /// Items processed (handed out) in this run.
    pub total: u64,
    pub completed: u64,
    pub with_errors: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub stopped: u64,
    /// Items that took more than one attempt.
    pub retried: u64,
    /// Batches formed (batch mode).
    pub batches: u64,
    /// The batch size (batch mode).
    pub batch_size: Option<usize>,
    /// Inputs skipped because the job log has them (`--resume`).
    pub skipped: u64,
    /// All inputs: known up front, or read plus skipped.
    pub inputs: u64,
}

impl Tally {
    /// The counts of a finished run's last progress snapshot.
    pub fn from_progress(p: &RunProgress) -> Tally {
        Tally {
            total: p.done,
            completed: p.completed,
            with_errors: p.with_errors,
            failed: p.failed,
            timed_out: p.timed_out,
            stopped: p.stopped,
            retried: p.retried,
            batches: p.batches,
            inputs: p.total.unwrap_or(p.read),
            ..Tally::default()
        }
    }

    pub fn all_completed(&self) -> bool {
        self.completed == self.total
    }

    /// Completed items as a percentage of those processed (100 for none).
    pub fn success_rate(&self) -> f64 {
        if self.total == 0 {
            100.0
        } else {
            self.completed as f64 * 100.0 / self.total as f64
        }
    }

    /// The summary block, coloured when `colour`.
    pub fn summary(&self, elapsed: Duration, interrupted: bool, colour: bool) -> String {
        let secs = elapsed.as_secs_f64();
        let rate = if secs > 0.0 { self.total as f64 / secs } else { 0.0 };
        let paint = |n: u64, label: &str, status: Status| {
            let text = format!("{n} {label}");
            if colour && n > 0 {
                self::paint(status, &text)
            } else {
                text
            }
        };
        let head = format!("{} items in {} ({} items/s)", self.total, human_duration(elapsed), human_rate(rate));
        let head = if colour { style(head).bold().to_string() } else { head };
        let mut text = format!(
            "Summary: {head}\n  {}, {}, {}, {}, {}",
            paint(self.completed, "completed", Status::Completed),
            paint(self.with_errors, "with errors", Status::CompletedWithErrors),
            paint(self.failed, "failed", Status::Failed),
            paint(self.timed_out, "timed out", Status::TimedOut),
            paint(self.stopped, "stopped", Status::Stopped),
        );
        text.push_str(&format!(
            "\n  total {}, processed {}, successful {}, success rate {:.1}%, retried {}",
            self.inputs.max(self.total + self.skipped),
            self.total,
            self.completed,
            self.success_rate(),
            self.retried
        ));
        if let Some(size) = self.batch_size {
            text.push_str(&format!("\n  batches {}, batch size {size}", self.batches));
        }
        if self.skipped > 0 {
            text.push_str(&format!("\n  skipped {} already in the job log", self.skipped));
        }
        if interrupted {
            text.push_str("\n  interrupted: items not yet started were not run");
        }
        text
    }
}

pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1.0 {
        format!("{:.1} ms", secs * 1e3)
    } else if secs < 120.0 {
        format!("{secs:.2} s")
    } else {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

pub fn human_rate(rate: f64) -> String {
    if rate >= 100.0 {
        human_count(rate.round() as u64)
    } else {
        format!("{rate:.1}")
    }
}

/// Thousands separators for readability: 1,234,567.
pub fn human_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
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

    #[test]
    fn tally_and_summary_add_up() {
        let t = Tally { total: 5, completed: 2, with_errors: 1, failed: 1, timed_out: 1, ..Tally::default() };
        assert_eq!((t.total, t.completed, t.failed, t.timed_out, t.with_errors), (5, 2, 1, 1, 1));
        assert!(!t.all_completed());
        let s = t.summary(Duration::from_millis(500), false, false);
        assert!(s.contains("5 items in 500.0 ms (10.0 items/s)"), "{s}");
        assert!(s.contains("2 completed, 1 with errors, 1 failed, 1 timed out, 0 stopped"), "{s}");
        assert_eq!(human_rate(1234567.0), "1,234,567");
    }

    #[test]
    fn summary_arithmetic_of_a_batched_resumed_run() {
        let t = Tally {
            total: 8,
            completed: 6,
            with_errors: 0,
            failed: 1,
            timed_out: 1,
            stopped: 0,
            retried: 3,
            batches: 4,
            batch_size: Some(2),
            skipped: 2,
            inputs: 10,
        };
        assert_eq!(t.total, t.completed + t.with_errors + t.failed + t.timed_out + t.stopped);
        let s = t.summary(Duration::from_secs(2), false, false);
        assert!(s.contains("8 items in 2.00 s (4.0 items/s)"), "{s}");
        assert!(s.contains("total 10, processed 8, successful 6, success rate 75.0%, retried 3"), "{s}");
        assert!(s.contains("batches 4, batch size 2"), "{s}");
        assert!(s.contains("skipped 2 already in the job log"), "{s}");
        assert_eq!(Tally::default().success_rate(), 100.0);
    }
}
