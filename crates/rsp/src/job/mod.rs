//! `rsp job`: the client of `rsp serve` — Start-, Get-, Receive-, Wait-,
//! Stop- and Remove-Job for the command line.

pub(crate) mod context;
mod records;
mod show;
mod verbs;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::common::parse;
use crate::run::inputs::InputFormat;
use crate::run::script::ScriptArgs;
use runspace_server::limits::{self, JobLimits};
use runspace_server::{Client, ClientError, StatePaths};

/// Exit code when a wait ran out of time.
const EXIT_TIMEOUT: i32 = 3;

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
    Start(Box<StartArgs>),
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

/// `rsp job start`.
#[derive(clap::Args, Debug)]
pub struct StartArgs {
    /// The job's name (default: Job_ and 8 hex digits).
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub script: ScriptArgs,
    /// Run once per integer START..END, inclusive, in parallel.
    #[arg(long, value_name = "START..END", value_parser = parse::range, conflicts_with = "input")]
    pub range: Option<parse::Range>,
    /// Run once per item of FILE (read now, sent with the job), in parallel.
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// How --input is split into items.
    #[arg(long, value_enum, default_value_t = InputFormat::Lines, value_name = "FORMAT")]
    pub input_format: InputFormat,
    /// Runspaces for a run over inputs.
    #[arg(long, value_name = "N")]
    pub throttle: Option<usize>,
    /// Fail the run (or each item) after this long, e.g. 30s.
    #[arg(long, value_parser = parse::duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    /// Wait for the job to finish and print it.
    #[arg(long)]
    pub wait: bool,
    /// Do not start a server when none runs.
    #[arg(long)]
    pub no_autostart: bool,
    /// Submit the job to this PostgreSQL store (postgres://user@host:port/db) for `rsp worker`s to run,
    /// instead of to a local server (docs/cluster.md). Needs --range or --input.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// With --store: how many items a worker claims at once [default: a 64th of the job, 1 to 1000].
    #[arg(long, value_name = "N", requires = "store", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub chunk_size: Option<u32>,
    #[command(flatten)]
    pub env: context::EnvArgs,
    #[command(flatten)]
    pub common: Common,
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
    #[arg(long, default_value = "30s", value_parser = parse::duration, value_name = "DURATION")]
    pub timeout: Duration,
    #[command(flatten)]
    pub common: Common,
}

/// Runs an `rsp job` command; returns the exit code.
pub fn run(cmd: JobCommand) -> i32 {
    let result = match cmd {
        JobCommand::Start(a) => start(*a),
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
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rsp job: error: {}", e.message);
            if e.server_down {
                eprintln!("rsp job: start one with 'rsp serve --detach' (or 'rsp job start', which starts one)");
            }
            e.code
        }
    }
}

fn connect(common: &Common) -> Result<Client, ClientError> {
    Client::connect(&state_paths(common)?)
}

fn state_paths(common: &Common) -> Result<StatePaths, ClientError> {
    StatePaths::new(common.state_dir.as_deref()).map_err(|e| ClientError::usage(format!("{e} (--state-dir)")))
}

fn start(a: StartArgs) -> Result<i32, ClientError> {
    let usage = |e: crate::common::CliError| ClientError::usage(e.message);
    let (script_name, source) = a.script.source().map_err(usage)?;
    let mut body = Map::new();
    body.insert("script".into(), json!(source));
    body.insert("script_name".into(), json!(script_name));
    if let Some(name) = &a.name {
        runspace::check_job_name(name).map_err(|e| ClientError::usage(e.to_string()))?;
        body.insert("name".into(), json!(name));
    }
    let params: Map<String, Value> = a.script.params().map_err(usage)?.into_iter().collect();
    body.insert("params".into(), Value::Object(params));
    let mut vars = Map::new();
    for var in &a.script.vars {
        let (k, v) = parse::name_value(var).map_err(|e| ClientError::usage(format!("--var: {e}")))?;
        vars.insert(k, v);
    }
    body.insert("variables".into(), Value::Object(vars));
    let mut modules = Vec::new();
    for path in &a.script.modules {
        let source = std::fs::read_to_string(path)
            .map_err(|e| ClientError::usage(format!("cannot read module {}: {e}", path.display())))?;
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        modules.push(json!({"name": name, "source": source}));
    }
    body.insert("modules".into(), Value::Array(modules));
    let grants = a.script.grants().map_err(usage)?;
    let cwd = context::working_dir()?;
    let cwd_text = cwd.to_str().ok_or_else(|| ClientError::usage("the current directory's path is not UTF-8"))?;
    body.insert("cwd".into(), json!(cwd_text));
    body.insert("allow".into(), json!(context::absolute_grants(&a.script.allow, &cwd)));
    if let Some(env) = context::environment(&a.env, &grants)? {
        body.insert("env".into(), env);
    }
    let memory_limit = match &a.script.memory_limit {
        Some(limit) => Some(parse::size(limit).map_err(|e| ClientError::usage(format!("--memory-limit: {e}")))? as u64),
        None => None,
    };
    let inputs = match &a.input {
        Some(path) => Some(read_inputs(path, a.input_format)?),
        None => None,
    };
    let items = match (&inputs, a.range) {
        (Some(inputs), _) => inputs.len() as u64,
        (None, Some(r)) => r.len(),
        (None, None) => 1,
    };
    // The server's own check, here first, so a bad flag is named as such.
    let limits = JobLimits {
        throttle: a.throttle.map(|t| t as u64),
        memory_limit,
        timeout_ms: a.timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        items,
    };
    limits.check().map_err(|e| ClientError::usage(format!("{}: {}", flag_of(e.field), e.message)))?;
    let fields =
        [("memory_limit", limits.memory_limit), ("timeout_ms", limits.timeout_ms), ("throttle", limits.throttle)];
    for (field, value) in fields {
        if let Some(value) = value {
            body.insert(field.into(), json!(value));
        }
    }
    if let Some(r) = a.range {
        body.insert("range".into(), json!({"start": r.start, "end": r.end}));
    }
    if let Some(inputs) = inputs {
        body.insert("inputs".into(), Value::Array(inputs));
    }
    if let Some(url) = &a.store {
        return cluster_start(&a, url, body);
    }
    let paths = state_paths(&a.common)?;
    let client = match Client::connect(&paths) {
        Ok(c) => c,
        Err(e) if e.server_down && !a.no_autostart => {
            let (addr, pid) = crate::serve::spawn_detached(&paths, &[]).map_err(ClientError::other)?;
            eprintln!(
                "rsp job: started a job server in the background (pid {pid}, http://{addr}); stop it with: kill {pid}"
            );
            Client::connect(&paths)?
        }
        Err(e) => return Err(e),
    };
    let created = client.post("/v1/jobs", &Value::Object(body))?;
    let name = created["name"].as_str().ok_or_else(|| malformed("name"))?.to_string();
    if !a.wait {
        match a.common.format() {
            Format::Json => show::json(&created),
            Format::Jsonl => show::json_line(&created),
            Format::Table => show::line(&name),
        }
        return Ok(0);
    }
    wait_names(&client, &[name], Duration::from_secs(3600), a.common.format())
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

/// Reads `--input` items now: the server runs them later, maybe after the file is gone.
fn read_inputs(path: &PathBuf, format: InputFormat) -> Result<Vec<Value>, ClientError> {
    let file = std::fs::File::open(path)
        .map_err(|e| ClientError::usage(format!("cannot read input {}: {e}", path.display())))?;
    let inputs = crate::run::inputs::read(Box::new(file), format, &path.display().to_string())
        .map_err(|e| ClientError::usage(e.message))?;
    inputs
        .items
        .map(|item| match item {
            runspace::Input::Value(v) => Ok(v),
            runspace::Input::Invalid { text, error } => {
                Err(ClientError::usage(format!("{}: bad input '{text}': {error}", path.display())))
            }
        })
        .collect()
}

/// The server's page check, with the option named.
fn check_page(offset: u64, limit: u64) -> Result<(), ClientError> {
    limits::check_page(offset, limit).map_err(|e| ClientError::usage(format!("{}: {}", flag_of(e.field), e.message)))
}

fn list(a: ListArgs) -> Result<i32, ClientError> {
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

fn get(a: NameArgs) -> Result<i32, ClientError> {
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
fn output(a: OutputArgs) -> Result<i32, ClientError> {
    check_page(a.offset, 1)?;
    let client = connect(&a.common)?;
    verbs::output(&client, &a.name, a.offset, a.limit, a.common.records_format())
}

/// An answer of the server that lacks what the API promises.
fn malformed(field: &str) -> ClientError {
    ClientError::other(format!("the job server's answer has no valid '{field}'"))
}

fn wait(a: WaitArgs) -> Result<i32, ClientError> {
    let client = connect(&a.common)?;
    if a.all {
        let r = client.post_timeout(&format!("/v1/wait?timeout={}ms", a.timeout.as_millis()), &json!({}), a.timeout)?;
        let pending: Vec<String> =
            r["pending"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(String::from)).collect();
        if !pending.is_empty() {
            eprintln!("rsp job: timed out after {:?}: still unfinished: {}", a.timeout, pending.join(", "));
            return Ok(EXIT_TIMEOUT);
        }
        return verbs::all_jobs(&client, a.common.format());
    }
    wait_names(&client, &a.names, a.timeout, a.common.format())
}

/// Waits for each job in turn within one overall timeout; prints them.
/// Exit 0 when all completed, 1 when some did not, 3 on timeout.
fn wait_names(client: &Client, names: &[String], timeout: Duration, format: Format) -> Result<i32, ClientError> {
    let deadline = std::time::Instant::now() + timeout;
    let mut jobs = Vec::new();
    let mut code = 0;
    for name in names {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let r =
            client.post_timeout(&format!("/v1/jobs/{name}/wait?timeout={}ms", left.as_millis()), &json!({}), left)?;
        if r["finished"] != json!(true) {
            eprintln!("rsp job: timed out after {:?} waiting for job '{name}' ({})", timeout, r["job"]["state"]);
            return Ok(EXIT_TIMEOUT);
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

fn simple(a: NameArgs, verb: &str) -> Result<i32, ClientError> {
    let client = connect(&a.common)?;
    let path = format!("/v1/jobs/{}", a.name);
    let stuck = "it is inside a call that cannot be interrupted and ends when that call returns";
    match verb {
        "stop" => {
            let job = client.post(&format!("{path}/stop"), &json!({}))?;
            if job["stopping"] == json!(true) {
                eprintln!("rsp job: '{}' is stopping: {stuck}", a.name);
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
                eprintln!("rsp job: '{}' is removed but still stopping: {stuck}", a.name);
            }
            if a.common.format() != Format::Table {
                show::json(&json!({"removed": a.name}));
            } else {
                eprintln!("rsp job: removed '{}'", a.name);
            }
        }
    }
    Ok(0)
}

/// `rsp job start --store URL`: the job goes to the PostgreSQL store as a
/// cluster job, for `rsp worker`s; with `--wait`, waits for its end.
fn cluster_start(a: &StartArgs, url: &str, mut body: Map<String, Value>) -> Result<i32, ClientError> {
    use runspace_server::store::{is_postgres_url, work::ClusterJob, PgStore};
    if !is_postgres_url(url) {
        return Err(ClientError::usage(format!(
            "--store: '{url}' is not a PostgreSQL URL (postgres://user@host:port/db)"
        )));
    }
    let inputs: Vec<Value> = match (body.remove("inputs"), body.remove("range")) {
        (Some(Value::Array(inputs)), _) => inputs,
        (_, Some(_)) => a.range.map(|r| r.iter().map(Value::from).collect()).unwrap_or_default(),
        _ => return Err(ClientError::usage("--store runs a job over inputs: give --range or --input")),
    };
    let name = match body.remove("name") {
        Some(Value::String(name)) => name,
        _ => runspace::auto_job_name(),
    };
    let total = inputs.len() as u64;
    let chunk_size = a.chunk_size.map_or_else(|| (total / 64).clamp(1, 1000) as usize, |n| n as usize);
    let store = PgStore::open(url).map_err(ClientError::other)?;
    let job = ClusterJob { name: name.clone(), request: Value::Object(body), inputs, chunk_size };
    store.submit_cluster(job).map_err(|e| ClientError::other(e.to_string()))?;
    if !a.wait {
        show::line(&name);
        return Ok(0);
    }
    loop {
        match store.cluster_status(&name) {
            Ok(Some(status)) if !matches!(status.state.as_str(), "Queued" | "Running") => {
                println!("{name}: {} ({}/{} items)", status.state, status.done, status.total);
                return Ok(if status.state == "Completed" { 0 } else { 1 });
            }
            Ok(None) => return Err(ClientError::other(format!("job '{name}' was removed while it ran"))),
            _ => std::thread::sleep(std::time::Duration::from_millis(200)),
        }
    }
}
