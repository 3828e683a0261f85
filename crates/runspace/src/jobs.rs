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

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Error;
use crate::invocation::{collapse, InvocationHandle};
use crate::parallel::{ItemResult, RunControl};
use crate::pool::RunspacePool;
use crate::script::Script;
use crate::session::{check_name, SessionState};
use crate::streams::Streams;

/// Where a job is in its life.
///
/// ```
/// use runspace::JobState;
/// assert!(JobState::Stopped.is_finished());
/// assert_eq!("CompletedWithErrors".parse::<JobState>().unwrap(), JobState::CompletedWithErrors);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobState {
    /// Accepted, waiting for a free slot (the manager runs at most `max_concurrent`).
    Queued,
    /// Running now.
    Running,
    /// Ran to the end with nothing on the error stream.
    Completed,
    /// Ran to the end but wrote errors (or, for a run over inputs, some items did not complete).
    CompletedWithErrors,
    /// Raised an error, timed out, or could not start.
    Failed,
    /// Stopped by a caller (or by the manager being dropped).
    Stopped,
    /// Was running or queued when its server died; set by `rsp serve` at restart.
    Interrupted,
}

impl JobState {
    /// Every state, in life order.
    pub const ALL: [JobState; 7] = [
        JobState::Queued,
        JobState::Running,
        JobState::Completed,
        JobState::CompletedWithErrors,
        JobState::Failed,
        JobState::Stopped,
        JobState::Interrupted,
    ];

    /// True once the job can change no more.
    pub fn is_finished(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Running)
    }

    /// The name used in output.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "Queued",
            JobState::Running => "Running",
            JobState::Completed => "Completed",
            JobState::CompletedWithErrors => "CompletedWithErrors",
            JobState::Failed => "Failed",
            JobState::Stopped => "Stopped",
            JobState::Interrupted => "Interrupted",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = String;

    fn from_str(s: &str) -> Result<JobState, String> {
        JobState::ALL.into_iter().find(|st| st.as_str().eq_ignore_ascii_case(s)).ok_or_else(|| {
            let names: Vec<_> = JobState::ALL.iter().map(|s| s.as_str()).collect();
            format!("unknown job state '{s}' (expected one of {})", names.join(", "))
        })
    }
}

/// Why a job operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobError {
    /// No job has this name.
    NotFound(String),
    /// A job with this name already exists.
    Duplicate(String),
    /// The name is empty, too long, or has characters other than letters, digits, `_`, `-`, `.`.
    InvalidName(String),
    /// A wait ran out of time: the job (or `pending` jobs) had not finished.
    Timeout {
        /// What was waited for.
        what: String,
        /// How long the wait lasted.
        waited: Duration,
    },
    /// The spec was not usable (a bad parameter name, say).
    Engine(Error),
    /// The manager is shutting down.
    Closed,
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::NotFound(n) => write!(f, "job '{n}' not found"),
            JobError::Duplicate(n) => write!(f, "a job named '{n}' already exists"),
            JobError::InvalidName(n) => write!(
                f,
                "invalid job name '{n}': use 1-100 letters, digits, '_', '-' or '.', starting with a letter or digit"
            ),
            JobError::Timeout { what, waited } => {
                write!(f, "timed out after {:.3}s waiting for {what}", waited.as_secs_f64())
            }
            JobError::Engine(e) => e.fmt(f),
            JobError::Closed => f.write_str("the job manager is shutting down"),
        }
    }
}

impl std::error::Error for JobError {}

impl From<Error> for JobError {
    fn from(e: Error) -> JobError {
        JobError::Engine(e)
    }
}

/// What to run as a job: a script with parameters, once or over inputs.
///
/// ```
/// use runspace::{JobSpec, Script, SessionState};
/// use serde_json::json;
/// let script = Script::new("return _ * factor").unwrap();
/// let spec = JobSpec::new(&script)
///     .name("squares")
///     .param("factor", json!(2))
///     .range(1, 100)
///     .throttle(4)
///     .session(SessionState::new());
/// assert_eq!(spec.total(), 100);
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct JobSpec {
    pub(crate) name: Option<String>,
    pub(crate) script: Script,
    pub(crate) params: Vec<(String, Value)>,
    pub(crate) inputs: Option<Vec<Value>>,
    pub(crate) session: Option<SessionState>,
    pub(crate) throttle: Option<usize>,
    pub(crate) timeout: Option<Duration>,
}

impl JobSpec {
    /// One invocation of `script` with no inputs (`_` is nil).
    pub fn new(script: &Script) -> JobSpec {
        JobSpec {
            name: None,
            script: script.clone(),
            params: Vec::new(),
            inputs: None,
            session: None,
            throttle: None,
            timeout: None,
        }
    }

    /// The job's name (default: `Job_` and 8 hex digits).
    pub fn name(mut self, name: impl Into<String>) -> JobSpec {
        self.name = Some(name.into());
        self
    }

    /// A named parameter: a plain global of the script.
    pub fn param(mut self, name: &str, value: Value) -> JobSpec {
        self.params.retain(|(n, _)| n != name);
        self.params.push((name.to_string(), value));
        self
    }

    /// Runs the script once per input, in parallel; progress counts items.
    pub fn inputs(mut self, inputs: impl IntoIterator<Item = Value>) -> JobSpec {
        self.inputs = Some(inputs.into_iter().collect());
        self
    }

    /// Runs over the integers `start..=end` (counting down when `end < start`).
    pub fn range(self, start: i64, end: i64) -> JobSpec {
        let values: Vec<Value> = if start <= end {
            (start..=end).map(Value::from).collect()
        } else {
            (end..=start).rev().map(Value::from).collect()
        };
        self.inputs(values)
    }

    /// Runs in its own pool with this session instead of the manager's.
    pub fn session(mut self, session: SessionState) -> JobSpec {
        self.session = Some(session);
        self
    }

    /// Runspaces of a run over inputs (default: the number of CPUs).
    pub fn throttle(mut self, runspaces: usize) -> JobSpec {
        self.throttle = Some(runspaces.max(1));
        self
    }

    /// Fails the invocation (or each item) that runs longer than `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> JobSpec {
        self.timeout = Some(timeout);
        self
    }

    /// The number of items: the inputs' count, or 1 for a single invocation.
    pub fn total(&self) -> u64 {
        self.inputs.as_ref().map_or(1, |i| i.len() as u64)
    }
}

/// Items done out of the total (a single invocation counts as one item).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Items finished.
    pub done: u64,
    /// Items in all.
    pub total: u64,
}

/// A snapshot of a job: the original's job object with Name, Status,
/// Result, Error, StartTime, EndTime and Duration.
///
/// ```
/// use runspace::{JobManager, JobSpec, JobState, Script};
/// use std::time::Duration;
/// let jobs = JobManager::new(2).unwrap();
/// let name = jobs.start(JobSpec::new(&Script::new("write_error('bad') return 1").unwrap())).unwrap();
/// let info = jobs.wait(&name, Duration::from_secs(10)).unwrap();
/// assert_eq!(info.state, JobState::CompletedWithErrors);
/// assert_eq!(info.streams.error, vec!["bad".to_string()]);
/// assert!(info.duration().is_some());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct JobInfo {
    /// The job's name.
    pub name: String,
    /// Its state now.
    pub state: JobState,
    /// Output values: a single invocation's `emit`s and return values; for a
    /// run over inputs, each item's result in input order.
    pub output: Vec<Value>,
    /// For a run over inputs: every finished item, in input order once the job ends.
    pub items: Vec<ItemResult>,
    /// The streams; for a run over inputs, each item's records prefixed `item N: `.
    pub streams: Streams,
    /// Why it failed or stopped, when it did.
    pub error: Option<String>,
    /// When it was started (submitted).
    pub submitted: SystemTime,
    /// When it began running.
    pub start: Option<SystemTime>,
    /// When it finished.
    pub end: Option<SystemTime>,
    /// Items done / total.
    pub progress: Progress,
    /// Every state it has been in, with when it entered it.
    pub history: Vec<(JobState, SystemTime)>,
    /// True for a run over inputs.
    pub parallel: bool,
}

impl JobInfo {
    pub(crate) fn mark_running(&mut self, at: SystemTime) {
        self.state = JobState::Running;
        self.start = Some(at);
        self.history.push((JobState::Running, at));
    }

    /// The output as one value: null, the single value, or an array.
    pub fn result(&self) -> Value {
        collapse(self.output.clone())
    }

    /// Run time: end − start once finished, now − start while running.
    pub fn duration(&self) -> Option<Duration> {
        let start = self.start?;
        let end = self.end.unwrap_or_else(SystemTime::now);
        Some(end.duration_since(start).unwrap_or_default())
    }
}

/// What an observer is told. Events of one job arrive in order: `Started`,
/// any `Item`s, then `Finished` (a job stopped while queued only has
/// `Finished`). `Finished` is delivered before waiters see the end, so an
/// observer that persists it is never behind a returned [`JobManager::wait`].
#[derive(Debug)]
#[non_exhaustive]
pub enum JobEvent<'a> {
    /// The job began running.
    Started {
        /// The job.
        name: &'a str,
        /// When.
        at: SystemTime,
    },
    /// One item of a run over inputs finished.
    Item {
        /// The job.
        name: &'a str,
        /// The item's record.
        item: &'a ItemResult,
        /// Progress after this item.
        progress: Progress,
    },
    /// The job ended; the snapshot is final.
    Finished(&'a JobInfo),
}

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
        JobManagerBuilder { max: 5, session: SessionState::new(), observer: None }
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
