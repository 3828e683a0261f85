//! `rsp run`: run a script (or a command, `--cmd`) once per input on a
//! runspace pool and print a record per input as items finish.
//!
//! [`run`] reads as the steps of a run: what to run and on what
//! ([`Work`]), what the job log already has ([`joblog::Journal`]), how to
//! show it ([`View`]), the engine's run, the loop writing results out
//! ([`drive`]), and the exit code ([`exit_code`]).

mod args;
mod cluster;
mod columns;
pub mod command_mode;
mod drive;
pub mod inputs;
mod interrupt;
pub mod joblog;
pub mod output;
mod record;
pub mod script;
mod summary;

use std::io::{self, BufWriter, IsTerminal};
use std::sync::atomic::Ordering;
use std::time::Instant;

use runspace::{HaltRule, Parallel, RunspacePool, Script, SessionState};
use serde_json::Value;

pub use args::RunArgs;
use command_mode::CommandMode;
use drive::{Outputs, Sink};
use inputs::Inputs;
use joblog::{Journal, ResultsDir};
use output::{Format, Printer};
use summary::Tally;

use crate::common::diag::diag;
use crate::common::human::count_of;
use crate::common::progress::Progress;
use crate::common::{colour, exit, CliError};

/// How many runspaces to open, when not the engine's default (the CPUs).
/// `{%}` is a runspace's slot, claimed once by its first command, so a
/// command mode that uses it needs one runspace per item in flight: two
/// commands sharing a runspace would share a slot, which GNU parallel
/// promises never happens.
fn runspaces(args: &RunArgs, command: Option<&CommandMode>, throttle: usize) -> Result<Option<usize>, CliError> {
    let threads = args.threads.map(|t| t as usize);
    if !command.is_some_and(CommandMode::uses_slot) {
        return Ok(threads);
    }
    match threads {
        Some(t) if t != throttle => Err(CliError::usage(format!(
            "--cmd with {{%}}: each slot is a runspace, so --threads must equal -j ({throttle}), not {t}"
        ))),
        _ if throttle > MAX_SLOTS => {
            Err(CliError::usage(format!("--cmd with {{%}}: at most {MAX_SLOTS} slots (-j {throttle} asks for more)")))
        }
        _ => Ok(Some(throttle)),
    }
}

/// The most runspaces `--threads` allows, and so the most `{%}` slots.
const MAX_SLOTS: usize = 4096;

/// Runs `rsp run`; returns the exit code.
pub fn run(args: RunArgs) -> Result<u8, CliError> {
    if let Some(url) = &args.cluster {
        return cluster::run(&args, url);
    }
    // Everything that can be wrong with the command is found before any item runs.
    let work = Work::from_args(&args)?;
    if let Some(cmd) = work.command.as_ref().filter(|c| c.dry_run) {
        cmd.dry_run(work.inputs, throttle(&args), &mut BufWriter::new(io::stdout().lock()))
            .map_err(|e| CliError::failure(format!("cannot write the commands: {e}")))?;
        return Ok(exit::OK);
    }
    let journal = Journal::open(&args.large, work.inputs.items)?;
    let results_dir = args.large.results.as_deref().map(ResultsDir::create).transpose()?;
    let view = View::decide(&args, work.command.is_some());
    if let Some(cmd) = &work.command {
        cmd.check_view(view.format, args.ordered)?;
    }
    let total = work.inputs.total.map(|t| t.saturating_sub(journal.skip_estimate));

    let throttle = throttle(&args);
    if throttle > 256 {
        // Thousands of waiting items may each hold a socket or a pipe.
        let _ = runspace_scan::limits::raise_nofile_limit();
    }
    let mut pool = RunspacePool::builder().min(1).throttle(throttle).session(work.session);
    if let Some(threads) = runspaces(&args, work.command.as_ref(), throttle)? {
        pool = pool.threads(threads);
    }
    let pool = pool.open().map_err(CliError::script)?;
    let parallel = configure(pool.parallel(&work.script), &args, work.params, total)?;
    let mut results = parallel.run_indexed(journal.feed);
    let interrupts = interrupt::install_ctrl_c(results.control());

    drive::widen_stdout_pipe();
    let mut outputs = Outputs {
        // Not locked for the whole run: `--line-buffer` prints from the runspaces' threads.
        sink: Sink::new(printer(&args, &view), io::stdout(), None, results.control()),
        command: work.command.as_ref(),
        joblog: journal.log,
        results_dir,
        progress: Progress::Hidden,
        max_unlogged: in_flight(&args),
        failure: None,
    };
    outputs.progress = match total {
        _ if !view.progress => Progress::Hidden,
        Some(n) if n <= 1 => Progress::Hidden,
        _ => Progress::new(view.stderr_tty, total),
    };
    // Keep the bar from garbling a table written to the same terminal.
    outputs.sink.bar = outputs.progress.bar().cloned().filter(|_| view.format == Format::Table && view.stdout_tty);
    let started = Instant::now();
    outputs.drain(&mut results);

    let snapshot = results.progress();
    outputs.progress.update(&snapshot);
    outputs.progress.finish();
    let interrupted = interrupts.load(Ordering::Relaxed) > 0;
    let mut tally = Tally::from_progress(&snapshot);
    tally.batch_size = args.large.batch_size.map(|n| n as usize);
    tally.skipped = journal.skipped.load(Ordering::Relaxed);
    tally.inputs = work.inputs.total.unwrap_or(snapshot.read + tally.skipped);
    if view.summary {
        diag!("{}", tally.summary(started.elapsed(), interrupted, view.colour_err));
    }
    if tally.inputs == 0 && !interrupted {
        warn_no_items(&args, work.command.as_ref());
    }
    let halted = results.halted();
    if let Some(halt) = halted {
        diag!(
            "rsp: halted by --halt {halt} after {} and {}",
            count_of(snapshot.failures(), "failure", "failures"),
            count_of(snapshot.completed, "success", "successes")
        );
    }
    drop(results);
    pool.close();
    if let Some(message) = journal.mismatch.get() {
        return Err(CliError::usage(message.clone()));
    }
    if let Some(message) = outputs.failure {
        return Err(CliError::failure(message));
    }
    let successes_halt = matches!(halted, Some(h) if matches!(h.rule, HaltRule::Successes(_)));
    Ok(exit_code(&tally, interrupted, successes_halt, outputs.sink.reader_gone))
}

/// `rsp run report.luau` under cron reads an empty stdin: say so rather
/// than silently do nothing.
fn warn_no_items(args: &RunArgs, command: Option<&CommandMode>) {
    let from = match command {
        Some(cmd) if cmd.has_sources() => "the argument lists".to_string(),
        _ => args.input.source_name(),
    };
    let hint = if command.is_none() { " (--once runs the script once without input)" } else { "" };
    diag!("rsp: warning: no items were read from {from}, so nothing ran{hint}");
}

/// What runs, in what session, over which inputs: a script (`-e`, a file)
/// or a command template (`--cmd`, see [`command_mode`]).
struct Work {
    script: Script,
    session: SessionState,
    params: Vec<(String, Value)>,
    inputs: Inputs,
    command: Option<CommandMode>,
}

impl Work {
    fn from_args(args: &RunArgs) -> Result<Work, CliError> {
        let command = CommandMode::from_args(&args.command, &args.script)?;
        let (script, mut session, params, inputs) = match &command {
            Some(cmd) => (cmd.script()?, cmd.session()?, Vec::new(), cmd.inputs(&args.input)?),
            None => (args.script.script()?, args.script.session()?, args.script.params()?, args.input.open()?),
        };
        if let Some(timeout) = args.timeout {
            // Also the bound on loading --module files.
            session = session.timeout(timeout);
        }
        if let Some(bytes) = args.max_output {
            session = session.max_output(bytes);
        }
        Ok(Work { script, session, params, inputs, command })
    }
}

/// How results are shown: the format, colours, summary and progress.
struct View {
    format: Format,
    stdout_tty: bool,
    stderr_tty: bool,
    colour_out: bool,
    colour_err: bool,
    summary: bool,
    progress: bool,
}

impl View {
    fn decide(args: &RunArgs, command_mode: bool) -> View {
        let stdout_tty = io::stdout().is_terminal();
        let stderr_tty = io::stderr().is_terminal();
        let format = args.format.unwrap_or(match (command_mode, stdout_tty) {
            // Command mode prints what the commands print, like GNU parallel.
            (true, _) => Format::Values,
            (false, true) => Format::Table,
            (false, false) => Format::Jsonl,
        });
        View {
            format,
            stdout_tty,
            stderr_tty,
            colour_out: colour::stdout(),
            colour_err: colour::stderr(),
            summary: !args.no_summary && (args.summary || stderr_tty),
            // Lines printed as they come would break a bar drawn meanwhile.
            progress: !args.no_progress && (args.progress || stderr_tty) && !args.command.line_buffer,
        }
    }
}

/// The printer of the chosen format, into a buffer of its own (see [`drive`]).
fn printer(args: &RunArgs, view: &View) -> Printer<Vec<u8>> {
    let mut printer = Printer::new(view.format, Vec::with_capacity(1 << 17), view.colour_out);
    printer.show_streams = !args.quiet_streams;
    printer
}

/// Items (or batches) in flight: `--throttle`, or `--max-concurrent-batches`
/// in batch mode (default 4 batches).
fn throttle(args: &RunArgs) -> usize {
    match args.large.batch_size {
        Some(_) => args.large.max_concurrent_batches.or(args.throttle).map_or(4, |n| n as usize),
        None => args.throttle.map_or_else(default_throttle, |n| n as usize),
    }
}

/// The most items the run has in flight: each runspace holds a batch, or a
/// chunk of at most 256 items.
fn in_flight(args: &RunArgs) -> usize {
    throttle(args).saturating_mul(args.large.batch_size.map_or(256, |n| n as usize)).max(1)
}

fn default_throttle() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Applies the run's options to the engine's parallel run.
fn configure(
    mut parallel: Parallel,
    args: &RunArgs,
    params: Vec<(String, Value)>,
    total: Option<u64>,
) -> Result<Parallel, CliError> {
    parallel = parallel.ordered(args.ordered);
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
    if let Some(total) = total {
        parallel = parallel.total(total);
    }
    Ok(parallel)
}

/// 130 when interrupted; 0 when every item completed, a `success=N` halt
/// was reached, or the reader went away (`| head -1`: the items stopped
/// because of it are not failures); 1 otherwise.
fn exit_code(tally: &Tally, interrupted: bool, successes_halt: bool, reader_gone: bool) -> u8 {
    let reader_had_enough = reader_gone && tally.completed + tally.stopped == tally.total;
    if interrupted {
        exit::INTERRUPTED
    } else if successes_halt || tally.all_completed() || reader_had_enough {
        exit::OK
    } else {
        exit::SOME_FAILED
    }
}
