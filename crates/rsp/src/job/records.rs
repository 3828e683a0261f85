//! Writing a job's output records as they arrive: JSON Lines (the default
//! when stdout is not a terminal, like `rsp run`), one JSON array written
//! as it goes, or readable lines. A reader that goes away (`| head`) ends
//! the writing quietly.

use std::io::{self, Write};

use serde_json::Value;

use super::{show, Format};

/// Records to stdout in one format.
pub struct RecordWriter<W: Write> {
    format: Format,
    out: W,
    written: u64,
}

/// What a failed write means to the caller.
pub enum Closed {
    /// The reader went away: stop quietly, successfully.
    Reader,
    /// Any other write error, with its message.
    Error(String),
}

fn closed(e: io::Error) -> Closed {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Closed::Reader
    } else {
        Closed::Error(format!("cannot write the output: {e}"))
    }
}

impl<W: Write> RecordWriter<W> {
    /// A writer of `format` records to `out`.
    pub fn new(format: Format, out: W) -> RecordWriter<W> {
        RecordWriter { format, out, written: 0 }
    }

    /// Writes one record.
    pub fn record(&mut self, record: &Value) -> Result<(), Closed> {
        let result = match self.format {
            Format::Jsonl => writeln!(self.out, "{record}"),
            Format::Json => {
                let sep = if self.written == 0 { "[\n" } else { ",\n" };
                let text = serde_json::to_string_pretty(record).unwrap_or_default().replace('\n', "\n  ");
                write!(self.out, "{sep}  {text}")
            }
            Format::Table => writeln!(self.out, "{}", show::output_text(record)),
        };
        self.written += 1;
        result.map_err(closed)
    }

    /// Makes what was written visible now (between pages of a follow).
    pub fn flush(&mut self) -> Result<(), Closed> {
        self.out.flush().map_err(closed)
    }

    /// Closes the JSON array, if any, and flushes.
    pub fn finish(&mut self) -> Result<(), Closed> {
        let result = match (self.format, self.written) {
            (Format::Json, 0) => writeln!(self.out, "[]"),
            (Format::Json, _) => writeln!(self.out, "\n]"),
            _ => Ok(()),
        };
        result.map_err(closed)?;
        self.flush()
    }
}

/// The stream lines of an item record (warnings, verbose…), for stderr.
pub fn item_stream_lines(record: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    for stream in ["warning", "verbose", "debug", "information"] {
        for text in record[stream].as_array().into_iter().flatten() {
            let text = text.as_str().map_or_else(|| text.to_string(), str::to_string);
            lines.push(format!("[{stream}] item {}: {text}", record["index"]));
        }
    }
    lines
}

/// One record of a job's stream as a line for stderr.
pub fn job_stream_line(stream: &str, record: &Value) -> String {
    let text = record.as_str().map_or_else(|| record.to_string(), str::to_string);
    format!("[{stream}] {text}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(format: Format, records: &[Value]) -> String {
        let mut w = RecordWriter::new(format, Vec::new());
        for r in records {
            assert!(w.record(r).is_ok());
        }
        assert!(w.finish().is_ok());
        String::from_utf8(w.out).unwrap()
    }

    #[test]
    fn every_format_round_trips_or_reads() {
        let records = [json!({"seq": 0, "value": 1}), json!({"seq": 1, "value": "two"})];
        let lines = render(Format::Jsonl, &records);
        let parsed: Vec<Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(parsed, records);
        let array: Value = serde_json::from_str(&render(Format::Json, &records)).unwrap();
        assert_eq!(array, json!(records));
        assert_eq!(serde_json::from_str::<Value>(&render(Format::Json, &[])).unwrap(), json!([]));
        assert_eq!(render(Format::Table, &records), "1\ntwo\n");
    }

    #[test]
    fn a_closed_pipe_is_the_reader_going_away() {
        struct Gone;
        impl Write for Gone {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = RecordWriter::new(Format::Jsonl, Gone);
        assert!(matches!(w.record(&json!({})), Err(Closed::Reader)));
    }
}
