//! Where the job service keeps its jobs: the [`JobStore`] trait, and the
//! embedded SQLite backend behind it.
//!
//! The API, the server's lifecycle and the job observer speak only to the
//! trait, so a second backend (PostgreSQL, shared by many hosts) plugs in
//! without touching them.

mod dashboard;
mod postgres;
mod sqlite;
mod writes;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub use dashboard::{Cursor, ItemsPage, JobQuery, JobRow, JobsPage, WorkerRow};
pub use postgres::{is_postgres_url, redact_url, work, PgStore};
pub use sqlite::SqliteStore;

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// A job with this name is already stored.
    Duplicate(String),
    /// The store could not do it (disk full, read-only, I/O error, closed…):
    /// the message says what.
    Storage(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Duplicate(name) => write!(f, "a job named '{name}' already exists"),
            StoreError::Storage(e) => write!(f, "storage error: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// A job as first stored, Queued.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Its unique name.
    pub name: String,
    /// A run over inputs (true) or one run of a script (false).
    pub parallel: bool,
    /// The request as kept (JSON text), for inspection and re-runs.
    pub request: String,
    /// How many items it will run.
    pub total: u64,
    /// Its explicit inputs (a JSON array), kept so it can be restarted.
    pub inputs: Option<String>,
    /// When it was submitted.
    pub at: SystemTime,
}

/// How a job ended, as the job manager reports it.
#[derive(Debug, Clone)]
pub struct JobEnd {
    /// The job's name.
    pub name: String,
    /// Its final state (`Completed`, `Failed`, …).
    pub state: String,
    /// When it ended.
    pub at: SystemTime,
    /// Why it did not complete, if it did not.
    pub error: Option<String>,
    /// How many items it finished.
    pub done: u64,
}

/// How many of each stream's last records a job's description carries
/// (the rest are read in pages).
pub const STREAM_TAIL: u64 = 100;

/// Where a page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// After this many records.
    Offset(u64),
    /// So that it ends with the last record (a tail of `limit` records).
    Tail,
}

/// A page of records.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// How many records there are in all.
    pub total: u64,
    /// The position of the first record of the page.
    pub offset: u64,
    /// The records.
    pub records: Vec<Value>,
}

/// What a job was submitted with.
#[derive(Debug, Clone)]
pub struct StoredRequest {
    /// The request as kept (see [`NewJob::request`]).
    pub request: Value,
    /// Its explicit inputs, if it had any and they were kept.
    pub inputs: Option<Vec<Value>>,
}

/// The store's health, as `/v1/health` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreHealth {
    /// The last write that failed, if the store has not written since.
    pub failing: Option<String>,
    /// How many jobs ended Failed because their records could not be stored.
    pub failed_jobs: u64,
}

/// A job store.
///
/// The trait is synchronous, on purpose: its callers are the job manager's
/// observer (called on job threads, which must block until a record is
/// handed over so that memory stays bounded) and API handlers that already
/// run on tokio's blocking pool. A synchronous trait is object safe
/// (`Arc<dyn JobStore>`) with no boxed futures, and a networked backend
/// keeps its own runtime or pool behind it (as the `postgres` crate does
/// over `tokio-postgres`).
///
/// Contract, which every backend keeps and the API relies on:
/// - a job's row exists before any event about it ([`JobStore::insert`] is
///   acknowledged);
/// - [`JobStore::started`] and [`JobStore::record_output`] may be
///   batched, but a failure is never dropped: it turns the job `Failed`
///   with a `storage error: …` message, which [`JobStore::finished`] and
///   every read then report, and [`JobStore::health`] says so;
/// - [`JobStore::finished`] returns once the end is durable (or with the
///   error that kept it from being so).
pub trait JobStore: Send + Sync {
    /// Stores a new, Queued job; [`StoreError::Duplicate`] if the name is taken.
    fn insert(&self, job: NewJob) -> Result<(), StoreError>;
    /// The job began running.
    fn started(&self, name: &str, at: SystemTime);
    /// One output record (an item of a run over inputs, or an output
    /// value) at position `seq`; `done` is the progress it brings, if any.
    fn record_output(&self, name: &str, seq: u64, record: String, done: Option<u64>);
    /// One record of one of the job's streams (`error`, `warning`,
    /// `verbose`, `debug`, `information`, `progress`), as JSON, at position
    /// `seq` in that stream.
    fn record_stream(&self, name: &str, stream: &str, seq: u64, record: String);
    /// The job ended. A job whose earlier records were lost is stored as
    /// `Failed` with the storage error, whatever `end.state` says.
    fn finished(&self, end: JobEnd) -> Result<(), StoreError>;
    /// Forgets a job and its records; false if it was not stored.
    fn delete(&self, name: &str) -> Result<bool, StoreError>;
    /// One job with its history, output count, `stream_counts` and the
    /// last [`STREAM_TAIL`] records of each stream; `None` if unknown.
    fn get(&self, name: &str) -> Result<Option<Value>, StoreError>;
    /// A page of jobs, oldest first, optionally of one state, and the
    /// number of jobs that match.
    fn list(&self, state: Option<&str>, offset: u64, limit: u64) -> Result<(u64, Vec<Value>), StoreError>;
    /// A page of a job's output records (at most `limit`, and no more than
    /// [`crate::limits::MAX_PAGE_BYTES`] of them but at least one) and
    /// their total; `None` if the job is unknown.
    fn output(&self, name: &str, offset: u64, limit: u64) -> Result<Option<(u64, Vec<Value>)>, StoreError>;
    /// A page of one of a job's streams (at most `limit` records and
    /// [`crate::limits::MAX_PAGE_BYTES`], at least one), from `from`;
    /// `None` if the job is unknown.
    fn stream(&self, name: &str, stream: &str, from: From, limit: u64) -> Result<Option<Page>, StoreError>;
    /// Whether writes are succeeding.
    fn health(&self) -> StoreHealth;
    /// The request a job was submitted with, and its explicit inputs;
    /// `None` if unknown.
    fn stored_request(&self, name: &str) -> Result<Option<StoredRequest>, StoreError>;
    /// How many of a parallel job's `total` items did not complete (no
    /// record, or one that Failed, TimedOut or was Stopped), and the first
    /// `limit` of their indices, in order.
    fn unfinished_items(&self, name: &str, total: u64, limit: usize) -> Result<(u64, Vec<u64>), StoreError>;
    /// Deletes every named job that is finished (neither Queued nor
    /// Running) with its records, as one acknowledged write.
    fn delete_finished(&self, names: &[String]) -> Result<(), StoreError>;
    /// Commits everything pending and releases the store.
    fn close(&self);

    // The dashboard's reads (see [`dashboard`]). A backend without them
    // still serves the API; its dashboard says what is missing.

    /// How many jobs are in each state, by state name.
    fn state_counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        Err(StoreError::Storage("this store does not count jobs by state for the dashboard".into()))
    }
    /// A page of the job list, newest first, walked by key.
    fn job_rows(&self, _query: &JobQuery) -> Result<JobsPage, StoreError> {
        Err(StoreError::Storage("this store does not list jobs for the dashboard".into()))
    }
    /// One job's row; `None` if unknown.
    fn job_row(&self, _name: &str) -> Result<Option<JobRow>, StoreError> {
        Err(StoreError::Storage("this store does not list jobs for the dashboard".into()))
    }
    /// The Queued and Running jobs, oldest first, at most `limit`.
    fn active_jobs(&self, _limit: u64) -> Result<Vec<JobRow>, StoreError> {
        Err(StoreError::Storage("this store does not list jobs for the dashboard".into()))
    }
    /// A page of a job's output records (of one item status, if given),
    /// walked by their sequence number; `None` if the job is unknown.
    fn item_rows(
        &self,
        _name: &str,
        _status: Option<&str>,
        _cursor: Cursor,
        _limit: u64,
    ) -> Result<Option<ItemsPage>, StoreError> {
        Err(StoreError::Storage("this store does not page item records for the dashboard".into()))
    }
    /// The workers sharing this store, freshest heartbeat first. A store
    /// used by one server alone (SQLite) has none: the server runs its jobs itself.
    fn workers(&self) -> Result<Vec<WorkerRow>, StoreError> {
        Ok(Vec::new())
    }
}

/// Seconds since the epoch, as stored.
pub fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// RFC 3339 with milliseconds, as the API shows times.
pub(crate) fn rfc3339(at: Option<f64>) -> Value {
    match at {
        Some(s) if s > 0.0 && s.is_finite() => {
            let t = UNIX_EPOCH + Duration::from_secs_f64(s);
            Value::String(humantime::format_rfc3339_millis(t).to_string())
        }
        _ => Value::Null,
    }
}

/// A job's row, as both backends read it.
pub(crate) struct StoredJob<'a> {
    pub(crate) name: String,
    pub(crate) state: String,
    pub(crate) parallel: bool,
    pub(crate) submitted: Option<f64>,
    pub(crate) started: Option<f64>,
    pub(crate) ended: Option<f64>,
    pub(crate) done: u64,
    pub(crate) total: u64,
    pub(crate) error: Option<String>,
    pub(crate) request: &'a str,
}

/// A job as the API shows it (without its history and streams).
pub(crate) fn job_json(row: StoredJob<'_>) -> Value {
    let duration = match (row.started, row.ended) {
        (Some(s), Some(e)) => serde_json::json!(((e - s) * 1000.0).max(0.0).round() / 1000.0),
        (Some(s), None) => serde_json::json!(((secs(SystemTime::now()) - s) * 1000.0).max(0.0).round() / 1000.0),
        _ => Value::Null,
    };
    let request: Value = serde_json::from_str(row.request).unwrap_or(Value::Null);
    serde_json::json!({
        "name": row.name,
        "state": row.state,
        "kind": if row.parallel { "parallel" } else { "single" },
        "submitted": rfc3339(row.submitted),
        "start": rfc3339(row.started),
        "end": rfc3339(row.ended),
        "duration_s": duration,
        "progress": {"done": row.done, "total": row.total},
        "error": row.error,
        "script_name": request.get("script_name").cloned().unwrap_or(Value::Null),
    })
}
