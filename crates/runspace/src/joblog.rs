//! The job log of a parallel run: which items finished, so an interrupted
//! run can be resumed (GNU parallel's `--joblog` and `--resume`).
//!
//! A tab-separated file: a header line, then one line per finished item:
//!
//! ```text
//! Seq  Index  Starttime       JobRuntime  Status     Attempts  Digest
//! 1    0      1718000000.123  0.512       Completed  1         3f2a9c0d11e4b7a8
//! ```
//!
//! `Starttime` is Unix seconds, `JobRuntime` milliseconds of the last
//! attempt, `Digest` the first 64 bits of the BLAKE3 hash of the input as
//! JSON. An item counts as finished only once its whole line, newline
//! included, is in the file; a truncated last line (a crash in the middle of
//! a write) is reported so the writer can cut it off. Stopped items are not
//! logged: they did not finish.
//!
//! The format lives in the library beside the run it records (indices,
//! statuses, inputs), so every front end and the fuzzers read it the same
//! way; writing the file, and what a resumed run skips, stay with the caller.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufRead};

use serde_json::Value;

use crate::streams::Status;

/// The header line of a job log.
pub const HEADER: &str = "Seq\tIndex\tStarttime\tJobRuntime\tStatus\tAttempts\tDigest";

/// Indices past this are taken for a corrupt line.
const MAX_INDEX: u64 = 1 << 32;

/// Indices up to this far past the lines read so far are kept in the dense
/// table; anything further (a sparse or hostile log) goes to a map, so
/// memory follows the number of lines, never the largest index.
const DENSE_SLACK: u64 = 1 << 16;

/// The digest of an input as the job log records it: the first 64 bits of
/// BLAKE3 over its JSON text. `scratch` is reused between calls.
///
/// ```
/// use serde_json::json;
/// let mut scratch = Vec::new();
/// let d = runspace::joblog::digest(&json!(1), &mut scratch);
/// assert_eq!(d, runspace::joblog::digest(&json!(1), &mut scratch));
/// assert_ne!(d, runspace::joblog::digest(&json!("1"), &mut scratch));
/// ```
pub fn digest(value: &Value, scratch: &mut Vec<u8>) -> u64 {
    scratch.clear();
    // Writing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *scratch, value);
    let hash = blake3::hash(scratch);
    let mut first = [0; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_be_bytes(first)
}

/// One line of a job log.
///
/// ```
/// use runspace::{joblog::Line, Status};
/// let line = Line { seq: 1, index: 0, start: 1718000000.123, runtime_ms: 0.512,
///                   status: Status::Completed, attempts: 1, digest: 0x3f2a9c0d11e4b7a8 };
/// let text = line.to_string();
/// assert_eq!(text, "1\t0\t1718000000.123\t0.512\tCompleted\t1\t3f2a9c0d11e4b7a8");
/// assert_eq!(Line::parse(&text), Some(line));
/// assert_eq!(Line::parse("1\t0\tsoon"), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Line {
    /// The line's sequence number (1, 2, ... across resumed runs).
    pub seq: u64,
    /// The item's index in the input.
    pub index: u64,
    /// When the last attempt started, in Unix seconds.
    pub start: f64,
    /// How long the last attempt ran, in milliseconds.
    pub runtime_ms: f64,
    /// How the item ended (never `Stopped`).
    pub status: Status,
    /// How many times it ran.
    pub attempts: u32,
    /// The input's [`digest`].
    pub digest: u64,
}

impl Line {
    /// Parses a line without its terminator; `None` when it is malformed.
    pub fn parse(text: &str) -> Option<Line> {
        let mut fields = text.split('\t');
        let mut next = || fields.next();
        let seq = next()?.parse().ok()?;
        let index = next()?.parse().ok().filter(|i| *i < MAX_INDEX)?;
        let start = next()?.parse::<f64>().ok().filter(|f| f.is_finite())?;
        let runtime_ms = next()?.parse::<f64>().ok().filter(|f| f.is_finite())?;
        let status = match next()? {
            "Completed" => Status::Completed,
            "CompletedWithErrors" => Status::CompletedWithErrors,
            "Failed" => Status::Failed,
            "TimedOut" => Status::TimedOut,
            _ => return None,
        };
        let attempts = next()?.parse().ok()?;
        let digest = next()?;
        if digest.len() != 16 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) || next().is_some() {
            return None;
        }
        let digest = u64::from_str_radix(digest, 16).ok()?;
        Some(Line { seq, index, start, runtime_ms, status, attempts, digest })
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}\t{}\t{:.3}\t{:.3}\t{}\t{}\t{:016x}",
            self.seq,
            self.index,
            self.start,
            self.runtime_ms,
            self.status.as_str(),
            self.attempts,
            self.digest
        )
    }
}

/// What an earlier run recorded: per input index, a 31-bit digest and
/// whether the item failed, packed in a `u32`. Four bytes per input keeps a
/// 10-million-item log at 40 MB.
#[derive(Debug, Default, Clone)]
pub struct Recorded {
    /// Dense entries by index (0 = not recorded).
    dense: Vec<u32>,
    /// Entries too far past the dense table to grow it for.
    sparse: HashMap<u64, u32>,
    /// Items recorded (the latest line per index counts).
    pub finished: u64,
    /// Of those, items whose latest line is Failed or TimedOut.
    pub failed: u64,
    /// The highest sequence number seen.
    pub last_seq: u64,
}

const FAILED_BIT: u32 = 1 << 31;

fn pack(digest: u64, failed: bool) -> u32 {
    let d = (digest >> 33) as u32; // 31 bits
    let d = if d == 0 { 1 } else { d };
    d | if failed { FAILED_BIT } else { 0 }
}

impl Recorded {
    /// Records a line: the latest line of an index replaces earlier ones.
    pub fn record(&mut self, line: &Line) {
        let failed = matches!(line.status, Status::Failed | Status::TimedOut);
        self.last_seq = self.last_seq.max(line.seq);
        let entry = pack(line.digest, failed);
        let dense_room = (self.finished + DENSE_SLACK).saturating_mul(2);
        let old = match usize::try_from(line.index) {
            Ok(i) if i < self.dense.len() => std::mem::replace(&mut self.dense[i], entry),
            Ok(i) if (i as u64) < dense_room && !self.sparse.contains_key(&line.index) => {
                self.dense.resize(i + 1, 0);
                self.dense[i] = entry;
                0
            }
            _ => self.sparse.insert(line.index, entry).unwrap_or(0),
        };
        if old != 0 {
            self.finished -= 1;
            if old & FAILED_BIT != 0 {
                self.failed -= 1;
            }
        }
        self.finished += 1;
        if failed {
            self.failed += 1;
        }
    }

    /// `Some((digest matches, failed))` when `index` was recorded.
    pub fn lookup(&self, index: u64, digest: u64) -> Option<(bool, bool)> {
        let dense = usize::try_from(index).ok().and_then(|i| self.dense.get(i)).copied().unwrap_or(0);
        let e = if dense != 0 { dense } else { *self.sparse.get(&index)? };
        (e != 0).then(|| ((e & !FAILED_BIT) == (pack(digest, false) & !FAILED_BIT), e & FAILED_BIT != 0))
    }
}

/// What [`read`] found.
#[derive(Debug, Default)]
pub struct ReadLog {
    /// The items recorded.
    pub recorded: Recorded,
    /// One message per skipped line: malformed (skipped) or truncated (the last).
    pub warnings: Vec<String>,
    /// The length of the log up to its last complete line: cut the file
    /// there before appending, so the next line starts clean.
    pub good_len: u64,
}

/// Reads a job log. Complete malformed lines are skipped with a warning; a
/// truncated last line ends the reading with a warning. `name` names the
/// log in the warnings.
pub fn read(mut reader: impl BufRead, name: &str) -> io::Result<ReadLog> {
    let mut log = ReadLog::default();
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        number += 1;
        if line.last() != Some(&b'\n') {
            log.warnings.push(format!(
                "{name}: line {number} is truncated (an interrupted write); ignoring it, its item runs again"
            ));
            break;
        }
        log.good_len += n as u64;
        let text = String::from_utf8_lossy(&line[..n - 1]);
        let text = text.trim_end_matches('\r');
        if text.is_empty() || text.starts_with("Seq\t") || text.starts_with('#') {
            continue;
        }
        match Line::parse(text) {
            Some(parsed) => log.recorded.record(&parsed),
            None => log.warnings.push(format!("{name}: line {number} is malformed; ignoring it")),
        }
    }
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn line(seq: u64, index: u64, status: Status, digest: u64) -> Line {
        Line { seq, index, start: 1.0, runtime_ms: 1.0, status, attempts: 1, digest }
    }

    #[test]
    fn the_latest_line_of_an_index_wins() {
        let d = digest(&json!(1), &mut Vec::new());
        let mut rec = Recorded::default();
        rec.record(&line(1, 0, Status::Completed, d));
        rec.record(&line(2, 1, Status::Failed, d));
        rec.record(&line(3, 1, Status::Completed, d));
        assert_eq!((rec.finished, rec.failed, rec.last_seq), (2, 0, 3));
        assert_eq!(rec.lookup(1, d), Some((true, false)));
        assert_eq!(rec.lookup(1, d ^ (1 << 40)).map(|x| x.0), Some(false));
        assert_eq!(rec.lookup(2, d), None);
    }

    #[test]
    fn a_huge_index_costs_an_entry_not_gigabytes() {
        // Found while writing the job-log fuzz target: one corrupt or hostile
        // line with index 4294967295 made the dense table grow to 16 GB.
        let text = format!("{HEADER}\n1\t4294967295\t1.0\t1.0\tFailed\t1\t{:016x}\n", 7u64 << 40);
        let log = read(text.as_bytes(), "log").unwrap();
        assert!(log.recorded.dense.len() < 1 << 20);
        assert_eq!((log.recorded.finished, log.recorded.failed), (1, 1));
        assert_eq!(log.recorded.lookup(4294967295, 7 << 40), Some((true, true)));
        // Replacing a sparse entry keeps the counts right.
        let mut rec = log.recorded;
        rec.record(&line(2, 4294967295, Status::Completed, 7 << 40));
        assert_eq!((rec.finished, rec.failed), (1, 0));
    }

    #[test]
    fn malformed_and_truncated_lines_are_reported() {
        let d = digest(&json!(0), &mut Vec::new());
        let text = format!("{HEADER}\n1\t0\t1.0\t1.0\tCompleted\t1\t{d:016x}\ngarbage line\n2\t1\t1.0\t1.");
        let log = read(text.as_bytes(), "log.tsv").unwrap();
        assert_eq!(log.recorded.finished, 1);
        assert_eq!(log.warnings.len(), 2, "{:?}", log.warnings);
        assert!(log.warnings[0].contains("line 3 is malformed") && log.warnings[1].contains("line 4 is truncated"));
        assert_eq!(log.good_len as usize, text.rfind('\n').unwrap() + 1);
    }

    #[test]
    fn lines_refuse_what_the_writer_never_writes() {
        let ok = "1\t0\t1.000\t1.000\tCompleted\t1\t00000000000000ff";
        assert!(Line::parse(ok).is_some());
        for bad in [
            "1\t0\t1.000\t1.000\tStopped\t1\t00000000000000ff",
            "1\t0\tinf\t1.000\tCompleted\t1\t00000000000000ff",
            "1\t0\t1.000\t1.000\tCompleted\t1\t+0000000000000ff",
            "1\t0\t1.000\t1.000\tCompleted\t1\t00000000000000ff\textra",
            "1\t4294967296\t1.000\t1.000\tCompleted\t1\t00000000000000ff",
        ] {
            assert_eq!(Line::parse(bad), None, "{bad}");
        }
    }
}
