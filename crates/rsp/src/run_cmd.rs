//! `rsp run`: run a script once per input on a runspace pool and print a
//! record per input as items finish.

use std::io::{self, BufWriter, IsTerminal, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use runspace::{Next, RunControl, RunspacePool};

use crate::inputs::InputArgs;
use crate::parse;
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
  cat items.jsonl | rsp run -e 'return _.size * factor' --input-format jsonl --var factor=2 --format values")]
pub struct RunArgs {
    #[command(flatten)]
    pub script: ScriptArgs,

    #[command(flatten)]
    pub input: InputArgs,

    /// Runspaces working at once (default: the number of CPUs, right for CPU-bound
    /// scripts; raise it for scripts that mostly wait, e.g. --throttle 200).
    #[arg(short = 't', long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub throttle: Option<u32>,

    /// Print results in input order (a bounded reorder buffer) instead of as they finish.
    #[arg(long)]
    pub ordered: bool,

    /// Stop each item after this long (e.g. 500ms, 2s); it is reported as TimedOut.
    #[arg(long, value_name = "DURATION", value_parser = parse::duration)]
    pub timeout: Option<Duration>,

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
}

/// Runs `rsp run`; returns the exit code.
pub fn run(args: RunArgs) -> Result<u8, CliError> {
    // Everything that can be wrong with the command is found before any item runs.
    let script = args.script.script()?;
    let session = args.script.session()?;
    let params = args.script.params()?;
    let inputs = args.input.open()?;
    let throttle = args.throttle.map_or_else(default_throttle, |n| n as usize);

    let stdout_tty = io::stdout().is_terminal();
    let stderr_tty = io::stderr().is_terminal();
    let format = args.format.unwrap_or(if stdout_tty { Format::Table } else { Format::Jsonl });
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
    let mut results = parallel.run(inputs.items);
    let interrupts = install_ctrl_c(results.control());

    let progress = progress_bar(&args, stderr_tty, inputs.total);
    let stdout = io::stdout();
    let mut sink = Sink {
        printer: Printer::new(format, BufWriter::with_capacity(1 << 16, stdout.lock()), colour_out),
        // Keep the bar from garbling a table written to the same terminal.
        bar: progress.clone().filter(|_| format == Format::Table && stdout_tty),
        control: results.control(),
        closed: false,
    };
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut last_flush = Instant::now();
    sink.write(|p| p.begin());
    loop {
        match results.next_timeout(FLUSH_EVERY) {
            Next::Item(item) => {
                tally.add(item.status);
                sink.write(|p| p.item(&item));
                if let Some(bar) = &progress {
                    bar.inc(1);
                    let failures = tally.total - tally.completed - tally.stopped;
                    if failures > 0 {
                        bar.set_message(format!("{failures} failed"));
                    }
                    if let Some(p) = item.progress.last() {
                        bar.set_prefix(p.activity.clone());
                    }
                }
                if last_flush.elapsed() >= FLUSH_EVERY {
                    last_flush = Instant::now();
                    sink.write(|p| p.flush());
                }
            }
            Next::Idle => sink.write(|p| p.flush()),
            Next::Done => break,
        }
    }
    sink.write(|p| p.end());
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }
    let interrupted = interrupts.load(Ordering::Relaxed) > 0;
    if show_summary {
        eprintln!("{}", tally.summary(started.elapsed(), interrupted, colour_err));
    }
    drop(results);
    pool.close();
    Ok(if interrupted {
        130
    } else if tally.all_completed() {
        0
    } else {
        1
    })
}

/// Where records go, and what to do when that fails.
struct Sink<W: Write> {
    printer: Printer<W>,
    bar: Option<ProgressBar>,
    control: RunControl,
    /// The reader went away (`| head`): nothing more is written.
    closed: bool,
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
            if e.kind() != io::ErrorKind::BrokenPipe {
                eprintln!("rsp: error writing output: {e}");
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
                    eprintln!("\nrsp: interrupted: finishing running items (Ctrl-C again to stop them)");
                    control.drain();
                }
                1 => {
                    eprintln!("\nrsp: stopping running items");
                    control.stop();
                }
                _ => std::process::exit(130),
            }
        });
    }
    count
}

fn progress_bar(args: &RunArgs, stderr_tty: bool, total: Option<u64>) -> Option<ProgressBar> {
    if args.no_progress || !(args.progress || stderr_tty) {
        return None;
    }
    let bar = match total {
        Some(n) if n > 1 => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr_with_hz(10)),
        Some(_) => return None,
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(10)),
    };
    let template = if total.is_some() {
        "{prefix} [{bar:30}] {human_pos}/{human_len} {per_sec} ETA {eta} {msg}"
    } else {
        "{prefix} {spinner} {human_pos} items {per_sec} {elapsed} {msg}"
    };
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> "),
    );
    let _ = io::stderr().flush();
    Some(bar)
}
