//! The loop that takes finished items from the engine and writes them out:
//! records to stdout, lines to the job log, files to `--results`, and the
//! progress display.
//!
//! **One buffer, one flush order.** Records are formatted into a buffer of
//! our own, never into a writer that flushes by itself, and the job-log
//! lines of the same items wait beside them. A flush writes the records to
//! stdout and, right after, the job-log lines of exactly those records. So
//! the log never runs ahead of the output (a logged item's record has left
//! the process: resuming never loses a record), and the output runs ahead of
//! the log by at most one flush: a `kill -9` can repeat only the records of
//! the last flush, which hold no more items than were in flight. The buffer
//! is flushed when it holds 64 KB, when it holds as many records as the run
//! has items in flight (with a job log), every 100 ms, and when the engine
//! has nothing ready.

use std::io::{self, Write};
use std::time::Duration;

use indicatif::ProgressBar;
use runspace::{ItemResult, Next, Results, RunControl};

use super::command_mode::CommandMode;
use super::joblog::{JobLog, ResultsDir};
use super::output::Printer;
use crate::common::diag::diag;
use crate::common::progress::Progress;

/// How long output may sit in the buffer while slow items run.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Buffered output past which it is written.
const FLUSH_BYTES: usize = 64 * 1024;

/// Everything a finished item is written to.
pub struct Outputs<'a, W: Write> {
    pub sink: Sink<W>,
    pub command: Option<&'a CommandMode>,
    pub joblog: Option<JobLog>,
    pub results_dir: Option<ResultsDir>,
    pub progress: Progress,
    /// With a job log, the most records one flush may carry: the items the
    /// run has in flight, so a crash repeats no more than those on resume.
    pub max_unlogged: usize,
    /// The first error writing a file (job log, results): the run stops.
    pub failure: Option<String>,
}

impl<W: Write> Outputs<'_, W> {
    /// Writes every item `results` yields, until the run is done.
    pub fn drain(&mut self, results: &mut Results) {
        let mut clock = Clock::start();
        let mut buffered = 0;
        self.sink.format(|p| p.begin());
        loop {
            match results.next_ref_timeout(FLUSH_EVERY) {
                Next::Item(item) => {
                    self.item(item);
                    buffered += 1;
                    let full = self.sink.printer.out().len() >= FLUSH_BYTES
                        || (self.joblog.is_some() && buffered >= self.max_unlogged);
                    if full || clock.elapsed() >= FLUSH_EVERY {
                        self.flush();
                        buffered = 0;
                        clock = Clock::start();
                        self.progress.update(&results.progress());
                    }
                }
                Next::Idle => {
                    self.check_live();
                    self.flush();
                    buffered = 0;
                    clock = Clock::start();
                    self.progress.update(&results.progress());
                }
                Next::Done => break,
            }
        }
        self.sink.format(|p| p.end());
        self.flush();
    }

    /// Formats one item into the buffers.
    fn item(&mut self, item: &ItemResult) {
        self.check_live();
        let command = self.command;
        self.sink.format(|p| match command {
            Some(cmd) => cmd.print(p, item),
            None => p.item(item),
        });
        if let Some(dir) = &mut self.results_dir {
            if let Err(e) = dir.write(item) {
                self.stop_with(format!("cannot write --results: {e}"));
            }
        }
        if let Some(log) = &mut self.joblog {
            log.record(item);
        }
    }

    /// Stops the run when `--line-buffer` could not print a line (the reader went away).
    fn check_live(&mut self) {
        if !self.sink.closed && self.command.is_some_and(CommandMode::output_closed) {
            self.sink.fail(io::ErrorKind::BrokenPipe.into());
        }
    }

    /// Writes the buffered records to stdout, then the job-log lines of
    /// those records: see the module's docs.
    fn flush(&mut self) {
        self.sink.flush();
        if let Some(log) = &mut self.joblog {
            if self.sink.closed {
                // These records never reached stdout: logging them would lose them on resume.
                log.discard();
            } else if let Err(e) = log.flush() {
                self.stop_with(format!("cannot write the job log: {e}"));
            }
        }
    }

    /// Stops the run after an error writing a file, keeping the first message.
    fn stop_with(&mut self, message: String) {
        if self.failure.is_none() {
            self.failure = Some(message);
            self.sink.control.stop();
        }
    }
}

/// A monotonic clock that is cheap to read once per item: the kernel's
/// coarse clock (a few ms of resolution, plenty for a 100 ms flush period)
/// is read from memory the kernel maps into the process, without the
/// cycle counter the precise clock needs.
#[derive(Clone, Copy)]
struct Clock(Duration);

impl Clock {
    fn now() -> Duration {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec for the duration of the
        // call; CLOCK_MONOTONIC_COARSE exists on every Linux since 2.6.32 and
        // clock_gettime only writes through the pointer it is given.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
        if rc != 0 {
            return Duration::ZERO;
        }
        Duration::new(ts.tv_sec.max(0) as u64, ts.tv_nsec.clamp(0, 999_999_999) as u32)
    }

    fn start() -> Clock {
        Clock(Clock::now())
    }

    fn elapsed(self) -> Duration {
        Clock::now().saturating_sub(self.0)
    }
}

/// Where records go, and what to do when that fails.
pub struct Sink<W: Write> {
    /// Formats records into its buffer (a `Vec`, flushed only by [`Sink::flush`]).
    pub printer: Printer<Vec<u8>>,
    /// Standard output.
    pub out: W,
    /// The progress bar, hidden around each write to the same terminal.
    pub bar: Option<ProgressBar>,
    pub control: RunControl,
    /// Writing failed: nothing more is written.
    pub closed: bool,
    /// It failed because the reader went away (`| head`): not an error.
    pub reader_gone: bool,
}

impl<W: Write> Sink<W> {
    /// A sink writing what `printer` formats to `out`; a failed write stops
    /// the run `control` steers.
    pub fn new(printer: Printer<Vec<u8>>, out: W, bar: Option<ProgressBar>, control: RunControl) -> Sink<W> {
        Sink { printer, out, bar, control, closed: false, reader_gone: false }
    }

    /// Formats into the buffer (command mode's values may also write to stderr).
    fn format(&mut self, f: impl FnOnce(&mut Printer<Vec<u8>>) -> io::Result<()>) {
        if self.closed {
            return;
        }
        if let Err(e) = f(&mut self.printer) {
            self.fail(e);
        }
    }

    /// Writes the buffer to stdout.
    fn flush(&mut self) {
        if self.closed {
            self.printer.out().clear();
            return;
        }
        if self.printer.out().is_empty() {
            // Nothing to write, so no EPIPE to tell us: `rsp run … | head -1`
            // whose other items wait for an hour would run that hour with
            // nobody reading. Ask the pipe instead.
            if stdout_reader_gone() {
                self.fail(io::ErrorKind::BrokenPipe.into());
            }
            return;
        }
        let buffer = self.printer.out();
        let out = &mut self.out;
        let mut write = || out.write_all(buffer).and_then(|()| out.flush());
        let result = match &self.bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        };
        self.printer.out().clear();
        if let Err(e) = result {
            self.fail(e);
        }
    }

    fn fail(&mut self, e: io::Error) {
        self.closed = true;
        // A closed pipe is the reader saying "enough": stop quietly.
        self.reader_gone = e.kind() == io::ErrorKind::BrokenPipe;
        if !self.reader_gone {
            diag!("rsp: error writing output: {e}");
        }
        self.control.stop();
    }
}

/// Whether standard output is a pipe whose reader has closed it. Linux
/// reports `POLLERR` on the write end of a pipe with no reader left; a
/// terminal, a file or a live pipe never does.
/// Widens stdout's pipe to 1 MiB when stdout is a pipe (not a file or a
/// terminal). At the default 64 KiB every buffer rsp writes fills the pipe,
/// so writer and reader take turns once per 64 KiB: at 200 MB of records a
/// second that is thousands of switches a second between two processes on
/// the same CPUs. 1 MiB is what Linux lets any user set
/// (`/proc/sys/fs/pipe-max-size`); a failure leaves the pipe as it was.
pub(super) fn widen_stdout_pipe() {
    // SAFETY: fstat writes into the zeroed `stat` we own; F_SETPIPE_SZ
    // takes an int and changes only the pipe's capacity.
    unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        if libc::fstat(libc::STDOUT_FILENO, &mut stat) == 0 && stat.st_mode & libc::S_IFMT == libc::S_IFIFO {
            libc::fcntl(libc::STDOUT_FILENO, libc::F_SETPIPE_SZ, 1 << 20);
        }
    }
}

fn stdout_reader_gone() -> bool {
    let mut out = libc::pollfd { fd: libc::STDOUT_FILENO, events: 0, revents: 0 };
    // SAFETY: `out` is one valid pollfd that poll may write `revents` of;
    // the timeout 0 makes it return at once.
    let ready = unsafe { libc::poll(&mut out, 1, 0) };
    ready == 1 && out.revents & libc::POLLERR != 0
}
