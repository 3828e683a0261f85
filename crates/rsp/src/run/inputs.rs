//! Where items come from: `--range`, `--input FILE` (`-` for standard
//! input), or standard input, read as a stream so memory never depends on
//! the input's length. A UTF-8 byte-order mark at the start (PowerShell's
//! `Out-File` writes one) is skipped.

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read};
use std::path::PathBuf;

use runspace::inputs;
use runspace::{json, Input};
use serde_json::Value;

use crate::common::parse;
use crate::common::CliError;

/// How input text is split into items.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InputFormat {
    /// One string per line.
    #[default]
    Lines,
    /// One JSON value per line; a malformed line becomes a Failed item.
    Jsonl,
    /// One JSON document: an array is one item per element, anything else one item.
    Json,
    /// CSV (RFC 4180 quoting): with a header row each record is an object keyed by it,
    /// with --no-header an array of strings.
    Csv,
    /// Like csv, separated by tabs.
    Tsv,
}

/// The options that choose the inputs.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct InputArgs {
    /// Read items from FILE instead of standard input ('-' is standard input).
    #[arg(long, value_name = "FILE", conflicts_with = "range")]
    pub input: Option<PathBuf>,

    /// How input text is split into items.
    #[arg(long, value_enum, default_value_t = InputFormat::Lines, value_name = "FORMAT")]
    pub input_format: InputFormat,

    /// CSV/TSV input has no header row: every record is an array of strings.
    #[arg(long)]
    pub no_header: bool,

    /// Run the script once with no input (`_` is nil) and read nothing, also when standard
    /// input is not a terminal (cron). Without it, a script reads standard input unless it is
    /// a terminal, and warns when it read no items.
    #[arg(long, conflicts_with_all = ["input", "range"])]
    pub once: bool,

    /// Items are the integers START..END, inclusive (10..1 counts down).
    #[arg(long, value_name = "START..END", value_parser = parse::range, allow_hyphen_values = true)]
    pub range: Option<parse::Range>,
}

/// A stream of inputs, with its length when known up front.
pub struct Inputs {
    pub items: Box<dyn Iterator<Item = Input> + Send>,
    pub total: Option<u64>,
}

impl InputArgs {
    /// Opens the inputs. With `--once`, or nothing given and a terminal on
    /// standard input, the script runs once with no input (`_` is nil).
    pub fn open(&self) -> Result<Inputs, CliError> {
        self.open_with(Records::Objects)
    }

    /// Opens the inputs, CSV records shaped as `records` says.
    pub fn open_with(&self, records: Records) -> Result<Inputs, CliError> {
        if let Some(range) = self.range {
            return Ok(Inputs {
                items: Box::new(range.iter().map(|n| Input::Value(Value::from(n)))),
                total: Some(range.len()),
            });
        }
        if self.once || (self.reads_stdin() && io::stdin().is_terminal()) {
            return Ok(Inputs { items: Box::new(std::iter::once(Input::Value(Value::Null))), total: Some(1) });
        }
        let reader: Box<dyn Read + Send> = match &self.input {
            Some(path) if path.as_os_str() != "-" => Box::new(
                File::open(path).map_err(|e| CliError::usage(format!("cannot read input {}: {e}", path.display())))?,
            ),
            _ => Box::new(io::stdin()),
        };
        read(reader, self.input_format, &self.source_name(), self.csv_shape(records))
    }

    /// True when items come from standard input (no `--input FILE`, no `--range`).
    pub fn reads_stdin(&self) -> bool {
        self.range.is_none() && self.input.as_ref().is_none_or(|p| p.as_os_str() == "-")
    }

    /// Where items come from, for messages.
    pub fn source_name(&self) -> String {
        match &self.input {
            Some(path) if path.as_os_str() != "-" => path.display().to_string(),
            _ => "stdin".to_string(),
        }
    }

    fn csv_shape(&self, records: Records) -> Records {
        if self.no_header {
            Records::Arrays { header: false }
        } else {
            records
        }
    }
}

/// How CSV and TSV records become items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Records {
    /// Objects keyed by the header row.
    Objects,
    /// Arrays of strings; the first row is a header (skipped) when `header`.
    Arrays {
        /// Whether the first row is a header.
        header: bool,
    },
}

/// The UTF-8 byte-order mark.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A reader that drops a UTF-8 byte-order mark at its start. The check
/// happens at the first read, on whichever thread reads: opening the
/// inputs must not block (a FIFO nobody writes to must still let Ctrl-C end
/// the run).
struct SkipBom<R> {
    inner: R,
    /// Bytes read while checking that were not a mark, to hand out first.
    pending: Vec<u8>,
    checked: bool,
}

impl<R> SkipBom<R> {
    fn new(inner: R) -> SkipBom<R> {
        SkipBom { inner, pending: Vec::new(), checked: false }
    }
}

impl<R: Read> Read for SkipBom<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.checked {
            let mut start = [0u8; 3];
            let mut got = 0;
            while got < start.len() {
                match self.inner.read(&mut start[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            self.checked = true;
            if &start[..got] != BOM {
                self.pending = start[..got].to_vec();
            }
        }
        if !self.pending.is_empty() {
            let n = self.pending.len().min(buf.len());
            buf[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            return Ok(n);
        }
        self.inner.read(buf)
    }
}

/// `bytes` without a leading UTF-8 byte-order mark (script and argument files).
pub fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(BOM).unwrap_or(bytes)
}

/// Splits `reader` into items according to `format`. Lines reach scripts
/// as their exact bytes; JSON is read by the library's [`json::parse`], so
/// integers beyond ±2^53 arrive as strings instead of rounded (the library's
/// [`inputs`] module holds both rules). CSV and TSV records are shaped as
/// `records` says.
pub fn read(
    reader: Box<dyn Read + Send>,
    format: InputFormat,
    name: &str,
    records: Records,
) -> Result<Inputs, CliError> {
    let reader: Box<dyn Read + Send> = Box::new(SkipBom::new(reader));
    let reader = BufReader::with_capacity(1 << 16, reader);
    match format {
        InputFormat::Csv => csv_records(reader, b',', name, records),
        InputFormat::Tsv => csv_records(reader, b'\t', name, records),
        InputFormat::Lines => Ok(Inputs {
            items: Box::new(Lines::new(reader, name).map(|line| match line {
                Ok(bytes) => inputs::line(bytes),
                Err(error) => Input::Invalid { text: String::new(), error },
            })),
            total: None,
        }),
        InputFormat::Jsonl => Ok(Inputs {
            items: Box::new(Lines::new(reader, name).filter_map(|line| match line {
                Ok(bytes) => inputs::json_line(&bytes),
                Err(error) => Some(Input::Invalid { text: String::new(), error }),
            })),
            total: None,
        }),
        InputFormat::Json => {
            let mut text = Vec::new();
            { reader }.read_to_end(&mut text).map_err(|e| CliError::usage(format!("cannot read {name}: {e}")))?;
            let doc = json::parse(&text).map_err(|e| CliError::usage(format!("{name} is not valid JSON: {e}")))?;
            let items: Vec<Value> = match doc {
                Value::Array(items) => items,
                other => vec![other],
            };
            Ok(Inputs { total: Some(items.len() as u64), items: Box::new(items.into_iter().map(Input::Value)) })
        }
    }
}

/// CSV or TSV records as items, streamed (the header too is read on the
/// feeder thread, at the first item). A record that cannot be read (a field
/// count that differs from the header's, bytes that are not UTF-8) becomes a
/// Failed item that says where.
fn csv_records(
    reader: BufReader<Box<dyn Read + Send>>,
    delimiter: u8,
    name: &str,
    records: Records,
) -> Result<Inputs, CliError> {
    let has_header = !matches!(records, Records::Arrays { header: false });
    let reader = csv::ReaderBuilder::new().delimiter(delimiter).has_headers(has_header).from_reader(reader);
    let items =
        CsvItems { reader, objects: records == Records::Objects, keys: None, name: name.to_string(), done: false };
    Ok(Inputs { items: Box::new(items), total: None })
}

/// The records of a CSV reader as items.
struct CsvItems<R> {
    reader: csv::Reader<R>,
    /// Records become objects keyed by the header.
    objects: bool,
    /// The header's fields, once read.
    keys: Option<Vec<String>>,
    name: String,
    done: bool,
}

impl<R: Read> Iterator for CsvItems<R> {
    type Item = Input;

    fn next(&mut self) -> Option<Input> {
        if self.done {
            return None;
        }
        if self.objects && self.keys.is_none() {
            match self.reader.headers() {
                Ok(header) => self.keys = Some(header.iter().map(String::from).collect()),
                Err(e) => {
                    self.done = true;
                    let error = format!("cannot read the header row of {}: {e}", self.name);
                    return Some(Input::Invalid { text: String::new(), error });
                }
            }
        }
        let mut record = csv::StringRecord::new();
        match self.reader.read_record(&mut record) {
            Ok(false) => None,
            Ok(true) => Some(Input::Value(match &self.keys {
                Some(keys) => Value::Object(keys.iter().cloned().zip(record.iter().map(Value::from)).collect()),
                None => Value::Array(record.iter().map(Value::from).collect()),
            })),
            Err(e) => {
                // A malformed record fails its item; an I/O error ends the input.
                self.done = matches!(e.kind(), csv::ErrorKind::Io(_));
                Some(Input::Invalid { text: String::new(), error: format!("{}: {e}", self.name) })
            }
        }
    }
}

/// Lines as bytes, without their terminators.
struct Lines<R> {
    reader: R,
    name: String,
    failed: bool,
}

impl<R: BufRead> Lines<R> {
    fn new(reader: R, name: &str) -> Self {
        Lines { reader, name: name.to_string(), failed: false }
    }
}

impl<R: BufRead> Iterator for Lines<R> {
    type Item = Result<Vec<u8>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let mut buf = Vec::new();
        match self.reader.read_until(b'\n', &mut buf) {
            Ok(0) => None,
            Ok(_) => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                    if buf.last() == Some(&b'\r') {
                        buf.pop();
                    }
                }
                Some(Ok(buf))
            }
            Err(e) => {
                // Report the read error as one failed item and stop reading.
                self.failed = true;
                Some(Err(format!("error reading {}: {e}", self.name)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn items(text: &'static str, format: InputFormat) -> Vec<Input> {
        read(Box::new(text.as_bytes()), format, "test", Records::Objects).unwrap().items.collect()
    }

    #[test]
    fn lines_keep_their_exact_bytes_and_json_keeps_big_integers() {
        let got: Vec<Input> =
            read(Box::new(&b"ok\n\xff\xfe\n"[..]), InputFormat::Lines, "t", Records::Objects).unwrap().items.collect();
        assert_eq!(got, vec![json!("ok").into(), json!({"$bytes": "//4="}).into()]);
        assert_eq!(
            items("18446744073709551616\n[-9223372036854775809]\n", InputFormat::Jsonl),
            vec![json!("18446744073709551616").into(), json!(["-9223372036854775809"]).into()]
        );
        assert_eq!(
            items("[18446744073709551616, 1]", InputFormat::Json),
            vec![json!("18446744073709551616").into(), json!(1).into()]
        );
    }

    #[test]
    fn lines_keep_text_and_strip_terminators() {
        assert_eq!(
            items("a\r\nb\n\nc", InputFormat::Lines),
            vec![json!("a").into(), json!("b").into(), json!("").into(), json!("c").into()]
        );
    }

    #[test]
    fn malformed_jsonl_lines_become_invalid_items() {
        let got = items("1\n{oops\n\n[2]\n", InputFormat::Jsonl);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], json!(1).into());
        assert!(
            matches!(&got[1], Input::Invalid { text, error } if text == "{oops" && error.contains("malformed JSON"))
        );
        assert_eq!(got[2], json!([2]).into());
    }

    #[test]
    fn json_arrays_spread_and_bad_documents_are_usage_errors() {
        assert_eq!(items("[1, 2]", InputFormat::Json).len(), 2);
        assert_eq!(items("{\"a\": 1}", InputFormat::Json).len(), 1);
        let err = read(Box::new("[1,".as_bytes()), InputFormat::Json, "in.json", Records::Objects).err().unwrap();
        assert!(err.message.contains("in.json is not valid JSON"), "{}", err.message);
    }

    #[test]
    fn a_byte_order_mark_is_skipped_in_every_format() {
        assert_eq!(items("\u{feff}a\nb\n", InputFormat::Lines), vec![json!("a").into(), json!("b").into()]);
        assert_eq!(items("\u{feff}[1]", InputFormat::Json), vec![json!(1).into()]);
        assert_eq!(items("\u{feff}1\n", InputFormat::Jsonl), vec![json!(1).into()]);
        assert_eq!(items("\u{feff}k\nv\n", InputFormat::Csv), vec![json!({"k": "v"}).into()]);
        // Only at the start, and short inputs are kept whole.
        assert_eq!(items("a\u{feff}\n", InputFormat::Lines), vec![json!("a\u{feff}").into()]);
        assert_eq!(items("ab", InputFormat::Lines), vec![json!("ab").into()]);
        assert_eq!(items("", InputFormat::Lines), vec![]);
        assert_eq!(strip_bom(b"\xEF\xBB\xBFx"), b"x");
    }

    #[test]
    fn csv_with_a_header_gives_objects_and_quoted_commas_stay_in_their_field() {
        let text = "name,note\n\"Smith, John\",\"said \"\"hi\"\"\"\nAnn,\"two\nlines\"\n";
        assert_eq!(
            items(text, InputFormat::Csv),
            vec![
                json!({"name": "Smith, John", "note": "said \"hi\""}).into(),
                json!({"name": "Ann", "note": "two\nlines"}).into()
            ]
        );
        let arrays: Vec<Input> =
            read(Box::new("a,b\n1,2\n".as_bytes()), InputFormat::Csv, "t", Records::Arrays { header: false })
                .unwrap()
                .items
                .collect();
        assert_eq!(arrays, vec![json!(["a", "b"]).into(), json!(["1", "2"]).into()]);
        let tsv = items("x\ty\n1\t\"a\tb\"\n", InputFormat::Tsv);
        assert_eq!(tsv, vec![json!({"x": "1", "y": "a\tb"}).into()]);
        // A record with a field too many fails its item, and reading goes on.
        let got = items("a,b\n1,2,3\n4,5\n", InputFormat::Csv);
        assert!(matches!(&got[0], Input::Invalid { error, .. } if error.contains("t: ")), "{got:?}");
        assert_eq!(got[1], json!({"a": "4", "b": "5"}).into());
    }
}
