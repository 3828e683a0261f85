//! Where items come from: `--range`, `--input FILE`, or standard input, read
//! as a stream so memory never depends on the input's length.

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
    #[arg(long, value_name = "START..END", value_parser = parse::range, allow_hyphen_values = true)]
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

/// Splits `reader` into items according to `format`. Lines reach scripts
/// as their exact bytes; JSON is read by the library's [`json::parse`], so
/// integers beyond ±2^53 arrive as strings instead of rounded (the library's
/// [`inputs`] module holds both rules).
pub fn read(reader: Box<dyn Read + Send>, format: InputFormat, name: &str) -> Result<Inputs, CliError> {
    let reader = BufReader::with_capacity(1 << 16, reader);
    match format {
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
        read(Box::new(text.as_bytes()), format, "test").unwrap().items.collect()
    }

    #[test]
    fn lines_keep_their_exact_bytes_and_json_keeps_big_integers() {
        let got: Vec<Input> = read(Box::new(&b"ok\n\xff\xfe\n"[..]), InputFormat::Lines, "t").unwrap().items.collect();
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
        let err = read(Box::new("[1,".as_bytes()), InputFormat::Json, "in.json").err().unwrap();
        assert!(err.message.contains("in.json is not valid JSON"), "{}", err.message);
    }
}
