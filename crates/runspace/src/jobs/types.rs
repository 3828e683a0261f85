//! The values jobs are described by: their spec, state, snapshot, errors and events.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Error;
use crate::invocation_result::collapse;
use crate::parallel::ItemResult;
use crate::script::Script;
use crate::session::SessionState;
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
/// observer that persists it is never behind a returned [`JobManager::wait`](crate::JobManager::wait).
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
