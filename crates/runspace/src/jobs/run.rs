//! Running jobs: one runner thread per running slot. A runner runs its job,
//! then takes the next queued one, so threads never outnumber `max_concurrent`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::{Job, JobEvent, JobSpec, JobState, Progress, Shared, Stopper};
use crate::parallel::{ItemResult, Next};
use crate::pool::RunspacePool;
use crate::streams::{Status, Streams};

/// How often a run over inputs looks up from waiting for items. Only a
/// safety net: results and stops wake it anyway.
const ITEM_POLL: Duration = Duration::from_millis(250);

/// How a job ended, before it is published.
struct Outcome {
    state: JobState,
    output: Vec<Value>,
    streams: Streams,
    error: Option<String>,
}

impl Outcome {
    fn failed(message: String) -> Outcome {
        let streams = Streams { error: vec![message.clone()], ..Streams::default() };
        Outcome { state: JobState::Failed, output: Vec::new(), streams, error: Some(message) }
    }

    fn stopped(message: &str) -> Outcome {
        Outcome {
            state: JobState::Stopped,
            output: Vec::new(),
            streams: Streams::default(),
            error: Some(message.to_string()),
        }
    }
}

/// The body of a runner thread.
pub(super) fn runner(shared: &Arc<Shared>, mut job: Arc<Job>) {
    loop {
        run_one(shared, &job);
        match shared.next_job() {
            Some(next) => job = next,
            None => return,
        }
    }
}

fn run_one(shared: &Shared, job: &Job) {
    // Whoever takes the spec owns the job's end: a job stopped while
    // queued has already lost it.
    let Some(spec) = job.spec.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return;
    };
    let started = {
        let mut record = job.lock();
        if job.stop_requested.load(Ordering::SeqCst) {
            drop(record);
            return finish(shared, job, Outcome::stopped("stopped before it started"));
        }
        if record.state == JobState::Queued {
            record.mark_running(SystemTime::now());
        }
        record.start.unwrap_or_else(SystemTime::now)
    };
    job.changed.notify_all();
    notify(shared, &JobEvent::Started { name: &job.name, at: started });
    // A panic below (a thread the engine could not start, say) ends the job
    // Failed with the reason and frees its slot, instead of leaving it
    // Running forever.
    let run = catch_unwind(AssertUnwindSafe(|| match spec.inputs.is_some() {
        false => run_single(shared, job, spec),
        true => run_parallel(shared, job, spec),
    }));
    let outcome = run.unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown cause".into());
        *job.stopper.lock().unwrap_or_else(|e| e.into_inner()) = Stopper::None;
        Outcome::failed(format!("internal error: the job's thread panicked: {why}"))
    });
    finish(shared, job, outcome);
}

/// One invocation: on the manager's pool, or on a pool of its own when the
/// job brings its own session.
fn run_single(shared: &Shared, job: &Job, spec: JobSpec) -> Outcome {
    let own;
    let pool = match &spec.session {
        Some(session) => match RunspacePool::builder().min(1).max(1).session(session.clone()).open() {
            Ok(pool) => {
                own = pool;
                &own
            }
            Err(e) => return Outcome::failed(e.to_string()),
        },
        None => {
            // A worker for every running job, so a job marked Running never
            // sits in the pool's channel behind another (the pool grows only
            // when it sees no idle worker, which races with a burst of starts).
            let _ = shared.pool.ensure_workers(shared.pool.max());
            &shared.pool
        }
    };
    let mut invocation = pool.invocation(&spec.script);
    for (name, value) in spec.params {
        invocation = invocation.param(&name, value);
    }
    if let Some(timeout) = spec.timeout {
        invocation = invocation.timeout(timeout);
    }
    let handle = match invocation.begin() {
        Ok(handle) => Arc::new(handle),
        Err(e) => return Outcome::failed(e.to_string()),
    };
    {
        let mut stopper = job.stopper.lock().unwrap_or_else(|e| e.into_inner());
        *stopper = Stopper::Invocation(handle.clone());
        if job.stop_requested.load(Ordering::SeqCst) {
            handle.stop();
        }
    }
    while !handle.wait(Duration::from_secs(3600)) {}
    *job.stopper.lock().unwrap_or_else(|e| e.into_inner()) = Stopper::None;
    // `stop` only borrows the handle under the stopper's lock, so ours is
    // now the only reference.
    let result = match Arc::try_unwrap(handle) {
        Ok(handle) => handle.end(),
        Err(_) => return Outcome::failed("internal error: the invocation handle is still shared".into()),
    };
    let state = match result.status() {
        Status::Completed => JobState::Completed,
        Status::CompletedWithErrors => JobState::CompletedWithErrors,
        Status::Failed | Status::TimedOut => JobState::Failed,
        Status::Stopped => JobState::Stopped,
    };
    let error = result.error().map(str::to_string);
    let (output, streams, _, _) = result.into_parts();
    let (output, streams) = (output.into_vec(), streams.map(|s| *s).unwrap_or_default());
    Outcome { state, output, streams, error }
}

/// A parallel run over the job's inputs, on a pool of its own so that it
/// cannot starve the single-invocation jobs of the manager's pool.
fn run_parallel(shared: &Shared, job: &Job, spec: JobSpec) -> Outcome {
    let throttle = spec.throttle.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let session = spec.session.clone().unwrap_or_else(|| shared.pool.session().clone());
    let total = spec.total();
    // The throttle counts items in flight; the threads stay at the CPU count.
    let pool = match RunspacePool::builder().min(1).throttle(throttle).session(session).open() {
        Ok(pool) => pool,
        Err(e) => return Outcome::failed(e.to_string()),
    };
    let mut parallel = pool.parallel(&spec.script);
    for (name, value) in spec.params {
        parallel = match parallel.param(&name, value) {
            Ok(p) => p,
            Err(e) => return Outcome::failed(e.to_string()),
        };
    }
    if let Some(timeout) = spec.timeout {
        parallel = parallel.timeout(timeout);
    }
    let mut results = parallel.run(spec.inputs.unwrap_or_default());
    {
        let mut stopper = job.stopper.lock().unwrap_or_else(|e| e.into_inner());
        *stopper = Stopper::Parallel(results.control());
        if job.stop_requested.load(Ordering::SeqCst) {
            results.control().stop();
        }
    }
    let mut done = 0;
    let mut tally = Tally::default();
    loop {
        match results.next_timeout(ITEM_POLL) {
            Next::Item(item) => {
                done += 1;
                let progress = Progress { done, total };
                notify(shared, &JobEvent::Item { name: &job.name, item: &item, progress });
                tally.add(&item, shared.keep_items);
                let mut record = job.lock();
                record.progress = progress;
                if shared.keep_items {
                    record.items.push(item);
                }
            }
            Next::Idle => {}
            Next::Done => break,
        }
    }
    *job.stopper.lock().unwrap_or_else(|e| e.into_inner()) = Stopper::None;
    drop(results);
    pool.close();

    let mut record = job.lock();
    record.items.sort_by_key(|i| i.index);
    let output = record.items.iter().map(|i| i.result.clone()).collect();
    let streams = if shared.keep_items { merge_streams(&record.items) } else { tally.streams };
    drop(record);
    // An item that wrote errors did complete: it is counted apart.
    let (unfinished, with_errors) = (tally.unfinished, tally.with_errors);
    let (state, error) = if job.stop_requested.load(Ordering::SeqCst) {
        (JobState::Stopped, Some(format!("stopped after {done} of {total} items")))
    } else {
        match (unfinished, with_errors) {
            (0, 0) => (JobState::Completed, None),
            (0, n) => (JobState::CompletedWithErrors, Some(format!("{n} of {total} items completed with errors"))),
            (u, 0) => (JobState::CompletedWithErrors, Some(format!("{u} of {total} items did not complete"))),
            (u, n) => (
                JobState::CompletedWithErrors,
                Some(format!("{u} of {total} items did not complete; {n} completed with errors")),
            ),
        }
    };
    Outcome { state, output, streams, error }
}

/// How many records of each stream a job that does not keep its items
/// merges (each item's event carries all of its own).
const MERGED_STREAM_RECORDS: usize = 1000;

/// What a run over inputs counts as items finish, without keeping them.
#[derive(Default)]
struct Tally {
    unfinished: usize,
    with_errors: usize,
    /// The first records of each stream, when items are not kept.
    streams: Streams,
}

impl Tally {
    fn add(&mut self, item: &ItemResult, keep_items: bool) {
        match item.status {
            Status::Completed => {}
            Status::CompletedWithErrors => self.with_errors += 1,
            _ => self.unfinished += 1,
        }
        if !keep_items {
            merge_item(&mut self.streams, item, MERGED_STREAM_RECORDS);
        }
    }
}

/// Every item's records, each prefixed with its item's index.
fn merge_streams(items: &[ItemResult]) -> Streams {
    let mut streams = Streams::default();
    for item in items {
        merge_item(&mut streams, item, usize::MAX);
    }
    streams
}

/// Adds an item's records, prefixed with its index, up to `cap` per stream.
fn merge_item(streams: &mut Streams, item: &ItemResult, cap: usize) {
    let tag = |records: &[String], into: &mut Vec<String>| {
        let room = cap.saturating_sub(into.len());
        into.extend(records.iter().take(room).map(|r| format!("item {}: {r}", item.index)));
    };
    let records = item.streams();
    tag(&records.error, &mut streams.error);
    tag(&records.warning, &mut streams.warning);
    tag(&records.verbose, &mut streams.verbose);
    tag(&records.debug, &mut streams.debug);
    tag(&records.information, &mut streams.information);
    let room = cap.saturating_sub(streams.progress.len());
    streams.progress.extend(records.progress.iter().take(room).cloned());
}

/// Ends a job that never started (stopped while queued, or the manager
/// shut down). Does nothing if a runner already owns the job.
pub(super) fn finish_unstarted(shared: &Shared, job: &Job, message: &str) {
    if job.spec.lock().unwrap_or_else(|e| e.into_inner()).take().is_some() {
        finish(shared, job, Outcome::stopped(message));
    }
}

/// Publishes the end: the observer first, then waiters, so anything the
/// observer persists is in place when a `wait` returns.
fn finish(shared: &Shared, job: &Job, outcome: Outcome) {
    let ended = SystemTime::now();
    let snapshot = {
        let mut record = job.lock();
        record.output = outcome.output;
        record.streams = outcome.streams;
        record.error = outcome.error;
        record.end = Some(ended);
        if !record.parallel && outcome.state != JobState::Stopped {
            record.progress.done = record.progress.total;
        }
        let mut snapshot = record.clone();
        snapshot.state = outcome.state;
        snapshot.history.push((outcome.state, ended));
        snapshot
    };
    notify(shared, &JobEvent::Finished(&snapshot));
    {
        let mut record = job.lock();
        record.state = outcome.state;
        record.history.push((outcome.state, ended));
    }
    job.changed.notify_all();
}

/// Tells the observer, if any; a panicking observer must not take the
/// runner (and with it the manager's bookkeeping) down.
fn notify(shared: &Shared, event: &JobEvent<'_>) {
    if let Some(observer) = &shared.observer {
        let _ = catch_unwind(AssertUnwindSafe(|| observer(event)));
    }
}
