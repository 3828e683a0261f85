//! The options of `rsp run`.

use std::path::PathBuf;
use std::time::Duration;

use runspace::Halt;

use super::command_mode::CommandArgs;
use super::inputs::InputArgs;
use super::output::Format;
use super::script::ScriptArgs;
use crate::common::parse;

/// Options of `rsp run`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Script conventions: the input is `_` (and `...`); return values and emit(v) are the \
output; write_error/write_warning/write_verbose/write_debug/write_information/print and write_progress \
fill the other streams; error(...) fails the item.

Examples:
  rsp run -e 'return _ * _' --range 1..100 --throttle 10
  rsp run job.luau --input hosts.txt --timeout 2s --allow net
  cat items.jsonl | rsp run -e 'return _.size * factor' \\
      --input-format jsonl --var factor=2 --format values
  rsp run job.luau --input big.txt --batch-size 100 \\
      --max-concurrent-batches 4 --retries 2 --joblog run.log
  # after an interruption: skip what the job log has
  rsp run job.luau --input big.txt --joblog run.log --resume
  rsp run job.luau --input big.txt --halt soon,fail=5% --results out/
  # a command per input, no script (GNU parallel style)
  rsp run --cmd 'gzip -k {}' ::: a.txt b.txt
  ls *.txt | rsp run -j 4 --cmd 'convert {} {.}.png'
  # lines as they come, each prefixed with its input
  rsp run --line-buffer --tag --cmd 'ping -c 3 {}' ::: ::1 127.0.0.1

The full reference: rsp man run")]
pub struct RunArgs {
    #[command(flatten)]
    pub script: ScriptArgs,

    #[command(flatten)]
    pub input: InputArgs,

    #[command(flatten)]
    pub command: CommandArgs,

    /// Items in flight at once (default: the number of CPUs, right for CPU-bound
    /// scripts). Items that wait in sleep, http, net or exec yield their runspace
    /// to the others, so raise it for scripts that mostly wait, e.g. --throttle 10000.
    #[arg(short = 't', visible_short_alias = 'j', long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub throttle: Option<u32>,

    /// Runspaces, each on its own OS thread, that the items in flight share
    /// (default: the number of CPUs, never more than --throttle).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub threads: Option<u32>,

    /// Print results in input order (a bounded reorder buffer) instead of as they finish.
    #[arg(short = 'k', long)]
    pub ordered: bool,

    /// Stop each item after this long (500ms, 2s; a bare number is seconds); it is reported as TimedOut.
    #[arg(long, value_name = "DURATION", value_parser = parse::timeout)]
    pub timeout: Option<Duration>,

    /// The most output and stream records one item may produce (default 16MB, counted as
    /// JSON); past it the item fails and the run goes on.
    #[arg(long, value_name = "SIZE", value_parser = parse::size)]
    pub max_output: Option<usize>,

    /// Output format (default: table on a terminal, jsonl otherwise).
    #[arg(short = 'f', long, value_enum, value_name = "FORMAT")]
    pub format: Option<Format>,

    /// Do not show print, warning and verbose records on stderr (table and values formats
    /// show them, each line prefixed with its item).
    #[arg(long)]
    pub quiet_streams: bool,

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

    /// Run on the `rsp worker`s of this PostgreSQL store (postgres://user@host:port/db) instead of here;
    /// records stream back as workers record them (see rsp worker --help).
    #[arg(long, value_name = "URL", help_heading = "Cluster")]
    pub cluster: Option<String>,

    /// With --cluster: how many items a worker claims at once [default: a 64th of the run, 1 to 1000].
    #[arg(long, value_name = "N", requires = "cluster", help_heading = "Cluster",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub chunk_size: Option<u32>,
}

/// Options for long runs over huge inputs: batches, retries, halt rules, job log and resume.
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Large runs: batches, retries, halt, job log and resume")]
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
