//! `--joblog FILE`, `--resume`, `--resume-failed` and `--results DIR`.
//!
//! The job log's format, and reading it, are the library's
//! ([`runspace::joblog`]): a header, then one tab-separated line per
//! finished item (`Seq Index Starttime JobRuntime Status Attempts Digest`).
//! Here it is written: lines are buffered and written right after the
//! stdout records of the same items (see `drive`), so a `kill -9` loses at
//! most the lines of the last flush: those items run again on `--resume`. A truncated
//! last line (a crash in the middle of a write) is cut off with a warning.
//! Items that were stopped (a second Ctrl-C, `--halt now`) are not logged:
//! they did not finish.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use runspace::joblog::{digest, Line, Recorded, HEADER};
use runspace::{Input, ItemResult, Status};
use serde_json::Value;

use super::args::LargeRunArgs;
use crate::common::diag::diag;
use crate::common::CliError;

/// Which recorded items a resumed run skips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Every recorded item (`--resume`).
    Finished,
    /// Recorded items that did not fail (`--resume-failed`).
    Failed,
}

/// Filters the inputs of a resumed run, on the feeder thread: yields
/// `(index, input)` for what must run. Stops at the first input whose
/// digest differs from the log's, and leaves the message in `mismatch`.
pub struct ResumeFilter<I> {
    pub inputs: I,
    pub recorded: Recorded,
    pub mode: Resume,
    pub mismatch: Arc<OnceLock<String>>,
    /// Inputs passed over so far.
    pub skipped: Arc<AtomicU64>,
    index: u64,
    scratch: Vec<u8>,
}

impl<I> ResumeFilter<I> {
    pub fn new(
        inputs: I,
        recorded: Recorded,
        mode: Resume,
        mismatch: Arc<OnceLock<String>>,
        skipped: Arc<AtomicU64>,
    ) -> Self {
        ResumeFilter { inputs, recorded, mode, mismatch, skipped, index: 0, scratch: Vec::new() }
    }
}

impl<I: Iterator<Item = Input>> Iterator for ResumeFilter<I> {
    type Item = (u64, Input);

    fn next(&mut self) -> Option<(u64, Input)> {
        if self.mismatch.get().is_some() {
            return None;
        }
        for input in self.inputs.by_ref() {
            let index = self.index;
            self.index += 1;
            let digest = match &input {
                Input::Value(v) => digest(v, &mut self.scratch),
                Input::Invalid { text, .. } => digest(&Value::String(text.clone()), &mut self.scratch),
            };
            match self.recorded.lookup(index, digest) {
                None => return Some((index, input)),
                Some((false, _)) => {
                    let _ = self.mismatch.set(format!(
                        "input {index} differs from the one in the job log (digest mismatch): the inputs \
                         changed since the logged run; refusing to resume (start afresh without --resume, \
                         or use another --joblog)"
                    ));
                    return None;
                }
                Some((true, failed)) if self.mode == Resume::Failed && failed => return Some((index, input)),
                Some((true, _)) => {
                    self.skipped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        None
    }
}

/// The inputs of a run with their indices: all of them, or what a resumed
/// run must still do. An enum, not a second boxed iterator, to keep the
/// plain path free of another dynamic call per item.
pub enum Feed<I> {
    /// Every input.
    Plain(std::iter::Enumerate<I>),
    /// Inputs not yet logged.
    Resume(ResumeFilter<I>),
}

impl<I: Iterator<Item = Input>> Iterator for Feed<I> {
    type Item = (u64, Input);

    #[inline]
    fn next(&mut self) -> Option<(u64, Input)> {
        match self {
            Feed::Plain(inputs) => inputs.next().map(|(i, input)| (i as u64, input)),
            Feed::Resume(filter) => filter.next(),
        }
    }
}

/// The job log of a run and the inputs it leaves to do: `--joblog` alone
/// starts a fresh log; with `--resume` or `--resume-failed` the recorded
/// items are skipped.
pub struct Journal<I> {
    /// The log to append to, when `--joblog` was given.
    pub log: Option<JobLog>,
    /// The inputs to run, with their indices.
    pub feed: Feed<I>,
    /// How many inputs the log lets the run skip, for the progress total.
    pub skip_estimate: u64,
    /// Set when an input differs from the logged one: the run stops.
    pub mismatch: Arc<OnceLock<String>>,
    /// Inputs skipped so far.
    pub skipped: Arc<AtomicU64>,
}

impl<I: Iterator<Item = Input>> Journal<I> {
    /// Opens (or creates) the job log the options name, and filters `inputs`.
    pub fn open(args: &LargeRunArgs, inputs: I) -> Result<Journal<I>, CliError> {
        let resume = match (args.resume, args.resume_failed) {
            (_, true) => Some(Resume::Failed),
            (true, false) => Some(Resume::Finished),
            _ => None,
        };
        let mismatch = Arc::new(OnceLock::new());
        let skipped = Arc::new(AtomicU64::new(0));
        let (log, feed, skip_estimate) = match (&args.joblog, resume) {
            (Some(path), Some(mode)) => {
                let (log, recorded) = JobLog::resume(path)?;
                let skip_estimate = match mode {
                    Resume::Finished => recorded.finished,
                    Resume::Failed => recorded.finished - recorded.failed,
                };
                let filter = ResumeFilter::new(inputs, recorded, mode, mismatch.clone(), skipped.clone());
                (Some(log), Feed::Resume(filter), skip_estimate)
            }
            (Some(path), None) => (Some(JobLog::create(path)?), Feed::Plain(inputs.enumerate()), 0),
            (None, _) => (None, Feed::Plain(inputs.enumerate()), 0),
        };
        Ok(Journal { log, feed, skip_estimate, mismatch, skipped })
    }
}

/// Appends lines to a job log. Lines are kept in a buffer until
/// [`flush`](Self::flush), which the caller calls after flushing stdout.
pub struct JobLog {
    file: File,
    buf: Vec<u8>,
    seq: u64,
    scratch: Vec<u8>,
}

impl JobLog {
    /// Starts a fresh log (truncating `path`) with its header.
    pub fn create(path: &Path) -> Result<JobLog, CliError> {
        let mut file = File::create(path).map_err(|e| open_error(path, e))?;
        writeln!(file, "{HEADER}").map_err(|e| open_error(path, e))?;
        Ok(JobLog { file, buf: Vec::with_capacity(1 << 16), seq: 0, scratch: Vec::new() })
    }

    /// Reads an existing log for resuming and opens it for appending; a
    /// missing log is created. Warnings go to stderr.
    pub fn resume(path: &Path) -> Result<(JobLog, Recorded), CliError> {
        if !path.exists() {
            return Ok((JobLog::create(path)?, Recorded::default()));
        }
        let file = File::open(path).map_err(|e| open_error(path, e))?;
        let log = runspace::joblog::read(BufReader::with_capacity(1 << 16, file), &path.display().to_string())
            .map_err(|e| open_error(path, e))?;
        for warning in log.warnings {
            diag!("rsp: warning: {warning}");
        }
        let (recorded, good_len) = (log.recorded, log.good_len);
        let mut file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| open_error(path, e))?;
        // Cut a truncated last line off, so the next line starts clean.
        file.set_len(good_len).map_err(|e| open_error(path, e))?;
        file.seek(SeekFrom::End(0)).map_err(|e| open_error(path, e))?;
        if good_len == 0 {
            writeln!(file, "{HEADER}").map_err(|e| open_error(path, e))?;
        }
        let log = JobLog { file, buf: Vec::with_capacity(1 << 16), seq: recorded.last_seq, scratch: Vec::new() };
        Ok((log, recorded))
    }

    /// Buffers the line of a finished item. Stopped items are not logged.
    pub fn record(&mut self, item: &ItemResult) {
        if item.status == Status::Stopped {
            return;
        }
        self.seq += 1;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let start = now - item.duration_ms / 1e3;
        let line = Line {
            seq: self.seq,
            index: item.index,
            start,
            runtime_ms: item.duration_ms,
            status: item.status,
            attempts: item.attempts,
            digest: digest(&item.input, &mut self.scratch),
        };
        let _ = writeln!(self.buf, "{line}");
    }

    /// Forgets the buffered lines: their records never reached stdout.
    pub fn discard(&mut self) {
        self.buf.clear();
    }

    /// Writes the buffered lines.
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

fn open_error(path: &Path, e: io::Error) -> CliError {
    CliError::usage(format!("cannot use job log {}: {e}", path.display()))
}

/// `--results DIR`: each item's full record as `DIR/<index>.json`. A
/// re-run item overwrites its file, so the directory holds every item
/// exactly once across resumed runs.
///
/// Files are opened relative to a descriptor of DIR, without following a
/// symbolic link (`O_NOFOLLOW`) and without blocking (`O_NONBLOCK`), and are
/// written only when they are a regular file with no other hard link: a
/// link, FIFO or device planted in DIR is refused, and what it points to is
/// never touched.
pub struct ResultsDir {
    dir: File,
    shown: PathBuf,
    buf: Vec<u8>,
}

impl ResultsDir {
    pub fn create(dir: &Path) -> Result<ResultsDir, CliError> {
        let fail = |e: io::Error| CliError::usage(format!("cannot create results directory {}: {e}", dir.display()));
        fs::create_dir_all(dir).map_err(fail)?;
        let handle =
            OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC).open(dir).map_err(fail)?;
        Ok(ResultsDir { dir: handle, shown: dir.to_path_buf(), buf: Vec::new() })
    }

    pub fn write(&mut self, item: &ItemResult) -> io::Result<()> {
        if item.status == Status::Stopped {
            return Ok(());
        }
        self.buf.clear();
        serde_json::to_writer_pretty(&mut self.buf, item)?;
        self.buf.push(b'\n');
        let name = format!("{}.json", item.index);
        let mut file = self
            .open(&name)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.shown.join(&name).display())))?;
        file.write_all(&self.buf)
    }

    /// Opens `name` in the directory for writing, refusing anything but a
    /// regular file of its own; truncated only once that is known.
    fn open(&self, name: &str) -> io::Result<File> {
        use std::os::fd::{AsRawFd, FromRawFd};
        let c_name = std::ffi::CString::new(name).map_err(io::Error::other)?;
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
        // SAFETY: the directory descriptor is open and `c_name` is NUL-terminated.
        let fd = unsafe { libc::openat(self.dir.as_raw_fd(), c_name.as_ptr(), flags, 0o666 as libc::c_uint) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ELOOP) => io::Error::other("is a symbolic link; refusing to write through it"),
                Some(libc::ENXIO) => {
                    io::Error::other("is a FIFO or socket, not a regular file; refusing to write to it")
                }
                _ => e,
            });
        }
        // SAFETY: the kernel returned a new descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        let meta = file.metadata()?;
        if !meta.file_type().is_file() {
            return Err(io::Error::other("is not a regular file; refusing to write to it"));
        }
        if meta.nlink() > 1 {
            return Err(io::Error::other("has other hard links; refusing to overwrite what they share"));
        }
        file.set_len(0)?;
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(index: u64, status: Status) -> ItemResult {
        serde_json::from_value(json!({
            "index": index, "input": index, "result": null, "status": status, "errors": [], "duration_ms": 1.0
        }))
        .unwrap()
    }

    fn read(path: &Path) -> (Recorded, Vec<String>, u64) {
        let log = runspace::joblog::read(BufReader::new(File::open(path).unwrap()), "log").unwrap();
        (log.recorded, log.warnings, log.good_len)
    }

    fn line(index: u64, value: Value, failed: bool) -> Line {
        let status = if failed { Status::Failed } else { Status::Completed };
        Line {
            seq: 1,
            index,
            start: 0.0,
            runtime_ms: 1.0,
            status,
            attempts: 1,
            digest: digest(&value, &mut Vec::new()),
        }
    }

    #[test]
    fn lines_round_trip_and_the_latest_line_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.tsv");
        let mut log = JobLog::create(&path).unwrap();
        log.record(&item(0, Status::Completed));
        log.record(&item(1, Status::Failed));
        log.record(&item(2, Status::Stopped));
        log.record(&item(1, Status::Completed));
        log.flush().unwrap();
        let (rec, warnings, _) = read(&path);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!((rec.finished, rec.failed, rec.last_seq), (2, 0, 3));
        let d = digest(&json!(1), &mut Vec::new());
        assert_eq!(rec.lookup(1, d), Some((true, false)));
        assert_eq!(rec.lookup(2, d), None);
    }

    #[test]
    fn a_truncated_last_line_is_cut_off_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.tsv");
        let d = digest(&json!(0), &mut Vec::new());
        let text = format!("{HEADER}\n1\t0\t1.0\t1.0\tCompleted\t1\t{d:016x}\ngarbage line\n2\t1\t1.0\t1.");
        fs::write(&path, &text).unwrap();
        let (rec, _, good) = read(&path);
        assert_eq!(rec.finished, 1);
        let (mut log, _) = JobLog::resume(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), good);
        log.record(&item(1, Status::Completed));
        log.flush().unwrap();
        let after = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = after.lines().collect();
        assert_eq!(lines.len(), 4, "{after}");
        assert!(lines[3].starts_with("2\t1\t") && after.ends_with('\n'), "{after}");
    }

    #[test]
    fn the_filter_skips_recorded_items_and_refuses_changed_inputs() {
        let mut rec = Recorded::default();
        rec.record(&line(0, json!(10), false));
        rec.record(&line(1, json!(11), true));
        let inputs = || vec![json!(10).into(), json!(11).into(), json!(12).into()].into_iter();
        let run = |mode, rec| {
            let mismatch = Arc::new(OnceLock::new());
            let got: Vec<u64> =
                ResumeFilter::new(inputs(), rec, mode, mismatch.clone(), Arc::default()).map(|(i, _)| i).collect();
            (got, mismatch.get().cloned())
        };
        assert_eq!(run(Resume::Finished, rec.clone()), (vec![2], None));
        assert_eq!(run(Resume::Failed, rec.clone()), (vec![1, 2], None));
        let mut changed = rec.clone();
        changed.record(&line(0, json!(99), false));
        let (got, mismatch) = run(Resume::Finished, changed);
        assert!(got.is_empty());
        assert!(mismatch.unwrap().contains("input 0 differs"));
    }
}
