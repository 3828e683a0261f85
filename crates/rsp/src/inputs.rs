//! Where items come from: `--range`, `--input FILE`, or standard input, read
//! as a stream so memory never depends on the input's length.

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read};
use std::path::PathBuf;

use runspace::Input;
use serde_json::Value;

use crate::parse;
use crate::CliError;

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
}

/// The options that choose the inputs.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct InputArgs {
    /// Read items from FILE instead of standard input.
    #[arg(long, value_name = "FILE", conflicts_with = "range")]
    pub input: Option<PathBuf>,

    /// How input text is split into items.
    #[arg(long, value_enum, default_value_t = InputFormat::Lines, value_name = "FORMAT")]
    pub input_format: InputFormat,

    /// Items are the integers START..END, inclusive (10..1 counts down).
    #[arg(long, value_name = "START..END", value_parser = parse::range)]
    pub range: Option<parse::Range>,
}

/// A stream of inputs, with its length when known up front.
pub struct Inputs {
    pub items: Box<dyn Iterator<Item = Input> + Send>,
    pub total: Option<u64>,
}

impl InputArgs {
    /// Opens the inputs. With nothing given and a terminal on standard
    /// input, the script runs once with no input (`_` is nil).
    pub fn open(&self) -> Result<Inputs, CliError> {
        if let Some(range) = self.range {
            return Ok(Inputs {
                items: Box::new(range.iter().map(|n| Input::Value(Value::from(n)))),
                total: Some(range.len()),
            });
        }
        let reader: Box<dyn Read + Send> = match &self.input {
            Some(path) => Box::new(
                File::open(path).map_err(|e| CliError::usage(format!("cannot read input {}: {e}", path.display())))?,
            ),
            None if io::stdin().is_terminal() => {
                return Ok(Inputs { items: Box::new(std::iter::once(Input::Value(Value::Null))), total: Some(1) })
            }
            None => Box::new(io::stdin()),
        };
        let name = self.input.as_ref().map_or_else(|| "stdin".to_string(), |p| p.display().to_string());
        read(reader, self.input_format, &name)
    }
}

/// Splits `reader` into items according to `format`.
pub fn read(reader: Box<dyn Read + Send>, format: InputFormat, name: &str) -> Result<Inputs, CliError> {
    let reader = BufReader::with_capacity(1 << 16, reader);
    match format {
        InputFormat::Lines => Ok(Inputs {
            items: Box::new(Lines::new(reader, name).map(|line| match line {
                Ok(text) => Input::Value(Value::String(text)),
                Err(error) => Input::Invalid { text: String::new(), error },
            })),
            total: None,
        }),
        InputFormat::Jsonl => Ok(Inputs {
            items: Box::new(Lines::new(reader, name).filter_map(|line| match line {
                Ok(text) if text.trim().is_empty() => None,
                Ok(text) => Some(match serde_json::from_str::<Value>(&text) {
                    Ok(v) => Input::Value(v),
                    Err(e) => Input::Invalid { error: format!("malformed JSON: {e}"), text },
                }),
                Err(error) => Some(Input::Invalid { text: String::new(), error }),
            })),
            total: None,
        }),
        InputFormat::Json => {
            let doc: Value = serde_json::from_reader(reader)
                .map_err(|e| CliError::usage(format!("{name} is not valid JSON: {e}")))?;
            let items: Vec<Value> = match doc {
                Value::Array(items) => items,
                other => vec![other],
            };
            Ok(Inputs { total: Some(items.len() as u64), items: Box::new(items.into_iter().map(Input::Value)) })
        }
    }
}

/// Lines without their terminators; invalid UTF-8 is replaced, not fatal.
struct Lines<R> {
    reader: R,
    buf: Vec<u8>,
    name: String,
    failed: bool,
}

impl<R: BufRead> Lines<R> {
    fn new(reader: R, name: &str) -> Self {
        Lines { reader, buf: Vec::new(), name: name.to_string(), failed: false }
    }
}

impl<R: BufRead> Iterator for Lines<R> {
    type Item = Result<String, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        self.buf.clear();
        match self.reader.read_until(b'\n', &mut self.buf) {
            Ok(0) => None,
            Ok(_) => {
                if self.buf.last() == Some(&b'\n') {
                    self.buf.pop();
                    if self.buf.last() == Some(&b'\r') {
                        self.buf.pop();
                    }
                }
                Some(Ok(String::from_utf8_lossy(&self.buf).into_owned()))
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
        read(Box::new(text.as_bytes()), format, "test").unwrap().items.collect()
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
        let err = read(Box::new("[1,".as_bytes()), InputFormat::Json, "in.json").err().unwrap();
        assert!(err.message.contains("in.json is not valid JSON"), "{}", err.message);
    }
}
