//! `rsp job start`: a job request built from the same options as `rsp
//! run` — a script or a command (`--cmd`), and inputs from `--range`,
//! `--input`, or a pipe on standard input — sent to the server.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::time::Duration;

use runspace::Input;
use serde_json::{json, Map, Value};

use super::{context, flag_of, malformed, show, state_paths, wait_names, Common, Format};
use crate::common::diag::diag;
use crate::common::{exit, parse, CliError};
use crate::run::command_mode::{CommandArgs, CommandMode};
use crate::run::inputs::InputArgs;
use crate::run::script::ScriptArgs;
use runspace_server::limits::JobLimits;
use runspace_server::Client;

/// `rsp job start`.
#[derive(clap::Args, Debug)]
pub struct StartArgs {
    /// The job's name (default: Job_ and 8 hex digits).
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub script: ScriptArgs,
    /// Items: --range, --input FILE (read now, sent with the job), or a pipe on standard
    /// input; without any, one run with no input.
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub command: CommandArgs,
    /// Runspaces for a run over inputs.
    #[arg(long, value_name = "N")]
    pub throttle: Option<usize>,
    /// Fail the run (or each item) after this long (500ms, 30s; a bare number is seconds).
    #[arg(long, value_parser = parse::timeout, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    /// Wait for the job to finish and print it.
    #[arg(long)]
    pub wait: bool,
    /// Do not start a server when none runs.
    #[arg(long)]
    pub no_autostart: bool,
    /// Submit the job to this PostgreSQL store (postgres://user@host:port/db) for `rsp worker`s to run,
    /// instead of to a local server (see rsp worker --help). Needs --range or --input.
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

/// Starts a job; with `--wait`, waits for it and prints it.
pub fn start(a: StartArgs) -> Result<u8, CliError> {
    let command = CommandMode::from_args(&a.command, &a.script)?;
    if command.as_ref().is_some_and(CommandMode::uses_slot) {
        return Err(CliError::usage("--cmd: {%} (the slot) is for rsp run; a job's runspaces live on the server"));
    }
    if a.command.tag {
        return Err(CliError::usage("--tag applies to rsp run; a job's records carry their input"));
    }
    if a.command.line_buffer {
        return Err(CliError::usage("--line-buffer applies to rsp run; a job's output is kept in its records"));
    }
    let mut body = request(&a, command.as_ref())?;
    let memory_limit = a.script.memory_limit()?.map(|n| n as u64);
    let items = Items::read(&a.input, command.as_ref())?;
    if let (Some(true), Items::List(inputs)) = (command.as_ref().map(|c| c.dry_run), &items) {
        let mut out = io::stdout().lock();
        for input in inputs {
            let line = input.get("command").and_then(Value::as_str).unwrap_or_default();
            if writeln!(out, "{line}").is_err() {
                break;
            }
        }
        return Ok(exit::OK);
    }
    // The server's own check, here first, so a bad flag is named as such.
    let limits = JobLimits {
        throttle: a.throttle.map(|t| t as u64),
        memory_limit,
        timeout_ms: a.timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        items: items.count(),
    };
    limits.check().map_err(|e| CliError::usage(format!("{}: {}", flag_of(e.field), e.message)))?;
    let fields =
        [("memory_limit", limits.memory_limit), ("timeout_ms", limits.timeout_ms), ("throttle", limits.throttle)];
    for (field, value) in fields {
        if let Some(value) = value {
            body.insert(field.into(), json!(value));
        }
    }
    match items {
        Items::Once => {}
        Items::Range(r) => {
            body.insert("range".into(), json!({"start": r.start, "end": r.end}));
        }
        Items::List(inputs) => {
            body.insert("inputs".into(), Value::Array(inputs));
        }
    }
    if let Some(url) = &a.store {
        return cluster_start(&a, url, body);
    }
    let client = connect_or_autostart(&a.common, a.no_autostart)?;
    let created = client.post("/v1/jobs", &Value::Object(body))?;
    let name = created["name"].as_str().ok_or_else(|| malformed("name"))?.to_string();
    if !a.wait {
        match a.common.format() {
            Format::Json => show::json(&created),
            Format::Jsonl => show::json_line(&created),
            Format::Table => show::line(&name),
        }
        return Ok(exit::OK);
    }
    wait_names(&client, &[name], Duration::from_secs(3600), a.common.format())
}

/// The request's script, session and context: what to run (the script, or
/// command mode's runner with the exec grant only), its variables,
/// parameters and modules, and the caller's directory and environment.
fn request(a: &StartArgs, command: Option<&CommandMode>) -> Result<Map<String, Value>, CliError> {
    let mut body = Map::new();
    let (script_name, source) = match command {
        Some(cmd) => ("command".to_string(), cmd.runner_source()),
        None => a.script.source()?,
    };
    body.insert("script".into(), json!(source));
    body.insert("script_name".into(), json!(script_name));
    if let Some(name) = &a.name {
        runspace::check_job_name(name).map_err(|e| CliError::usage(e.to_string()))?;
        body.insert("name".into(), json!(name));
    }
    let params: Map<String, Value> = a.script.params()?.into_iter().collect();
    body.insert("params".into(), Value::Object(params));
    let mut vars = Map::new();
    for var in &a.script.vars {
        let (k, v) = parse::name_value(var).map_err(|e| CliError::usage(format!("--var: {e}")))?;
        vars.insert(k, v);
    }
    body.insert("variables".into(), Value::Object(vars));
    let mut modules = Vec::new();
    for (name, source) in a.script.module_sources()? {
        let source = String::from_utf8(source)
            .map_err(|_| CliError::usage(format!("module {name} is not UTF-8 text, which a job's module must be")))?;
        modules.push(json!({"name": name, "source": source}));
    }
    body.insert("modules".into(), Value::Array(modules));
    let allow = match command {
        Some(_) => vec!["exec".to_string()],
        None => a.script.allow.clone(),
    };
    let grants = a.script.grants()?;
    let cwd = context::working_dir()?;
    let cwd_text = cwd.to_str().ok_or_else(|| CliError::usage("the current directory's path is not UTF-8"))?;
    body.insert("cwd".into(), json!(cwd_text));
    body.insert("allow".into(), json!(context::absolute_grants(&allow, &cwd)));
    if let Some(env) = context::environment(&a.env, &grants)? {
        body.insert("env".into(), env);
    }
    Ok(body)
}

/// What a job runs over.
enum Items {
    /// One run with no input.
    Once,
    /// The integers of a range, expanded by the server.
    Range(parse::Range),
    /// Items read now: the server runs them later, maybe after the file is gone.
    List(Vec<Value>),
}

impl Items {
    fn read(args: &InputArgs, command: Option<&CommandMode>) -> Result<Items, CliError> {
        let piped = args.reads_stdin() && !args.once && stdin_is_piped();
        if let Some(cmd) = command {
            if !cmd.has_sources() && args.reads_stdin() && args.input.is_none() && !piped {
                return Err(CliError::usage(
                    "--cmd needs inputs: argument lists (::: VALUES, :::: FILES), --input FILE, --range, or a pipe",
                ));
            }
            return Ok(Items::List(collect(cmd.inputs(args)?.items, &args.source_name())?));
        }
        if let Some(range) = args.range {
            return Ok(Items::Range(range));
        }
        if args.input.is_none() && !piped {
            return Ok(Items::Once);
        }
        let items = collect(args.open()?.items, &args.source_name())?;
        if items.is_empty() {
            return Err(CliError::usage(format!(
                "no items were read from {}; to start one run without input, use --once",
                args.source_name()
            )));
        }
        Ok(Items::List(items))
    }

    fn count(&self) -> u64 {
        match self {
            Items::Once => 1,
            Items::Range(r) => r.len(),
            Items::List(items) => items.len() as u64,
        }
    }
}

/// The items as values; an item that could not be read is an error here,
/// before the job exists.
fn collect(items: impl Iterator<Item = Input>, source: &str) -> Result<Vec<Value>, CliError> {
    items
        .map(|item| match item {
            Input::Value(v) => Ok(v),
            Input::Invalid { text, error } => Err(CliError::usage(format!("{source}: bad input '{text}': {error}"))),
        })
        .collect()
}

/// Standard input is a pipe or a file: items are meant to be read from it.
/// A terminal, or a character device such as `/dev/null` (what a service
/// or a test gives), means no items: the job is one run.
fn stdin_is_piped() -> bool {
    let Ok(fd) = io::stdin().as_fd().try_clone_to_owned() else { return false };
    File::from(fd).metadata().map(|m| m.file_type()).is_ok_and(|t| t.is_fifo() || t.is_file() || t.is_socket())
}

/// Connects to the server, starting one in the background when none runs (unless `no_autostart`).
fn connect_or_autostart(common: &Common, no_autostart: bool) -> Result<Client, CliError> {
    let paths = state_paths(common)?;
    match Client::connect(&paths) {
        Ok(c) => Ok(c),
        Err(e) if e.server_down && !no_autostart => {
            let (addr, pid) = crate::serve::spawn_detached(&paths, &[], None).map_err(CliError::failure)?;
            diag!(
                "rsp job: started a job server in the background (pid {pid}, http://{addr}); stop it with: \
                 rsp serve stop (or kill {pid})"
            );
            Ok(Client::connect(&paths)?)
        }
        Err(e) => Err(e.into()),
    }
}

/// `rsp job start --store URL`: the job goes to the PostgreSQL store as a
/// cluster job, for `rsp worker`s; with `--wait`, waits for its end.
fn cluster_start(a: &StartArgs, url: &str, mut body: serde_json::Map<String, Value>) -> Result<u8, CliError> {
    use runspace_server::store::{is_postgres_url, redact_url, work::ClusterJob, PgStore};
    if !is_postgres_url(url) {
        return Err(CliError::usage(format!(
            "--store: '{}' is not a PostgreSQL URL (postgres://user@host:port/db)",
            redact_url(url)
        )));
    }
    let inputs: Vec<Value> = match (body.remove("inputs"), body.remove("range"), a.input.range) {
        (Some(Value::Array(inputs)), _, _) => inputs,
        (_, Some(_), Some(r)) => r.iter().map(Value::from).collect(),
        _ => return Err(CliError::usage("--store runs a job over inputs: give --range or --input")),
    };
    let name = match body.remove("name") {
        Some(Value::String(name)) => name,
        _ => runspace::auto_job_name(),
    };
    let total = inputs.len() as u64;
    let chunk_size = a.chunk_size.map_or_else(|| (total / 64).clamp(1, 1000) as usize, |n| n as usize);
    let store = PgStore::open(url).map_err(CliError::failure)?;
    let job = ClusterJob { name: name.clone(), request: Value::Object(body), inputs, chunk_size };
    store.submit_cluster(job).map_err(|e| CliError::failure(e.to_string()))?;
    if !a.wait {
        show::line(&name);
        return Ok(exit::OK);
    }
    loop {
        match store.cluster_status(&name) {
            Ok(Some(status)) if !matches!(status.state.as_str(), "Queued" | "Running") => {
                println!("{name}: {} ({}/{} items)", status.state, status.done, status.total);
                return Ok(if status.state == "Completed" { exit::OK } else { 1 });
            }
            Ok(None) => return Err(CliError::failure(format!("job '{name}' was removed while it ran"))),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
