//! Named background jobs on a pool: the original's `RunspaceJobManager`
//! (StartJob, GetJobResult, WaitForJob, WaitForAllJobs, RemoveJob), with a
//! queue of its own so that at most `max_concurrent` jobs run at once.
//!
//! ```
//! use runspace::{JobManager, JobSpec, JobState, Script};
//! use serde_json::json;
//! use std::time::Duration;
//!
//! let jobs = JobManager::new(5).unwrap();
//! let script = Script::new("return 'done after ' .. seconds").unwrap();
//! let name = jobs.start(JobSpec::new(&script).name("LongRunningJob").param("seconds", json!(0))).unwrap();
//! let info = jobs.wait(&name, Duration::from_secs(10)).unwrap();
//! assert_eq!(info.state, JobState::Completed);
//! assert_eq!(info.result(), json!("done after 0"));
//! ```
//!
//! A job is either one invocation, or a parallel run over a list of inputs
//! on a pool of its own (then [`JobInfo::progress`] counts items). The
//! manager never prints; an observer ([`JobManagerBuilder::observer`]) sees
//! every transition, which is how `rsp serve` persists jobs.

mod run;
mod types;

pub use types::{JobError, JobEvent, JobInfo, JobSpec, JobState, Progress};

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::error::Error;
use crate::invocation::InvocationHandle;
use crate::parallel::RunControl;
use crate::pool::RunspacePool;
use crate::session::{check_name, SessionState};
use crate::streams::Streams;

type Observer = Arc<dyn Fn(&JobEvent<'_>) + Send + Sync>;

/// Configures a [`JobManager`].
///
/// ```
/// use runspace::{JobEvent, JobManager, SessionState};
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// let finished = Arc::new(AtomicUsize::new(0));
/// let seen = finished.clone();
/// let jobs = JobManager::builder()
///     .max_concurrent(3)
///     .session(SessionState::new())
///     .observer(move |e| if let JobEvent::Finished(_) = e { seen.fetch_add(1, Ordering::SeqCst); })
///     .build()
///     .unwrap();
/// assert_eq!(jobs.max_concurrent(), 3);
/// ```
#[must_use]
pub struct JobManagerBuilder {
    max: usize,
    session: SessionState,
    observer: Option<Observer>,
    keep_items: bool,
}

impl JobManagerBuilder {
    /// The most jobs running at once (default 5, like the original); more wait as `Queued`.
    pub fn max_concurrent(mut self, max: usize) -> Self {
        self.max = max;
        self
    }

    /// The session of the manager's pool (jobs without a session of their own use it).
    pub fn session(mut self, session: SessionState) -> Self {
        self.session = session;
        self
    }

    /// Called on every job transition, on the thread that made it. Keep it
    /// short: a slow observer delays the job it reports on.
    pub fn observer(mut self, f: impl Fn(&JobEvent<'_>) + Send + Sync + 'static) -> Self {
        self.observer = Some(Arc::new(f));
        self
    }

    /// Whether a run over inputs keeps every finished item in memory for
    /// [`JobInfo::items`] and [`JobInfo::output`] (default: yes). A holder
    /// whose observer stores each [`JobEvent::Item`] elsewhere (a server with
    /// a database) turns this off, so a job's memory does not grow with its
    /// items: its info then counts items, and its streams keep the first
    /// 1,000 records of each stream (every item's own records are in its event).
    pub fn keep_items(mut self, keep: bool) -> Self {
        self.keep_items = keep;
        self
    }

    /// Opens the manager's pool (`max_concurrent` runspaces at most, one warm).
    pub fn build(self) -> Result<JobManager, JobError> {
        if self.max == 0 {
            return Err(JobError::Engine(Error::Pool("max_concurrent must be at least 1".into())));
        }
        let pool = RunspacePool::builder().min(1).max(self.max).session(self.session).open()?;
        Ok(JobManager {
            shared: Arc::new(Shared {
                pool,
                max: self.max,
                observer: self.observer,
                keep_items: self.keep_items,
                table: Mutex::new(Table::default()),
                next_seq: AtomicU64::new(0),
            }),
        })
    }
}

/// Runs named jobs in the background, at most `max_concurrent` at once.
/// Dropping it stops every job and closes every runspace.
///
/// ```
/// use runspace::{JobManager, JobSpec, JobState, Script};
/// use std::time::Duration;
/// let jobs = JobManager::new(1).unwrap();
/// let slow = Script::new("sleep(3600)").unwrap();
/// let a = jobs.start(JobSpec::new(&slow).name("a")).unwrap();
/// let b = jobs.start(JobSpec::new(&slow).name("b")).unwrap();
/// assert_eq!(jobs.get(&b).unwrap().state, JobState::Queued);
/// assert!(jobs.wait(&a, Duration::from_millis(10)).is_err());
/// jobs.stop(&a).unwrap();
/// assert_eq!(jobs.get(&a).unwrap().state, JobState::Stopped);
/// jobs.remove(&b).unwrap();
/// assert_eq!(jobs.list().len(), 1);
/// ```
pub struct JobManager {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) pool: RunspacePool,
    max: usize,
    pub(crate) observer: Option<Observer>,
    pub(crate) keep_items: bool,
    table: Mutex<Table>,
    next_seq: AtomicU64,
}

#[derive(Default)]
struct Table {
    jobs: HashMap<String, Arc<Job>>,
    queue: VecDeque<Arc<Job>>,
    running: usize,
    closing: bool,
    runners: Vec<JoinHandle<()>>,
}

/// One job, shared by the manager, its runner thread and its waiters.
pub(crate) struct Job {
    pub(crate) name: String,
    seq: u64,
    pub(crate) spec: Mutex<Option<JobSpec>>,
    pub(crate) record: Mutex<JobInfo>,
    pub(crate) changed: Condvar,
    /// Set by `stop`; the runner turns the end into `Stopped`.
    pub(crate) stop_requested: AtomicBool,
    /// How to stop what runs now.
    pub(crate) stopper: Mutex<Stopper>,
}

#[derive(Default)]
pub(crate) enum Stopper {
    #[default]
    None,
    Invocation(Arc<InvocationHandle>),
    Parallel(RunControl),
}

impl Job {
    pub(crate) fn lock(&self) -> MutexGuard<'_, JobInfo> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn request_stop(&self) {
        let stopper = self.stopper.lock().unwrap_or_else(|e| e.into_inner());
        self.stop_requested.store(true, Ordering::SeqCst);
        match &*stopper {
            Stopper::None => {}
            Stopper::Invocation(handle) => handle.stop(),
            Stopper::Parallel(control) => control.stop(),
        }
    }

    /// Waits until the job has finished or `deadline` passes.
    fn wait_until(&self, deadline: Instant) -> Option<JobInfo> {
        let mut record = self.lock();
        loop {
            if record.state.is_finished() {
                return Some(record.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            record = self.changed.wait_timeout(record, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

impl JobManager {
    /// A manager running at most `max_concurrent` jobs, on a pool with an empty session.
    pub fn new(max_concurrent: usize) -> Result<JobManager, JobError> {
        JobManager::builder().max_concurrent(max_concurrent).build()
    }

    /// Like [`new`](Self::new), with the session every job starts with
    /// (the original's `InitialSessionState`).
    pub fn with_session(max_concurrent: usize, session: SessionState) -> Result<JobManager, JobError> {
        JobManager::builder().max_concurrent(max_concurrent).session(session).build()
    }

    /// Starts configuring a manager.
    pub fn builder() -> JobManagerBuilder {
        JobManagerBuilder { max: 5, session: SessionState::new(), observer: None, keep_items: true }
    }

    /// The most jobs running at once.
    pub fn max_concurrent(&self) -> usize {
        self.shared.max
    }

    /// Starts a job (or queues it when `max_concurrent` already run) and
    /// returns its name.
    pub fn start(&self, spec: JobSpec) -> Result<String, JobError> {
        for (name, _) in &spec.params {
            check_name("parameter", name)?;
        }
        let submitted = SystemTime::now();
        let mut table = self.table();
        if table.closing {
            return Err(JobError::Closed);
        }
        let name = match &spec.name {
            Some(name) => {
                check_job_name(name)?;
                if table.jobs.contains_key(name) {
                    return Err(JobError::Duplicate(name.clone()));
                }
                name.clone()
            }
            None => loop {
                let candidate = auto_name();
                if !table.jobs.contains_key(&candidate) {
                    break candidate;
                }
            },
        };
        let info = JobInfo {
            name: name.clone(),
            state: JobState::Queued,
            output: Vec::new(),
            items: Vec::new(),
            streams: Streams::default(),
            error: None,
            submitted,
            start: None,
            end: None,
            progress: Progress { done: 0, total: spec.total() },
            history: vec![(JobState::Queued, submitted)],
            parallel: spec.inputs.is_some(),
        };
        let job = Arc::new(Job {
            name: name.clone(),
            seq: self.shared.next_seq.fetch_add(1, Ordering::Relaxed),
            spec: Mutex::new(Some(spec)),
            record: Mutex::new(info),
            changed: Condvar::new(),
            stop_requested: AtomicBool::new(false),
            stopper: Mutex::new(Stopper::None),
        });
        table.jobs.insert(name.clone(), job.clone());
        if table.running < self.shared.max {
            // Running from the moment `start` returns, as in the original;
            // the runner thread picks it up within microseconds.
            job.lock().mark_running(SystemTime::now());
            table.running += 1;
            table.runners.retain(|r| !r.is_finished());
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("job-{name}"))
                .spawn(move || run::runner(&shared, job))
                .map_err(|e| Error::Pool(format!("cannot start a job thread: {e}")));
            match spawned {
                Ok(handle) => table.runners.push(handle),
                Err(e) => {
                    table.running -= 1;
                    table.jobs.remove(&name);
                    return Err(e.into());
                }
            }
        } else {
            table.queue.push_back(job);
        }
        Ok(name)
    }

    /// A snapshot of the job.
    pub fn get(&self, name: &str) -> Result<JobInfo, JobError> {
        Ok(self.job(name)?.lock().clone())
    }

    /// Every job, oldest first.
    pub fn list(&self) -> Vec<JobInfo> {
        let mut jobs: Vec<Arc<Job>> = self.table().jobs.values().cloned().collect();
        jobs.sort_by_key(|j| j.seq);
        jobs.iter().map(|j| j.lock().clone()).collect()
    }

    /// Jobs running now.
    pub fn running(&self) -> Vec<JobInfo> {
        self.list().into_iter().filter(|j| j.state == JobState::Running).collect()
    }

    /// Jobs that have finished, however they ended.
    pub fn finished(&self) -> Vec<JobInfo> {
        self.list().into_iter().filter(|j| j.state.is_finished()).collect()
    }

    /// Waits up to `timeout` for the job to finish; on timeout the error says so.
    pub fn wait(&self, name: &str, timeout: Duration) -> Result<JobInfo, JobError> {
        let job = self.job(name)?;
        let started = Instant::now();
        job.wait_until(started + timeout)
            .ok_or_else(|| JobError::Timeout { what: format!("job '{name}'"), waited: started.elapsed() })
    }

    /// Waits up to `timeout` for every job started so far to finish.
    pub fn wait_all(&self, timeout: Duration) -> Result<Vec<JobInfo>, JobError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut jobs: Vec<Arc<Job>> = self.table().jobs.values().cloned().collect();
        jobs.sort_by_key(|j| j.seq);
        let mut done = Vec::with_capacity(jobs.len());
        let mut pending = Vec::new();
        for job in &jobs {
            match job.wait_until(deadline) {
                Some(info) => done.push(info),
                None => pending.push(job.name.clone()),
            }
        }
        if pending.is_empty() {
            return Ok(done);
        }
        let what = format!("{} job(s) still unfinished: {}", pending.len(), pending.join(", "));
        Err(JobError::Timeout { what, waited: started.elapsed() })
    }

    /// Stops the job and waits (up to 10 s, normally milliseconds) for it to
    /// end: a queued job never starts, a running one is interrupted even
    /// inside `while true do end` or `sleep(3600)`. Stopping a finished job
    /// changes nothing. Returns the final snapshot.
    pub fn stop(&self, name: &str) -> Result<JobInfo, JobError> {
        let job = self.job(name)?;
        self.stop_job(&job);
        let started = Instant::now();
        job.wait_until(started + Duration::from_secs(10))
            .ok_or_else(|| JobError::Timeout { what: format!("job '{name}' to stop"), waited: started.elapsed() })
    }

    /// Stops the job if it runs, then forgets it. Returns its last snapshot.
    pub fn remove(&self, name: &str) -> Result<JobInfo, JobError> {
        let info = self.stop(name)?;
        self.table().jobs.remove(name);
        Ok(info)
    }

    /// Forgets every finished job; returns how many. A long-lived holder
    /// (a server that persists jobs elsewhere) calls this to bound memory.
    pub fn forget_finished(&self) -> usize {
        let mut table = self.table();
        let before = table.jobs.len();
        table.jobs.retain(|_, job| !job.lock().state.is_finished());
        before - table.jobs.len()
    }

    /// Runspaces open in the manager's pool (jobs with their own session or
    /// inputs open theirs while they run).
    pub fn open_runspaces(&self) -> usize {
        self.shared.pool.open_runspaces()
    }

    /// Stops every job, waits up to `grace` for the running ones first when
    /// `grace` is not zero, and takes no new ones. Dropping does this with no grace.
    pub fn shutdown(&self, grace: Duration) {
        let (queued, jobs): (Vec<Arc<Job>>, Vec<Arc<Job>>) = {
            let mut table = self.table();
            table.closing = true;
            (table.queue.drain(..).collect(), table.jobs.values().cloned().collect())
        };
        // Outside the table's lock: the observer may take its time.
        for job in queued {
            run::finish_unstarted(&self.shared, &job, "stopped: the job manager shut down before it started");
        }
        let deadline = Instant::now() + grace;
        for job in &jobs {
            if !grace.is_zero() {
                job.wait_until(deadline);
            }
            job.request_stop();
        }
        let runners = std::mem::take(&mut self.table().runners);
        for runner in runners {
            let _ = runner.join();
        }
    }

    fn stop_job(&self, job: &Arc<Job>) {
        let was_queued = {
            let mut table = self.table();
            let before = table.queue.len();
            table.queue.retain(|j| !Arc::ptr_eq(j, job));
            before != table.queue.len()
        };
        if was_queued {
            run::finish_unstarted(&self.shared, job, "stopped before it started");
        } else {
            job.request_stop();
        }
    }

    fn job(&self, name: &str) -> Result<Arc<Job>, JobError> {
        self.table().jobs.get(name).cloned().ok_or_else(|| JobError::NotFound(name.to_string()))
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.shared.table()
    }
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by a runner whose job ended: the next queued job to run on
    /// this thread, or `None` (and one running slot freed).
    pub(crate) fn next_job(&self) -> Option<Arc<Job>> {
        let mut table = self.table();
        if !table.closing {
            if let Some(job) = table.queue.pop_front() {
                return Some(job);
            }
        }
        table.running -= 1;
        None
    }
}

impl Drop for JobManager {
    fn drop(&mut self) {
        self.shutdown(Duration::ZERO);
    }
}

impl fmt::Debug for JobManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let table = self.table();
        f.debug_struct("JobManager")
            .field("max_concurrent", &self.shared.max)
            .field("jobs", &table.jobs.len())
            .field("running", &table.running)
            .field("queued", &table.queue.len())
            .finish()
    }
}

/// Checks a job name: 1–100 of letters, digits, `_`, `-`, `.`, starting
/// with a letter or digit, so it is safe in a URL path and a file name.
///
/// ```
/// assert!(runspace::check_job_name("nightly-backup_2.1").is_ok());
/// assert!(runspace::check_job_name("../etc").is_err());
/// ```
pub fn check_job_name(name: &str) -> Result<(), JobError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(JobError::InvalidName(name.to_string()))
    }
}

/// A fresh name like `Job_3f9c2a1b` (random; the caller checks it is unused).
///
/// ```
/// let name = runspace::auto_job_name();
/// assert!(name.starts_with("Job_") && name.len() == 12);
/// ```
pub fn auto_job_name() -> String {
    auto_name()
}

fn auto_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // RandomState is seeded from the OS once per process and varied per
    // instance; mixing in a counter and the clock keeps names apart across
    // calls without a dependency on a random-number crate.
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos());
    format!("Job_{:08x}", hasher.finish() as u32)
}
