//! `rsp run`: run a script once per input on a runspace pool and print a
//! record per input as items finish.

use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use runspace::{Halt, HaltRule, Next, RunControl, RunspacePool};

use crate::command_mode::{CommandArgs, CommandMode};
use crate::diag::diag;
use crate::inputs::InputArgs;
use crate::joblog::{self, Feed, JobLog, ResultsDir, Resume, ResumeFilter};
use crate::parse;
use crate::progress::Progress;
use crate::run_output::{Format, Printer, Tally};
use crate::script_args::ScriptArgs;
use crate::CliError;

/// How long output may sit in the buffer while slow items run.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Options of `rsp run`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Script conventions: the input is `_` (and `...`); return values and emit(v) are the \
output; write_error/write_warning/write_verbose/write_debug/write_information/print and write_progress \
fill the other streams; error(...) fails the item.

Examples:
  rsp run -e 'return _ * _' --range 1..100 --throttle 10
  rsp run job.luau --input hosts.txt --timeout 2s --allow net
  cat items.jsonl | rsp run -e 'return _.size * factor' --input-format jsonl --var factor=2 --format values
  rsp run job.luau --input big.txt --batch-size 100 --max-concurrent-batches 4 --retries 2 --joblog run.log
  rsp run job.luau --input big.txt --joblog run.log --resume        # after an interruption
  rsp run job.luau --input big.txt --halt soon,fail=5% --results out/
  rsp run --cmd 'gzip -k {}' ::: a.txt b.txt                         # a command per input, no script
  ls *.txt | rsp run -j 4 --cmd 'convert {} {.}.png'")]
pub struct RunArgs {
    #[command(flatten)]
    pub script: ScriptArgs,

    #[command(flatten)]
    pub input: InputArgs,

    #[command(flatten)]
    pub command: CommandArgs,

    /// Runspaces working at once (default: the number of CPUs, right for CPU-bound
    /// scripts; raise it for scripts that mostly wait, e.g. --throttle 200).
    #[arg(short = 't', visible_short_alias = 'j', long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub throttle: Option<u32>,

    /// Print results in input order (a bounded reorder buffer) instead of as they finish.
    #[arg(short = 'k', long)]
    pub ordered: bool,

    /// Stop each item after this long (e.g. 500ms, 2s); it is reported as TimedOut.
    #[arg(long, value_name = "DURATION", value_parser = parse::timeout)]
    pub timeout: Option<Duration>,

    /// The most output and stream records one item may produce (default 16MB, counted as
    /// JSON); past it the item fails and the run goes on.
    #[arg(long, value_name = "SIZE", value_parser = parse::size)]
    pub max_output: Option<usize>,

    /// Output format (default: table on a terminal, jsonl otherwise).
    #[arg(short = 'f', long, value_enum, value_name = "FORMAT")]
    pub format: Option<Format>,

    /// Print the summary on stderr even when it is not a terminal.
    #[arg(long, overrides_with = "no_summary")]
    pub summary: bool,

    /// Never print the summary.
    #[arg(long)]
    pub no_summary: bool,

    /// Show a progress bar on stderr even when it is not a terminal.
    #[arg(long, overrides_with = "no_progress")]
    pub progress: bool,

    /// Never show a progress bar.
    #[arg(long)]
    pub no_progress: bool,

    #[command(flatten)]
    pub large: LargeRunArgs,
}

/// Options for long runs over huge inputs: batches, retries, halt rules, job log and resume.
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Large runs (see docs/batch.md)")]
pub struct LargeRunArgs {
    /// Batch mode: cut the input into batches of N items; each batch runs in order on one
    /// runspace, and records carry `batch` and `batch_index`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: Option<u32>,

    /// Batches running at once (the throttle of batch mode; default 4).
    #[arg(long, value_name = "N", requires = "batch_size", conflicts_with = "throttle",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_concurrent_batches: Option<u32>,

    /// Re-run a Failed or TimedOut item up to N more times; records then carry `attempts`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub retries: Option<u32>,

    /// Wait before the first retry; it doubles for each further one (at most 1m).
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = parse::duration)]
    pub retry_delay: Duration,

    /// Stop early: now|soon[,fail=N|fail=P%|success=N]. `soon` lets running items finish,
    /// `now` stops them. A failure is a Failed or TimedOut item (after retries).
    #[arg(long, value_name = "RULE", value_parser = clap::value_parser!(Halt))]
    pub halt: Option<Halt>,

    /// Append one line per finished item to FILE (TSV: Seq, Index, Starttime, JobRuntime,
    /// Status, Attempts, Digest); started afresh unless --resume or --resume-failed.
    #[arg(long, value_name = "FILE")]
    pub joblog: Option<PathBuf>,

    /// Skip the inputs the job log records as finished (same inputs, same order).
    #[arg(long, requires = "joblog")]
    pub resume: bool,

    /// Like --resume, but run again the items the job log records as Failed or TimedOut.
    #[arg(long, requires = "joblog", conflicts_with = "resume")]
    pub resume_failed: bool,

    /// Also write each item's full record to DIR/<index>.json.
    #[arg(long, value_name = "DIR")]
    pub results: Option<PathBuf>,
}

/// Runs `rsp run`; returns the exit code.
pub fn run(args: RunArgs) -> Result<u8, CliError> {
    // Everything that can be wrong with the command is found before any item runs.
    // --- command mode (--cmd): its own script, session and inputs; see command_mode.
    let command = CommandMode::from_args(&args.command, &args.script)?;
    let (script, mut session, params, inputs) = match &command {
        Some(cmd) => (cmd.script()?, cmd.session(), Vec::new(), cmd.inputs(&args.input)?),
        None => (args.script.script()?, args.script.session()?, args.script.params()?, args.input.open()?),
    };
    if let Some(cmd) = command.as_ref().filter(|c| c.dry_run) {
        cmd.dry_run(inputs, &mut BufWriter::new(io::stdout().lock()))
            .map_err(|e| CliError { message: format!("cannot write the commands: {e}"), code: 1 })?;
        return Ok(0);
    }
    // --- end command mode
    if let Some(timeout) = args.timeout {
        // Also the bound on loading --module files.
        session = session.timeout(timeout);
    }
    if let Some(bytes) = args.max_output {
        session = session.max_output(bytes);
    }
    let throttle = match args.large.batch_size {
        Some(_) => args.large.max_concurrent_batches.or(args.throttle).map_or(4, |n| n as usize),
        None => args.throttle.map_or_else(default_throttle, |n| n as usize),
    };
    let resume = match (args.large.resume, args.large.resume_failed) {
        (_, true) => Some(Resume::Failed),
        (true, false) => Some(Resume::Finished),
        _ => None,
    };
    let mut joblog = None;
    let mut skip_estimate = 0;
    let mismatch = Arc::new(OnceLock::new());
    let skipped = Arc::new(AtomicU64::new(0));
    let items = match (&args.large.joblog, resume) {
        (Some(path), Some(mode)) => {
            let (log, recorded) = JobLog::resume(path)?;
            joblog = Some(log);
            skip_estimate = match mode {
                Resume::Finished => recorded.finished,
                Resume::Failed => recorded.finished - recorded.failed,
            };
            Feed::Resume(ResumeFilter::new(inputs.items, recorded, mode, mismatch.clone(), skipped.clone()))
        }
        (Some(path), None) => {
            joblog = Some(JobLog::create(path)?);
            Feed::Plain(inputs.items.enumerate())
        }
        (None, _) => Feed::Plain(inputs.items.enumerate()),
    };
    let mut results_dir = args.large.results.as_deref().map(ResultsDir::create).transpose()?;

    let stdout_tty = io::stdout().is_terminal();
    let stderr_tty = io::stderr().is_terminal();
    let format = args.format.unwrap_or(match (&command, stdout_tty) {
        // Command mode prints what the commands print, like GNU parallel.
        (Some(_), _) => Format::Values,
        (None, true) => Format::Table,
        (None, false) => Format::Jsonl,
    });
    let colour_out = stdout_tty && console::colors_enabled();
    let colour_err = stderr_tty && console::colors_enabled_stderr();
    let show_summary = !args.no_summary && (args.summary || stderr_tty);

    let pool = RunspacePool::builder().min(1).max(throttle).session(session).open().map_err(CliError::script)?;
    let mut parallel = pool.parallel(&script).ordered(args.ordered);
    for (name, value) in params {
        parallel = parallel.param(&name, value).map_err(|e| CliError::usage(format!("--param: {e}")))?;
    }
    if let Some(timeout) = args.timeout {
        parallel = parallel.timeout(timeout);
    }
    if let Some(size) = args.large.batch_size {
        parallel = parallel.batch_size(size as usize);
    }
    if let Some(retries) = args.large.retries {
        parallel = parallel.retries(retries, args.large.retry_delay);
    }
    if let Some(halt) = args.large.halt {
        parallel = parallel.halt(halt);
    }
    let total = inputs.total.map(|t| t.saturating_sub(skip_estimate));
    if let Some(total) = total {
        parallel = parallel.total(total);
    }
    let mut results = parallel.run_indexed(items);
    let interrupts = install_ctrl_c(results.control());

    let mut progress = match total {
        _ if args.no_progress || !(args.progress || stderr_tty) => Progress::Hidden,
        Some(n) if n <= 1 => Progress::Hidden,
        _ => Progress::new(stderr_tty, total),
    };
    let stdout = io::stdout();
    let mut sink = Sink {
        printer: Printer::new(format, BufWriter::with_capacity(1 << 16, stdout.lock()), colour_out),
        // Keep the bar from garbling a table written to the same terminal.
        bar: progress.bar().cloned().filter(|_| format == Format::Table && stdout_tty),
        control: results.control(),
        closed: false,
        reader_gone: false,
    };
    let started = Instant::now();
    let mut last_flush = Instant::now();
    let mut failure: Option<String> = None;
    sink.write(|p| p.begin());
    loop {
        match results.next_timeout(FLUSH_EVERY) {
            Next::Item(item) => {
                sink.write(|p| match &command {
                    Some(cmd) => cmd.print(p, &item),
                    None => p.item(&item),
                });
                if let Some(dir) = &mut results_dir {
                    if let Err(e) = dir.write(&item) {
                        stop_with(&mut failure, &sink.control, format!("cannot write --results: {e}"));
                    }
                }
                let log_full = match &mut joblog {
                    Some(log) => {
                        log.record(&item);
                        log.pending() >= joblog::FLUSH_BYTES
                    }
                    None => false,
                };
                if log_full || last_flush.elapsed() >= FLUSH_EVERY {
                    last_flush = Instant::now();
                    flush(&mut sink, &mut joblog, &mut failure);
                    progress.update(&results.progress());
                }
            }
            Next::Idle => {
                flush(&mut sink, &mut joblog, &mut failure);
                progress.update(&results.progress());
            }
            Next::Done => break,
        }
    }
    sink.write(|p| p.end());
    flush(&mut sink, &mut joblog, &mut failure);
    let snapshot = results.progress();
    progress.update(&snapshot);
    progress.finish();
    let interrupted = interrupts.load(Ordering::Relaxed) > 0;
    let mut tally = Tally::from_progress(&snapshot);
    tally.batch_size = args.large.batch_size.map(|n| n as usize);
    tally.skipped = skipped.load(Ordering::Relaxed);
    tally.inputs = inputs.total.unwrap_or(snapshot.read + tally.skipped);
    if show_summary {
        diag!("{}", tally.summary(started.elapsed(), interrupted, colour_err));
    }
    let halted = results.halted();
    if let Some(halt) = halted {
        diag!(
            "rsp: halted by --halt {halt} after {} failures and {} successes",
            snapshot.failures(),
            snapshot.completed
        );
    }
    drop(results);
    pool.close();
    if let Some(message) = mismatch.get() {
        return Err(CliError::usage(message.clone()));
    }
    if let Some(message) = failure {
        return Err(CliError { message, code: 1 });
    }
    // A reader that went away (`| head -1`) asked for no more: the items that
    // stopped because of it are not failures.
    let reader_had_enough = sink.reader_gone && tally.completed + tally.stopped == tally.total;
    Ok(if interrupted {
        130
    } else if matches!(halted, Some(h) if matches!(h.rule, HaltRule::Successes(_)))
        || tally.all_completed()
        || reader_had_enough
    {
        0
    } else {
        1
    })
}

/// Flushes stdout, then the job log: a line in the log always means the
/// item's record already left the process, so a crash between the two can
/// repeat a record on resume but never lose one.
fn flush<W: Write>(sink: &mut Sink<W>, joblog: &mut Option<JobLog>, failure: &mut Option<String>) {
    sink.write(|p| p.flush());
    if let Some(log) = joblog {
        if let Err(e) = log.flush() {
            stop_with(failure, &sink.control, format!("cannot write the job log: {e}"));
        }
    }
}

/// Stops the run after an error writing a file, keeping the first message.
fn stop_with(failure: &mut Option<String>, control: &RunControl, message: String) {
    if failure.is_none() {
        *failure = Some(message);
        control.stop();
    }
}

/// Where records go, and what to do when that fails.
struct Sink<W: Write> {
    printer: Printer<W>,
    bar: Option<ProgressBar>,
    control: RunControl,
    /// Writing failed: nothing more is written.
    closed: bool,
    /// It failed because the reader went away (`| head`): not an error.
    reader_gone: bool,
}

impl<W: Write> Sink<W> {
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

fn default_throttle() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// First Ctrl-C: take no new items, let running ones finish. Second: stop
/// them. Third: leave at once.
fn install_ctrl_c(control: RunControl) -> Arc<AtomicUsize> {
    static STATE: OnceLock<(Arc<AtomicUsize>, RunControl)> = OnceLock::new();
    let count = Arc::new(AtomicUsize::new(0));
    if STATE.set((count.clone(), control)).is_ok() {
        let _ = ctrlc::set_handler(|| {
            let Some((count, control)) = STATE.get() else { return };
            match count.fetch_add(1, Ordering::SeqCst) {
                0 => {
                    diag!("\nrsp: interrupted: finishing running items (Ctrl-C again to stop them)");
                    control.drain();
                }
                1 => {
                    diag!("\nrsp: stopping running items");
                    control.stop();
                }
                _ => std::process::exit(130),
            }
        });
    }
    count
}
