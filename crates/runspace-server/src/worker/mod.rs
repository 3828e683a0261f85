//! The worker loop of `rsp worker`: lease chunks of cluster jobs from a
//! PostgreSQL store, run their items in a local pool, and record their
//! results through the fence (see [`crate::store::work`]).
//!
//! The loop survives the database going away: every store call that fails
//! is retried with back-off (100 ms doubling to 5 s) until it succeeds or
//! the worker is told to stop; a completion retried after a commit whose
//! answer was lost is fenced off, never recorded twice.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runspace::{Grants, Status};

use crate::store::work::{Completion, Lease, WorkerInfo};
use crate::store::PgStore;

mod session;

use session::{prepare, Prepared};

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The PostgreSQL store's URL.
    pub url: String,
    /// Its name in the `workers` table.
    pub name: String,
    /// How many items it runs at once.
    pub slots: usize,
    /// The most capabilities it grants a job (a job asking for more is refused here).
    pub allow_max: Grants,
    /// `allow_max` as given, for the `workers` table and messages.
    pub allow_max_spec: String,
    /// How long a lease lasts without a heartbeat.
    pub lease: Duration,
    /// How often leases are extended.
    pub heartbeat: Duration,
    /// How often an idle worker looks for work when no notification comes.
    pub poll: Duration,
    /// On a stop, how long the chunk in hand may still run before it is given back.
    pub grace: Duration,
}

/// What the worker reports as it goes (the command line logs it).
#[derive(Debug, Clone)]
pub enum WorkerEvent {
    /// Connected and registered, under this lease owner id.
    Ready(String),
    /// The database failed; retrying in this long.
    Retrying(String, Duration),
    /// A job was refused on this worker, and why.
    Refused(String, String),
    /// A completion was fenced off (this worker's lease had been taken over).
    Rejected(String, i32),
    /// A chunk was given back at shutdown.
    Released(String, i32),
}

/// What a worker did, when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerSummary {
    /// Items recorded.
    pub items: u64,
    /// Completions fenced off.
    pub rejected: u64,
    /// Chunks given back at shutdown.
    pub released: u64,
}

/// A unique lease owner id: the name, the process and a start time.
fn worker_id(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{name}:{}:{:x}", std::process::id(), nanos & 0xffff_ffff)
}

/// The host's name.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf, which we own.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if ok {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "unknown".into()
    }
}

/// Whether opening the store failed for a reason that waiting cannot mend.
fn lasting(error: &str) -> bool {
    error.starts_with("invalid database URL") || error.contains("written by a newer version")
}

/// Retries `f` with back-off until it succeeds; `None` once `stop` is set.
fn retry<T>(stop: &AtomicBool, events: &dyn Fn(WorkerEvent), mut f: impl FnMut() -> Result<T, String>) -> Option<T> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match f() {
            Ok(t) => return Some(t),
            Err(e) => {
                if stop.load(Ordering::Relaxed) {
                    return None;
                }
                events(WorkerEvent::Retrying(e, backoff));
                sleep_unless(stop, backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Sleeps for `d`, or less once `stop` is set.
fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20).min(end.saturating_duration_since(Instant::now())));
    }
}

/// Runs a worker until `stop` is set; then finishes (within the grace) or
/// gives back the chunk in hand, and marks itself stopped.
pub fn run_worker(
    config: &WorkerConfig,
    stop: &Arc<AtomicBool>,
    events: &(dyn Fn(WorkerEvent) + Sync),
) -> Result<WorkerSummary, String> {
    if config.slots == 0 {
        return Err("a worker needs at least one slot".into());
    }
    // A database that answers but will never do (a newer schema) or a URL
    // that can never connect is the user's to fix: said once, not retried
    // for ever as if the database were down.
    let store = retry(stop, events, || match PgStore::open(&config.url) {
        Err(e) if lasting(&e) => Ok(Err(e)),
        opened => opened.map(Ok),
    })
    .ok_or_else(|| "stopped before the database answered".to_string())??;
    let store = Arc::new(store);
    let info = WorkerInfo {
        id: worker_id(&config.name),
        name: config.name.clone(),
        host: host_name(),
        slots: u32::try_from(config.slots).unwrap_or(u32::MAX),
        allow_max: config.allow_max_spec.clone(),
    };
    if retry(stop, events, || store.register_worker(&info).map_err(|e| e.to_string())).is_none() {
        return Ok(WorkerSummary::default());
    }
    events(WorkerEvent::Ready(info.id.clone()));
    let wake = store.listen_for_work();
    // The chunks this worker still holds, as the last heartbeat found them.
    let held: Arc<Held> = Arc::default();
    // The chunk the work loop is running, which the heartbeat keeps leased.
    let current: Arc<Current> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let summary = std::thread::scope(|scope| {
        let beat = {
            let (store, held, done, id) = (store.clone(), held.clone(), done.clone(), info.id.clone());
            let current = current.clone();
            let (lease, every) = (config.lease, config.heartbeat);
            scope.spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    let mine: Vec<(i64, i32, i32)> =
                        current.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect();
                    if let Ok(chunks) = store.heartbeat(&id, lease, &mine) {
                        *held.lock().unwrap_or_else(|e| e.into_inner()) = Some((at, chunks.into_iter().collect()));
                    }
                    sleep_unless(&done, every);
                }
            })
        };
        let summary = work_loop(config, &store, &info.id, stop, events, &wake, (&held, &current));
        done.store(true, Ordering::Relaxed);
        let _ = beat.join();
        summary
    });
    let _ = store.worker_stopped(&info.id);
    Ok(summary)
}

/// When the last heartbeat began, and the chunks it found this worker
/// holding.
type Held = Mutex<Option<(Instant, HashSet<(i64, i32)>)>>;

/// The chunks (`(job, chunk, attempt)`) the worker holds: the one the
/// work loop is running, and the one whose completion is being recorded.
type Current = Mutex<Vec<(i64, i32, i32)>>;

/// A chunk's key in [`Current`].
fn key(lease: &Lease) -> (i64, i32, i32) {
    (lease.job_id, lease.chunk, lease.attempt)
}

/// The worker no longer holds `lease`'s chunk (it ran or was given up).
fn forget(current: &Current, lease: &Lease) {
    current.lock().unwrap_or_else(|e| e.into_inner()).retain(|k| *k != key(lease));
}

/// The jobs this worker has prepared (a pool each), a few at most.
struct PreparedJobs {
    jobs: HashMap<i64, Arc<Prepared>>,
    order: Vec<i64>,
}

const PREPARED_JOBS: usize = 4;

/// A chunk's records, `(index, record, completed)`, on their way to the store.
type Records = Vec<(u64, String, bool)>;

/// Claims, runs and completes chunks until `stop`. A chunk's completion
/// is recorded by a second thread while the next chunk is claimed and
/// run, so the pool does not wait on the database's commit (nor the
/// database on the pool); at most one completion waits at a time.
fn work_loop(
    config: &WorkerConfig,
    store: &PgStore,
    id: &str,
    stop: &AtomicBool,
    events: &(dyn Fn(WorkerEvent) + Sync),
    wake: &crossbeam_channel::Receiver<()>,
    (held, current): (&Held, &Current),
) -> WorkerSummary {
    let work = Work { config, store, id, stop, events, held, current, summary: Mutex::default() };
    std::thread::scope(|scope| {
        // A rendezvous: the hand-over waits until the previous completion is recorded.
        let (to_record, recordings) = crossbeam_channel::bounded::<(Lease, Records)>(0);
        scope.spawn(|| work.record(recordings));
        work.claim_and_run(wake, &to_record);
    });
    work.summary.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// What the work loop's two threads share.
struct Work<'a> {
    config: &'a WorkerConfig,
    store: &'a PgStore,
    id: &'a str,
    stop: &'a AtomicBool,
    events: &'a (dyn Fn(WorkerEvent) + Sync),
    held: &'a Held,
    current: &'a Current,
    summary: Mutex<WorkerSummary>,
}

impl Work<'_> {
    fn count(&self, f: impl FnOnce(&mut WorkerSummary)) {
        f(&mut self.summary.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Records each chunk handed over, through the fence.
    fn record(&self, recordings: crossbeam_channel::Receiver<(Lease, Records)>) {
        for (lease, records) in recordings {
            let n = records.len() as u64;
            let completed = retry(self.stop, self.events, || {
                self.store.complete(self.id, &lease, records.clone()).map_err(|e| e.to_string())
            });
            forget(self.current, &lease);
            match completed {
                Some(Completion::Recorded) => self.count(|s| s.items += n),
                Some(Completion::Rejected) => {
                    self.count(|s| s.rejected += 1);
                    (self.events)(WorkerEvent::Rejected(lease.job.clone(), lease.chunk));
                }
                None => {}
            }
        }
    }

    /// Claims a chunk, runs it, and hands its records to `to_record`; until `stop`.
    fn claim_and_run(
        &self,
        wake: &crossbeam_channel::Receiver<()>,
        to_record: &crossbeam_channel::Sender<(Lease, Records)>,
    ) {
        let mut refused: Vec<i64> = Vec::new();
        let mut prepared = PreparedJobs { jobs: HashMap::new(), order: Vec::new() };
        while !self.stop.load(Ordering::Relaxed) {
            let Some(claimed) = retry(self.stop, self.events, || {
                self.store.claim(self.id, self.config.lease, &refused).map_err(|e| e.to_string())
            }) else {
                break;
            };
            let Some(lease) = claimed else {
                // Idle: end any job whose last completion did not (seen
                // rarely with two workers; cause not found), so it does not
                // stay Running when nobody watches it. Best effort: the
                // next idle poll tries again.
                let _ = self.store.end_unended();
                let _ = wake.recv_timeout(self.config.poll);
                continue;
            };
            self.current.lock().unwrap_or_else(|e| e.into_inner()).push(key(&lease));
            // Taken once `current` holds the chunk: a heartbeat that began
            // earlier may have read no chunk to extend (and so found none
            // held), and must not be taken to mean this lease was lost.
            let claimed_at = Instant::now();
            if let Some(why) = &lease.malformed {
                // Refused like a job beyond the grants: said on the job, given
                // back unrun, never completed as a chunk of no items.
                let reason = format!("chunk {} of the job cannot be run: {why}", lease.chunk);
                (self.events)(WorkerEvent::Refused(lease.job.clone(), reason.clone()));
                let _ = self.store.refuse(lease.job_id, &self.config.name, &reason);
                let _ = self.store.release(self.id, &lease);
                forget(self.current, &lease);
                refused.push(lease.job_id);
                continue;
            }
            let Some(job) = self.job_of(&lease, &mut prepared, &mut refused) else {
                forget(self.current, &lease);
                continue;
            };
            match run_chunk(self.config, &job, &lease, self.stop, &|| still_held(self.held, &lease, claimed_at)) {
                Ran::Whole(records) => {
                    if let Err(crossbeam_channel::SendError((lease, _))) = to_record.send((lease, records)) {
                        forget(self.current, &lease);
                    }
                }
                Ran::LeaseLost => {
                    forget(self.current, &lease);
                    if let Ok(Completion::Rejected) = self.store.abandon(self.id, &lease) {
                        self.count(|s| s.rejected += 1);
                        (self.events)(WorkerEvent::Rejected(lease.job.clone(), lease.chunk));
                    }
                }
                Ran::GivenUp => {
                    forget(self.current, &lease);
                    if self.store.release(self.id, &lease).is_ok() {
                        self.count(|s| s.released += 1);
                        (self.events)(WorkerEvent::Released(lease.job.clone(), lease.chunk));
                    }
                }
            }
        }
    }

    /// The prepared job of `lease`'s chunk (prepared now if it is new
    /// here); `None` if the job is gone, or refused here (then the chunk is
    /// given back, the refusal recorded, and the job skipped from now on).
    fn job_of(&self, lease: &Lease, prepared: &mut PreparedJobs, refused: &mut Vec<i64>) -> Option<Arc<Prepared>> {
        match prepared.jobs.get(&lease.job_id) {
            Some(job) => Some(job.clone()),
            None => {
                let request =
                    retry(self.stop, self.events, || self.store.job_request(lease.job_id).map_err(|e| e.to_string()));
                let request = request.flatten()?;
                match prepare(&request, &self.config.allow_max, self.config.slots) {
                    Ok(job) => {
                        let _ = retry(self.stop, self.events, || {
                            self.store.job_started(lease.job_id).map_err(|e| e.to_string())
                        });
                        let job = Arc::new(job);
                        if prepared.order.len() >= PREPARED_JOBS {
                            let oldest = prepared.order.remove(0);
                            prepared.jobs.remove(&oldest);
                        }
                        prepared.order.push(lease.job_id);
                        prepared.jobs.insert(lease.job_id, job.clone());
                        Some(job)
                    }
                    Err(refusal) => {
                        (self.events)(WorkerEvent::Refused(lease.job.clone(), refusal.0.clone()));
                        let _ = self.store.refuse(lease.job_id, &self.config.name, &refusal.0);
                        let _ = self.store.release(self.id, lease);
                        refused.push(lease.job_id);
                        None
                    }
                }
            }
        }
    }
}

/// Whether the worker still holds `lease`: only a heartbeat that began
/// after the claim can say it does not.
fn still_held(held: &Held, lease: &Lease, claimed_at: Instant) -> bool {
    match held.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        Some((at, chunks)) if *at > claimed_at => chunks.contains(&(lease.job_id, lease.chunk)),
        _ => true,
    }
}

/// How running a chunk ended.
enum Ran {
    /// Every item ran: `(index, record, completed)`.
    Whole(Vec<(u64, String, bool)>),
    /// The lease was lost (taken over, or the job stopped): the items were stopped.
    LeaseLost,
    /// A stop's grace ran out: the items were stopped.
    GivenUp,
}

/// Runs a chunk's items.
fn run_chunk(
    config: &WorkerConfig,
    job: &Prepared,
    lease: &Lease,
    stop: &AtomicBool,
    still_held: &dyn Fn() -> bool,
) -> Ran {
    let mut run = job.pool.parallel(&job.script);
    for (k, v) in &job.params {
        match run.param(k, v.clone()) {
            Ok(r) => run = r,
            Err(_) => return Ran::GivenUp,
        }
    }
    if let Some(t) = job.timeout {
        run = run.timeout(t);
    }
    let inputs: Vec<(u64, serde_json::Value)> =
        lease.inputs.iter().cloned().enumerate().map(|(i, v)| (lease.first + i as u64, v)).collect();
    let mut results = run.run_indexed(inputs);
    let mut records = Vec::with_capacity(lease.inputs.len());
    let mut stopping_since: Option<Instant> = None;
    loop {
        match results.next_timeout(Duration::from_millis(200)) {
            runspace::Next::Item(item) => {
                let ok = matches!(item.status, Status::Completed | Status::CompletedWithErrors);
                let text = serde_json::to_string(&item).unwrap_or_default();
                records.push((item.index, text, ok));
            }
            runspace::Next::Done => return Ran::Whole(records),
            runspace::Next::Idle => {}
        }
        if stop.load(Ordering::Relaxed) {
            let since = *stopping_since.get_or_insert_with(Instant::now);
            if since.elapsed() > config.grace {
                return Ran::GivenUp;
            }
        }
        if !still_held() {
            return Ran::LeaseLost;
        }
    }
}
