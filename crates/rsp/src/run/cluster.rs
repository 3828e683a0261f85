//! `rsp run --cluster URL`: the run goes to a PostgreSQL store as a
//! cluster job, `rsp worker`s run it, and its records stream back here as
//! they are recorded, in the same formats, with progress, the summary and
//! the exit code of a local run. Ctrl-C stops the job everywhere.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, BufWriter, IsTerminal};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runspace::{Input, ItemResult, RunProgress, Status};
use runspace_server::store::work::ClusterJob;
use runspace_server::store::{is_postgres_url, PgStore};
use serde_json::{json, Map, Value};

use super::output::{Format, Printer};
use super::summary::Tally;
use super::RunArgs;
use crate::common::diag::diag;
use crate::common::parse;
use crate::common::progress::Progress;
use crate::common::CliError;
use crate::job::context;

/// How often the store is asked for new records.
const POLL: Duration = Duration::from_millis(100);
/// How long without any progress before the run says what it waits for.
const STALL: Duration = Duration::from_secs(30);

/// Runs `rsp run … --cluster URL`; returns the exit code.
pub fn run(args: &RunArgs, url: &str) -> Result<u8, CliError> {
    if !is_postgres_url(url) {
        return Err(CliError::usage(format!(
            "--cluster: '{}' is not a PostgreSQL URL (postgres://user@host:port/db)",
            runspace_server::store::redact_url(url)
        )));
    }
    refuse_local_only(args)?;
    args.script.script()?; // a syntax error is found here, before anything is submitted
    let request = request(args)?;
    let inputs = inputs(args)?;
    let total = inputs.len() as u64;
    let chunk_size = args.chunk_size.map_or_else(|| default_chunk(total), |n| n as usize);
    let store = PgStore::open(url).map_err(CliError::failure)?;
    let name = runspace::auto_job_name();
    let job = ClusterJob { name: name.clone(), request, inputs, chunk_size };
    store.submit_cluster(job).map_err(|e| CliError::failure(e.to_string()))?;
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let interrupted = interrupted.clone();
        let _ = ctrlc::set_handler(move || {
            if interrupted.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
    }
    follow(args, &store, &name, total, &interrupted)
}

/// Chunks of about a 64th of the run, between 1 and 1,000 items.
fn default_chunk(total: u64) -> usize {
    (total / 64).clamp(1, 1000) as usize
}

/// Options that only a local run has.
fn refuse_local_only(args: &RunArgs) -> Result<(), CliError> {
    let large = &args.large;
    let local = [
        (args.command.template.is_some(), "--cmd"),
        (large.batch_size.is_some(), "--batch-size"),
        (large.retries.is_some(), "--retries"),
        (large.halt.is_some(), "--halt"),
        (large.joblog.is_some(), "--joblog"),
        (large.results.is_some(), "--results"),
    ];
    match local.iter().find(|(given, _)| *given) {
        Some((_, flag)) => Err(CliError::usage(format!("{flag} is not available with --cluster"))),
        None => Ok(()),
    }
}

/// The request the workers run: the script, its session and the caller's
/// context, as the job service keeps one.
fn request(args: &RunArgs) -> Result<Value, CliError> {
    let s = &args.script;
    let (script_name, source) = s.source()?;
    let params: Map<String, Value> = s.params()?.into_iter().collect();
    let mut variables = Map::new();
    for var in &s.vars {
        let (k, v) = parse::name_value(var).map_err(|e| CliError::usage(format!("--var: {e}")))?;
        variables.insert(k, v);
    }
    let mut modules = Vec::new();
    for path in &s.modules {
        let source = std::fs::read_to_string(path)
            .map_err(|e| CliError::usage(format!("cannot read module {}: {e}", path.display())))?;
        let name = path.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        modules.push(json!({"name": name, "source": source}));
    }
    let grants = s.grants()?;
    let cwd = context::working_dir()?;
    let env = context::environment(&context::EnvArgs::default(), &grants)?;
    let memory_limit = match &s.memory_limit {
        Some(limit) => Some(parse::size(limit).map_err(|e| CliError::usage(format!("--memory-limit: {e}")))?),
        None => None,
    };
    Ok(json!({
        "script": source,
        "script_name": script_name,
        "params": params,
        "variables": variables,
        "modules": modules,
        "allow": context::absolute_grants(&s.allow, &cwd),
        "cwd": cwd.to_string_lossy(),
        "env": env,
        "memory_limit": memory_limit,
        "timeout_ms": args.timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
    }))
}

/// Every input, read up front: a cluster job's items are rows.
fn inputs(args: &RunArgs) -> Result<Vec<Value>, CliError> {
    let opened = args.input.open()?;
    let mut values = Vec::new();
    for (i, input) in opened.items.enumerate() {
        match input {
            Input::Value(v) => values.push(v),
            Input::Invalid { error, .. } => {
                return Err(CliError::usage(format!(
                    "input {}: {error} (a cluster run needs every input valid)",
                    i + 1
                )))
            }
        }
    }
    Ok(values)
}

/// Prints the job's records as they are recorded until it ends.
fn follow(args: &RunArgs, store: &PgStore, name: &str, total: u64, interrupted: &AtomicBool) -> Result<u8, CliError> {
    let (stdout_tty, stderr_tty) = (io::stdout().is_terminal(), io::stderr().is_terminal());
    let format = args.format.unwrap_or(if stdout_tty { Format::Table } else { Format::Jsonl });
    let show_progress = !args.no_progress && (args.progress || stderr_tty);
    let show_summary = !args.no_summary && (args.summary || stderr_tty);
    let mut progress =
        if show_progress && total > 1 { Progress::new(stderr_tty, Some(total)) } else { Progress::Hidden };
    let mut printer = Printer::new(
        format,
        BufWriter::with_capacity(1 << 16, io::stdout().lock()),
        stdout_tty && console::colors_enabled(),
    );
    let write_error = |e: io::Error| CliError::failure(format!("cannot write the results: {e}"));
    printer.begin().map_err(write_error)?;
    let started = Instant::now();
    let mut seen = HashSet::new();
    let mut pending: BTreeMap<u64, ItemResult> = BTreeMap::new();
    let mut next_ordered = 0u64;
    let mut snapshot = RunProgress { total: Some(total), ..RunProgress::default() };
    let (mut refusals, mut failing, mut stopped) = (HashSet::new(), false, false);
    let mut stall = Stall::new(STALL);
    let rejected = loop {
        if interrupted.load(Ordering::Relaxed) && !stopped {
            stopped = true;
            diag!("\nrsp: interrupted: stopping the cluster job '{name}' on every worker");
            let _ = store.stop_cluster_job(name);
        }
        let status = store.cluster_status(name);
        let records = status.is_ok().then(|| store.new_records(name, &mut seen));
        match (&status, &records) {
            (Ok(_), Some(Ok(_))) if failing => {
                diag!("rsp: the database answers again");
                failing = false;
            }
            (Err(e), _) | (_, Some(Err(e))) if !failing => {
                diag!("rsp: {e}; retrying");
                failing = true;
            }
            _ => {}
        }
        for (_, text) in records.and_then(Result::ok).unwrap_or_default() {
            let Ok(item) = serde_json::from_str::<ItemResult>(&text) else { continue };
            count(&mut snapshot, item.status);
            if args.ordered {
                pending.insert(item.index, item);
                while let Some(item) = pending.remove(&next_ordered) {
                    printer.item(&item).map_err(write_error)?;
                    next_ordered += 1;
                }
            } else {
                printer.item(&item).map_err(write_error)?;
            }
        }
        printer.flush().map_err(write_error)?;
        snapshot.elapsed = started.elapsed();
        snapshot.items_per_sec = snapshot.done as f64 / snapshot.elapsed.as_secs_f64().max(1e-3);
        progress.update(&snapshot);
        if let Ok(Some(status)) = &status {
            for refusal in &status.refusals {
                if refusals.insert(refusal.clone()) {
                    diag!("rsp: {refusal}");
                }
            }
            if !matches!(status.state.as_str(), "Queued" | "Running") && (snapshot.done >= status.done) {
                break status.rejected;
            }
            if stall.quiet_for((status.state.as_str(), status.done, snapshot.done)) {
                diag!(
                    "rsp: no progress for {} s: the cluster job '{name}' is {}, {} of {total} item(s) recorded \
                     and {} printed; still waiting (rsp worker list --store URL shows the workers; Ctrl-C stops)",
                    STALL.as_secs(),
                    status.state,
                    status.done,
                    snapshot.done
                );
            }
        }
        std::thread::sleep(POLL);
    };
    // An ordered run stopped midway prints what it has, in order.
    for item in std::mem::take(&mut pending).into_values() {
        printer.item(&item).map_err(write_error)?;
    }
    printer.end().map_err(write_error)?;
    snapshot.finished = true;
    progress.update(&snapshot);
    progress.finish();
    let mut tally = Tally::from_progress(&snapshot);
    tally.inputs = total;
    tally.stopped += total.saturating_sub(snapshot.done);
    if show_summary {
        diag!("{}", tally.summary(started.elapsed(), stopped, stderr_tty && console::colors_enabled_stderr()));
        if rejected > 0 {
            // Chunks that ran again elsewhere after a worker lost its lease: recorded once all the same.
            diag!("  {rejected} late completion(s) rejected by the lease fence (their items were recorded once)");
        }
    }
    Ok(if stopped {
        130
    } else if tally.all_completed() {
        0
    } else {
        1
    })
}

/// Notices a run that has not moved for [`STALL`], so that a wait on
/// workers that never come, or on a job that never ends, says what it
/// waits for instead of hanging silently.
struct Stall {
    after: Duration,
    last: (String, u64, u64),
    since: Instant,
}

impl Stall {
    fn new(after: Duration) -> Stall {
        Stall { after, last: (String::new(), 0, 0), since: Instant::now() }
    }

    /// True once per `after` that `(state, recorded, printed)` has not changed.
    fn quiet_for(&mut self, (state, recorded, printed): (&str, u64, u64)) -> bool {
        if (state, recorded, printed) != (self.last.0.as_str(), self.last.1, self.last.2) {
            self.last = (state.to_string(), recorded, printed);
            self.since = Instant::now();
            return false;
        }
        if self.since.elapsed() < self.after {
            return false;
        }
        self.since = Instant::now();
        true
    }
}

fn count(p: &mut RunProgress, status: Status) {
    p.done += 1;
    p.read += 1;
    match status {
        Status::Completed => p.completed += 1,
        Status::CompletedWithErrors => p.with_errors += 1,
        Status::Failed => p.failed += 1,
        Status::TimedOut => p.timed_out += 1,
        Status::Stopped => p.stopped += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_is_told_once_per_quiet_period_and_any_change_restarts_it() {
        let mut stall = Stall::new(Duration::from_millis(50));
        assert!(!stall.quiet_for(("Running", 10, 10)));
        std::thread::sleep(Duration::from_millis(80));
        assert!(stall.quiet_for(("Running", 10, 10)), "quiet for longer than the period");
        assert!(!stall.quiet_for(("Running", 10, 10)), "told once, then the period starts again");
        std::thread::sleep(Duration::from_millis(80));
        assert!(!stall.quiet_for(("Running", 10, 11)), "a record printed is progress");
        assert!(!stall.quiet_for(("Running", 10, 11)));
        std::thread::sleep(Duration::from_millis(80));
        assert!(!stall.quiet_for(("Completed", 10, 11)), "a new state is progress");
    }
}
