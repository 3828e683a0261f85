//! How `rsp run` prints results: JSON Lines, JSON, CSV, bare values or a
//! table, streamed as items finish; and the summary on stderr.

use std::io::{self, Write};

use console::{style, Term};
use runspace::{ItemResult, Status};
use serde_json::Value;

use super::columns::{escape_controls, fit, truncate, Columns};
use super::record;
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
    /// CSV with a header: index,input,result,status,errors,duration_ms; an object result is
    /// spread into result.KEY columns (the first result's keys).
    Csv,
    /// Each output value on a line of its own (strings bare, others as JSON): every emit(v)
    /// and returned value is one, a returned table is one JSON line; errors go to stderr.
    Values,
}

/// Writes records in one format to a sink.
pub struct Printer<W: Write> {
    format: Format,
    out: W,
    written: u64,
    colour: bool,
    width: usize,
    /// Table and CSV: the result columns, chosen at the first item.
    columns: Option<Option<Columns>>,
    /// Show `print`, warnings and verbose records on stderr (table and values).
    pub show_streams: bool,
}

/// Width of the INDEX, STATUS and MS columns with their gaps.
const FIXED: usize = 7 + 2 + 19 + 2 + 9 + 2;

impl<W: Write> Printer<W> {
    /// A printer of `format` into `out`, coloured when `colour`.
    pub fn new(format: Format, out: W, colour: bool) -> Printer<W> {
        let width = Term::stdout().size_checked().map_or(120, |(_, w)| w as usize).max(40);
        Printer { format, out, written: 0, colour, width, columns: None, show_streams: false }
    }

    /// Writes whatever precedes the first record (the table's and CSV's
    /// header waits for the first item, whose result chooses the columns).
    pub fn begin(&mut self) -> io::Result<()> {
        match self.format {
            Format::Json => self.out.write_all(b"["),
            Format::Csv | Format::Table | Format::Jsonl | Format::Values => Ok(()),
        }
    }

    /// The columns, chosen by `first` when not yet chosen; writes the header then.
    fn columns_for(&mut self, first: Option<&Value>) -> io::Result<Option<Columns>> {
        if let Some(columns) = &self.columns {
            return Ok(columns.clone());
        }
        let columns = first.and_then(Columns::from_first);
        self.columns = Some(columns.clone());
        match self.format {
            Format::Csv => {
                let mut header = vec!["index".to_string(), "input".to_string()];
                if let Some(c) = &columns {
                    header.extend(c.keys.iter().map(|k| format!("result.{k}")));
                }
                header.extend(["result", "status", "errors", "duration_ms"].map(String::from));
                self.csv_row(&header.iter().map(String::as_str).collect::<Vec<_>>())?;
            }
            Format::Table => {
                let layout = self.layout(columns.as_ref());
                let mut header =
                    format!("{:>7}  {:<19}  {:>9}  {}", "INDEX", "STATUS", "MS", fit("INPUT", layout.input));
                match (&columns, &layout.cells) {
                    (Some(c), Some(widths)) => {
                        for (key, width) in c.keys.iter().zip(widths) {
                            header.push_str("  ");
                            header.push_str(&fit(&escape_controls(&key.to_uppercase()), *width));
                        }
                    }
                    _ => header.push_str("  RESULT"),
                }
                let header = header.trim_end().to_string();
                let header = if self.colour { style(header).bold().to_string() } else { header };
                writeln!(self.out, "{header}")?;
            }
            _ => {}
        }
        Ok(columns)
    }

    /// Column widths of the table: INPUT gets a quarter of the room (8 to
    /// 30 characters), the result columns share the rest.
    fn layout(&self, columns: Option<&Columns>) -> Layout {
        let room = self.width.saturating_sub(FIXED);
        let input = (room / 4).clamp(8, 30);
        let rest = room.saturating_sub(input + 2).max(10);
        let cells = columns.map(|c| {
            let n = c.keys.len();
            let each = (rest.saturating_sub(2 * (n - 1)) / n).max(6);
            vec![each; n]
        });
        Layout { input, rest, cells }
    }

    pub fn item(&mut self, item: &ItemResult) -> io::Result<()> {
        match self.format {
            Format::Jsonl => {
                record::write_item(&mut self.out, item)?;
                self.out.write_all(b"\n")?;
            }
            Format::Json => {
                self.out.write_all(if self.written == 0 { b"\n" } else { b",\n" })?;
                record::write_item(&mut self.out, item)?;
            }
            Format::Csv => self.csv_item(item)?,
            Format::Values => {
                let ran = item.status == Status::Completed || item.status == Status::CompletedWithErrors;
                // One line per output value (each emit, each returned value).
                for value in item.output().iter().filter(|v| ran && !v.is_null()) {
                    // Bytes that are not UTF-8 are written as they are: this
                    // format is for shells, which take bytes.
                    match runspace::json::as_bytes(value) {
                        Some(bytes) => self.out.write_all(&bytes)?,
                        None => write!(self.out, "{}", bare(value))?,
                    }
                    self.out.write_all(b"\n")?;
                }
                for error in item.errors() {
                    diag!("rsp: item {}: {}", item.index, error);
                }
                self.streams(item);
            }
            Format::Table => {
                self.table_row(item)?;
                self.streams(item);
            }
        }
        self.written += 1;
        Ok(())
    }

    /// Writes whatever follows the last record, and flushes.
    pub fn end(&mut self) -> io::Result<()> {
        if matches!(self.format, Format::Table | Format::Csv) {
            // No item: the header alone.
            self.columns_for(None)?;
        }
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

    /// CSV: index, input, the result spread over its columns (or whole in
    /// `result` when it does not fit them), status, errors, duration.
    fn csv_item(&mut self, item: &ItemResult) -> io::Result<()> {
        let columns = self.columns_for(Some(&item.result))?;
        let mut row = vec![item.index.to_string(), bare(&item.input)];
        match &columns {
            Some(c) => match c.cells(&item.result) {
                Some(cells) => {
                    row.extend(cells.into_iter().map(bare));
                    row.push(String::new());
                }
                None => {
                    row.extend(c.keys.iter().map(|_| String::new()));
                    row.push(bare(&item.result));
                }
            },
            None => row.push(bare(&item.result)),
        }
        row.push(item.status.as_str().to_string());
        row.push(item.errors().join("; "));
        row.push(format!("{:.3}", item.duration_ms));
        self.csv_row(&row.iter().map(String::as_str).collect::<Vec<_>>())
    }

    fn table_row(&mut self, item: &ItemResult) -> io::Result<()> {
        let columns = self.columns_for(Some(&item.result))?;
        let layout = self.layout(columns.as_ref());
        let status = format!("{:<19}", item.status.as_str());
        let status = if self.colour { paint(item.status, &status) } else { status };
        let input = fit(&escape_controls(&bare(&item.input)), layout.input);
        let failed = item.errors().last().filter(|_| !item.status.is_success());
        let cells = match (&columns, &layout.cells, failed) {
            (Some(c), Some(widths), None) => c.cells(&item.result).map(|cells| {
                let texts: Vec<String> =
                    cells.iter().zip(widths).map(|(v, w)| fit(&escape_controls(&bare(v)), *w)).collect();
                texts.join("  ")
            }),
            _ => None,
        };
        let detail = cells.unwrap_or_else(|| {
            let text = match failed {
                Some(error) if !item.result.is_null() => format!("{}  {}", bare(&item.result), error),
                Some(error) => error.clone(),
                None => bare(&item.result),
            };
            truncate(&escape_controls(&text), layout.rest)
        });
        let line = format!("{:>7}  {}  {:>9.2}  {input}  {detail}", item.index, status, item.duration_ms);
        writeln!(self.out, "{}", line.trim_end())
    }

    /// `print`, warnings and verbose records, on stderr, each line prefixed
    /// with the item (PowerShell shows these streams on the host).
    fn streams(&self, item: &ItemResult) {
        if !self.show_streams {
            return;
        }
        let records = item.streams();
        let shown = [("", &records.information), ("WARNING: ", &records.warning), ("VERBOSE: ", &records.verbose)];
        if shown.iter().all(|(_, records)| records.is_empty()) {
            return;
        }
        let input = truncate(&escape_controls(&bare(&item.input)), 40);
        for (label, records) in shown {
            for record in records {
                for line in record.lines() {
                    diag!("rsp: item {} ({input}): {label}{}", item.index, escape_controls(line));
                }
            }
        }
    }
}

/// Widths of the table's variable columns.
struct Layout {
    input: usize,
    /// Room for the result when it is one column.
    rest: usize,
    /// The result columns' widths, when the result is spread.
    cells: Option<Vec<usize>>,
}

/// A value as a shell wants it: strings without quotes, everything else as JSON.
pub fn bare(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
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
        let out = render(Format::Csv, &[item(3, json!([1, "a,b"]), Status::Failed)]);
        let mut lines = out.lines();
        assert_eq!(lines.next().unwrap(), "index,input,result,status,errors,duration_ms");
        assert_eq!(lines.next().unwrap(), r#"3,3,"[1,""a,b""]",Failed,"boom, ""quoted""",1.500"#);
    }

    #[test]
    fn csv_spreads_object_results_and_keeps_the_ones_that_do_not_fit() {
        let out = render(
            Format::Csv,
            &[
                item(0, json!({"name": "x, y", "n": 1}), Status::Completed),
                item(1, json!({"name": "z"}), Status::Completed),
                item(2, json!("plain"), Status::Completed),
            ],
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "index,input,result.n,result.name,result,status,errors,duration_ms");
        assert_eq!(lines[1], r#"0,0,1,"x, y",,Completed,,1.500"#);
        assert_eq!(lines[2], r#"1,1,,,"{""name"":""z""}",Completed,,1.500"#);
        assert_eq!(lines[3], "2,2,,,plain,Completed,,1.500");
        assert_eq!(render(Format::Csv, &[]), "index,input,result,status,errors,duration_ms\n");
    }

    #[test]
    fn the_table_shows_the_input_spreads_objects_and_escapes_control_characters() {
        let mut p = Printer::new(Format::Table, Vec::new(), false);
        p.width = 100;
        p.begin().unwrap();
        p.item(&item(0, json!({"host": "a\nb", "up": true}), Status::Completed)).unwrap();
        p.item(&item(1, json!("\u{1b}[2Jgone"), Status::Completed)).unwrap();
        p.end().unwrap();
        let out = String::from_utf8(p.out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("  INDEX  STATUS") && lines[0].contains("INPUT") && lines[0].contains("HOST"));
        assert!(lines[0].contains("UP"), "{out}");
        assert!(lines[1].contains("a\\nb") && lines[1].contains("true"), "{out}");
        assert!(lines[2].contains("\\x1b[2Jgone"), "{out}");
        assert!(!out.contains('\u{1b}'));
        // A long input is cut to its column.
        let mut p = Printer::new(Format::Table, Vec::new(), false);
        p.width = 80;
        let mut long = item(0, json!(1), Status::Completed);
        long.input = json!("x".repeat(200));
        p.item(&long).unwrap();
        let out = String::from_utf8(p.out).unwrap();
        assert!(out.lines().all(|l| l.chars().count() <= 80), "{out}");
        assert!(out.contains('…'));
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
        // Several output values: one line each; a returned array: one line.
        let mut several = item(0, json!(["x", [1, 2], null, {"k": 1}]), Status::Completed);
        several.outputs = 4;
        let one_array = item(1, json!(["x", [1, 2]]), Status::Completed);
        assert_eq!(render(Format::Values, &[several, one_array]), "x\n[1,2]\n{\"k\":1}\n[\"x\",[1,2]]\n");
        let mut p = Printer::new(Format::Values, Vec::new(), false);
        p.item(&item(0, json!({"$bytes": "/wA="}), Status::Completed)).unwrap();
        assert_eq!(p.out, b"\xff\x00\n");
    }
}
