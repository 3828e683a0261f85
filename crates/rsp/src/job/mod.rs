//! `rsp job`: the client of `rsp serve` — Start-, Get-, Receive-, Wait-,
//! Stop- and Remove-Job for the command line.

pub(crate) mod context;
mod records;
mod show;
mod start;
mod verbs;

use crate::common::diag::diag;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{exit, parse, CliError};
use runspace_server::limits;
use runspace_server::{Client, StatePaths};

/// Options every `rsp job` command takes.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// The server's state directory (token, address) [default: $XDG_DATA_HOME/rsp or ~/.local/share/rsp].
    #[arg(long, env = "RSP_STATE_DIR", value_name = "DIR", global = true)]
    pub state_dir: Option<PathBuf>,

    /// Output: a table on a terminal, JSON otherwise (JSON Lines for output records).
    #[arg(long, value_enum, value_name = "FORMAT", global = true)]
    pub format: Option<Format>,
}

/// How results are printed.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// JSON.
    Json,
    /// One JSON value per line (the default for output records when stdout is not a terminal).
    Jsonl,
}

impl Common {
    fn format(&self) -> Format {
        self.format.unwrap_or(if std::io::stdout().is_terminal() { Format::Table } else { Format::Json })
    }

    /// The format of output records: JSON Lines when not on a terminal, like `rsp run`.
    fn records_format(&self) -> Format {
        self.format.unwrap_or(if std::io::stdout().is_terminal() { Format::Table } else { Format::Jsonl })
    }
}

/// Background jobs held by `rsp serve` (started on demand by `rsp job start`).
#[derive(clap::Subcommand, Debug)]
pub enum JobCommand {
    /// Start a job: one run of a script, or a parallel run over --range/--input (Start-Job).
    Start(Box<start::StartArgs>),
    /// List jobs, oldest first (Get-Job).
    List(ListArgs),
    /// Show one job: state, times, progress, streams (Get-Job NAME).
    Get(NameArgs),
    /// Print a job's output records (Receive-Job); JSON Lines when piped.
    Output(OutputArgs),
    /// Print a job's output records as they come until it ends; exit 0 if it Completed, else 1.
    Follow(verbs::FollowArgs),
    /// Wait for jobs to finish (Wait-Job); exit 0 if all Completed, 1 if not, 3 on timeout.
    Wait(WaitArgs),
    /// Stop a job (Stop-Job).
    Stop(NameArgs),
    /// Stop if running, then delete a job and its output (Remove-Job).
    Remove(NameArgs),
    /// Start a new job from a job's request (named NAME-2, NAME-3… unless --as).
    Restart(verbs::AgainArgs),
    /// Start a new job over the items of a finished job that did not complete (Failed, TimedOut, Stopped, never run).
    RerunFailed(verbs::AgainArgs),
    /// Remove finished jobs and their output (default: every finished state; never Queued or Running ones).
    Clean(verbs::CleanArgs),
}

/// `rsp job list`.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Only jobs in this state (Queued, Running, Completed, CompletedWithErrors, Failed, Stopped, Interrupted).
    #[arg(long, value_parser = |s: &str| s.parse::<runspace::JobState>())]
    pub state: Option<runspace::JobState>,
    /// The most jobs to show.
    #[arg(long, default_value_t = 100)]
    pub limit: u64,
    /// Skip this many jobs first.
    #[arg(long, default_value_t = 0)]
    pub offset: u64,
    #[command(flatten)]
    pub common: Common,
}

/// A command on one job.
#[derive(clap::Args, Debug)]
pub struct NameArgs {
    /// The job's name.
    pub name: String,
    #[command(flatten)]
    pub common: Common,
}

/// `rsp job output`.
#[derive(clap::Args, Debug)]
pub struct OutputArgs {
    /// The job's name.
    pub name: String,
    /// Skip this many records first.
    #[arg(long, default_value_t = 0)]
    pub offset: u64,
    /// The most records to print (default: all).
    #[arg(long)]
    pub limit: Option<u64>,
    #[command(flatten)]
    pub common: Common,
}

/// `rsp job wait`.
#[derive(clap::Args, Debug)]
pub struct WaitArgs {
    /// The jobs to wait for.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub names: Vec<String>,
    /// Wait for every job.
    #[arg(long)]
    pub all: bool,
    /// Give up after this long (exit 3).
    #[arg(long, default_value = "30s", value_parser = parse::timeout, value_name = "DURATION")]
    pub timeout: Duration,
    #[command(flatten)]
    pub common: Common,
}

/// Runs an `rsp job` command; returns the exit code.
pub fn run(cmd: JobCommand) -> Result<u8, CliError> {
    match cmd {
        JobCommand::Start(a) => start::start(*a),
        JobCommand::List(a) => list(a),
        JobCommand::Get(a) => get(a),
        JobCommand::Output(a) => output(a),
        JobCommand::Follow(a) => verbs::follow(a),
        JobCommand::Wait(a) => wait(a),
        JobCommand::Stop(a) => simple(a, "stop"),
        JobCommand::Remove(a) => simple(a, "remove"),
        JobCommand::Restart(a) => verbs::again(a, "restart"),
        JobCommand::RerunFailed(a) => verbs::again(a, "rerun-failed"),
        JobCommand::Clean(a) => verbs::clean(a),
    }
}

fn connect(common: &Common) -> Result<Client, CliError> {
    Ok(Client::connect(&state_paths(common)?)?)
}

fn state_paths(common: &Common) -> Result<StatePaths, CliError> {
    StatePaths::new(common.state_dir.as_deref()).map_err(|e| CliError::usage(format!("{e} (--state-dir)")))
}

/// The option that sets an API field of [`JobLimits`].
fn flag_of(field: &str) -> &'static str {
    match field {
        "throttle" => "--throttle",
        "memory_limit" => "--memory-limit",
        "timeout_ms" => "--timeout",
        "offset" => "--offset",
        "limit" => "--limit",
        _ => "--range/--input",
    }
}

/// The server's page check, with the option named.
fn check_page(offset: u64, limit: u64) -> Result<(), CliError> {
    limits::check_page(offset, limit).map_err(|e| CliError::usage(format!("{}: {}", flag_of(e.field), e.message)))
}

fn list(a: ListArgs) -> Result<u8, CliError> {
    check_page(a.offset, a.limit)?;
    let client = connect(&a.common)?;
    let mut path = format!("/v1/jobs?offset={}&limit={}", a.offset, a.limit);
    if let Some(state) = a.state {
        path.push_str(&format!("&state={state}"));
    }
    let page = client.get(&path)?;
    match a.common.format() {
        Format::Json => show::json(&page),
        Format::Jsonl => show::json_line(&page),
        Format::Table => {
            show::job_table(page["jobs"].as_array().ok_or_else(|| malformed("jobs"))?, page["total"].as_u64())
        }
    }
    Ok(0)
}

fn get(a: NameArgs) -> Result<u8, CliError> {
    let job = connect(&a.common)?.get(&format!("/v1/jobs/{}", a.name))?;
    match a.common.format() {
        Format::Json => show::json(&job),
        Format::Jsonl => show::json_line(&job),
        Format::Table => show::job_detail(&job),
    }
    Ok(0)
}

/// Prints the records page by page as they arrive: a table's lines, or
/// one JSON array written record by record, so a large output is never
/// held whole.
fn output(a: OutputArgs) -> Result<u8, CliError> {
    check_page(a.offset, 1)?;
    let client = connect(&a.common)?;
    verbs::output(&client, &a.name, a.offset, a.limit, a.common.records_format())
}

/// An answer of the server that lacks what the API promises.
fn malformed(field: &str) -> CliError {
    CliError::failure(format!("the job server's answer has no valid '{field}'"))
}

fn wait(a: WaitArgs) -> Result<u8, CliError> {
    let client = connect(&a.common)?;
    if a.all {
        let r = client.post_timeout(&format!("/v1/wait?timeout={}ms", a.timeout.as_millis()), &json!({}), a.timeout)?;
        let pending: Vec<String> =
            r["pending"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(String::from)).collect();
        if !pending.is_empty() {
            diag!("rsp job: timed out after {:?}: still unfinished: {}", a.timeout, pending.join(", "));
            return Ok(exit::TIMED_OUT);
        }
        return verbs::all_jobs(&client, a.common.format());
    }
    wait_names(&client, &a.names, a.timeout, a.common.format())
}

/// Waits for each job in turn within one overall timeout; prints them.
/// Exit 0 when all completed, 1 when some did not, 3 on timeout.
fn wait_names(client: &Client, names: &[String], timeout: Duration, format: Format) -> Result<u8, CliError> {
    let deadline = std::time::Instant::now() + timeout;
    let mut jobs = Vec::new();
    let mut code = 0;
    for name in names {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let r =
            client.post_timeout(&format!("/v1/jobs/{name}/wait?timeout={}ms", left.as_millis()), &json!({}), left)?;
        if r["finished"] != json!(true) {
            diag!("rsp job: timed out after {:?} waiting for job '{name}' ({})", timeout, r["job"]["state"]);
            return Ok(exit::TIMED_OUT);
        }
        if r["job"]["state"] != json!("Completed") {
            code = 1;
        }
        jobs.push(r["job"].clone());
    }
    match format {
        Format::Json if jobs.len() == 1 => show::json(&jobs[0]),
        Format::Json => show::json(&Value::Array(jobs)),
        Format::Jsonl => jobs.iter().for_each(show::json_line),
        Format::Table => show::job_table(&jobs, None),
    }
    Ok(code)
}

fn simple(a: NameArgs, verb: &str) -> Result<u8, CliError> {
    let client = connect(&a.common)?;
    let path = format!("/v1/jobs/{}", a.name);
    let stuck = "it is inside a call that cannot be interrupted and ends when that call returns";
    match verb {
        "stop" => {
            let job = client.post(&format!("{path}/stop"), &json!({}))?;
            if job["stopping"] == json!(true) {
                diag!("rsp job: '{}' is stopping: {stuck}", a.name);
            }
            match a.common.format() {
                Format::Json => show::json(&job),
                Format::Jsonl => show::json_line(&job),
                Format::Table => show::job_table(std::slice::from_ref(&job), None),
            }
        }
        _ => {
            let answer = client.delete(&path)?;
            if answer["stopping"] == json!(true) {
                diag!("rsp job: '{}' is removed but still stopping: {stuck}", a.name);
            }
            if a.common.format() != Format::Table {
                show::json(&json!({"removed": a.name}));
            } else {
                diag!("rsp job: removed '{}'", a.name);
            }
        }
    }
    Ok(0)
}
