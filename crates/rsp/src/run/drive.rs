//! The loop that takes finished items from the engine and writes them out:
//! records to stdout, lines to the job log, files to `--results`, and the
//! progress display, flushing on a clock so slow runs still show output.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use runspace::{ItemResult, Next, Results, RunControl};

use super::command_mode::CommandMode;
use super::joblog::{self, JobLog, ResultsDir};
use super::output::Printer;
use crate::common::diag::diag;
use crate::common::progress::Progress;

/// How long output may sit in the buffer while slow items run.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Everything a finished item is written to.
pub struct Outputs<'a, W: Write> {
    pub sink: Sink<W>,
    pub command: Option<&'a CommandMode>,
    pub joblog: Option<JobLog>,
    pub results_dir: Option<ResultsDir>,
    pub progress: Progress,
    /// The first error writing a file (job log, results): the run stops.
    pub failure: Option<String>,
}

impl<W: Write> Outputs<'_, W> {
    /// Writes every item `results` yields, until the run is done.
    pub fn drain(&mut self, results: &mut Results) {
        let mut last_flush = Instant::now();
        self.sink.write(|p| p.begin());
        loop {
            match results.next_timeout(FLUSH_EVERY) {
                Next::Item(item) => {
                    let log_full = self.item(&item);
                    if log_full || last_flush.elapsed() >= FLUSH_EVERY {
                        last_flush = Instant::now();
                        self.flush();
                        self.progress.update(&results.progress());
                    }
                }
                Next::Idle => {
                    self.flush();
                    self.progress.update(&results.progress());
                }
                Next::Done => break,
            }
        }
        self.sink.write(|p| p.end());
        self.flush();
    }

    /// Writes one item; true when the job log's buffer asks for a flush.
    fn item(&mut self, item: &ItemResult) -> bool {
        let command = self.command;
        self.sink.write(|p| match command {
            Some(cmd) => cmd.print(p, item),
            None => p.item(item),
        });
        if let Some(dir) = &mut self.results_dir {
            if let Err(e) = dir.write(item) {
                self.stop_with(format!("cannot write --results: {e}"));
            }
        }
        match &mut self.joblog {
            Some(log) => {
                log.record(item);
                log.pending() >= joblog::FLUSH_BYTES
            }
            None => false,
        }
    }

    /// Flushes stdout, then the job log: a line in the log always means the
    /// item's record already left the process, so a crash between the two can
    /// repeat a record on resume but never lose one.
    fn flush(&mut self) {
        self.sink.write(|p| p.flush());
        if let Some(log) = &mut self.joblog {
            if let Err(e) = log.flush() {
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

/// Where records go, and what to do when that fails.
pub struct Sink<W: Write> {
    pub printer: Printer<W>,
    /// The progress bar, hidden around each write to the same terminal.
    pub bar: Option<ProgressBar>,
    pub control: RunControl,
    /// Writing failed: nothing more is written.
    pub closed: bool,
    /// It failed because the reader went away (`| head`): not an error.
    pub reader_gone: bool,
}

impl<W: Write> Sink<W> {
    /// A sink writing through `printer`; a failed write stops the run `control` steers.
    pub fn new(printer: Printer<W>, bar: Option<ProgressBar>, control: RunControl) -> Sink<W> {
        Sink { printer, bar, control, closed: false, reader_gone: false }
    }

    fn write(&mut self, f: impl FnOnce(&mut Printer<W>) -> io::Result<()>) {
        if self.closed {
            return;
        }
        let result = match &self.bar {
            Some(bar) => bar.suspend(|| f(&mut self.printer)),
            None => f(&mut self.printer),
        };
        if let Err(e) = result {
            self.closed = true;
            // A closed pipe is the reader saying "enough": stop quietly.
            self.reader_gone = e.kind() == io::ErrorKind::BrokenPipe;
            if !self.reader_gone {
                diag!("rsp: error writing output: {e}");
            }
            self.control.stop();
        }
    }
}
