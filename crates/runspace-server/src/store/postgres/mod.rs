//! The PostgreSQL store: the same jobs, history, outputs and streams as
//! the SQLite store, in a database that any number of `rsp serve`,
//! `rsp worker` and `rsp run --cluster` processes on any number of hosts
//! share; and the cluster's work queue ([`work`]).
//!
//! The driver is `tokio-postgres` with a `deadpool-postgres` pool, run on a
//! small multi-threaded runtime that the store owns. The [`JobStore`]
//! trait is synchronous; its calls cross to that runtime by *spawning* the
//! query there and waiting on a channel ([`PgStore::block`]), never with
//! `block_on`: `block_on` panics when its caller is itself inside a tokio
//! runtime (an API handler, a worker's loop), a spawn-and-wait works from
//! any thread and its wait has a timeout. Writes that the trait lets a
//! backend batch go through one writer thread in group commits, as in the
//! SQLite store ([`writer`]).

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{bounded, Sender};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde_json::{json, Map, Value};
use tokio_postgres::NoTls;

mod dashboard;
mod schema;
mod secret;
mod servers;
pub mod work;
mod writer;

use super::writes::{Failures, Msg, Op};
use super::{
    rfc3339, secs, Cursor, From, ItemsPage, JobEnd, JobQuery, JobRow, JobStore, JobsPage, NewJob, Page, StoreError,
    StoreHealth, StoredRequest, WorkerRow, STREAM_TAIL,
};
use crate::limits::{MAX_ITEMS, MAX_PAGE_BYTES};

/// How long a caller waits for a query or a committed write.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most writes queued for the writer (as in the SQLite store).
const QUEUE: usize = 4096;
/// The most connections one process holds.
const POOL_SIZE: usize = 8;

/// A store in a PostgreSQL database.
pub struct PgStore {
    /// Taken at drop and shut down in the background: dropping a runtime
    /// blocks, which tokio forbids inside another runtime.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    pool: Pool,
    config: tokio_postgres::Config,
    writer: Mutex<Option<(Sender<Msg>, JoinHandle<()>)>>,
    failures: Arc<Failures>,
    /// The server this store is a server's, once registered: its jobs
    /// name it ([`servers`]).
    owner: Arc<OnceLock<String>>,
    /// That server's lease.
    lease: OnceLock<std::time::Duration>,
}

/// A driver error as one line: the server's message when it sent one.
pub(crate) fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            text
        }
    }
}

fn storage(e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(format!("database: {e}"))
}

pub use secret::redact as redact_url;

/// Whether `spec` names a PostgreSQL database rather than a SQLite file.
pub fn is_postgres_url(spec: &str) -> bool {
    spec.starts_with("postgres://") || spec.starts_with("postgresql://")
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user@host:port/db`,
    /// or any libpq connection string) and brings its schema up to date.
    /// A URL without a password takes it from `PGPASSWORD` or the password
    /// file (`PGPASSFILE`, `~/.pgpass`), as libpq would.
    pub fn open(url: &str) -> Result<PgStore, String> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| format!("invalid database URL: {}", pg_error(&e)))?;
        secret::fill_password(&mut config);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("rsp");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("rsp-postgres")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the database runtime: {e}"))?;
        let manager =
            Manager::from_config(config.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(ANSWER_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| format!("cannot make a connection pool: {e}"))?;
        let (tx, rx) = bounded::<Msg>(QUEUE);
        let failures = Arc::new(Failures::default());
        let handle = runtime.handle().clone();
        let mut store = PgStore {
            runtime: Some(runtime),
            handle,
            pool,
            config,
            writer: Mutex::new(None),
            failures,
            owner: Arc::default(),
            lease: OnceLock::new(),
        };
        store
            .block(|pool| async move {
                let mut client = pool.get().await.map_err(|e| format!("cannot connect: {}", pool_error(&e)))?;
                schema::migrate(&mut client).await
            })
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .map_err(|e| format!("database {}: {e}", store.describe()))?;
        let (pool, handle, writer_failures) = (store.pool.clone(), store.handle.clone(), store.failures.clone());
        let owner = store.owner.clone();
        let writer = std::thread::Builder::new()
            .name("rsp-pg-writer".into())
            .spawn(move || writer::write_loop(&handle, &pool, &rx, &writer_failures, &owner))
            .map_err(|e| format!("cannot start the database writer: {e}"))?;
        store.writer = Mutex::new(Some((tx, writer)));
        Ok(store)
    }

    /// The database as a message names it: host, port and database, never
    /// the password.
    pub fn describe(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!("postgres://{host}:{port}/{}", self.config.get_dbname().unwrap_or(""))
    }

    /// Runs `f` on the store's runtime and waits (at most
    /// [`ANSWER_TIMEOUT`]) for its answer; callable from any thread,
    /// inside a tokio runtime or not.
    pub(crate) fn block<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Pool) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        let (tx, rx) = bounded(1);
        let fut = f(self.pool.clone());
        let task = self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        match rx.recv_timeout(ANSWER_TIMEOUT) {
            Ok(answer) => Ok(answer),
            Err(_) => {
                task.abort();
                Err(StoreError::Storage("the database did not answer in time".into()))
            }
        }
    }

    /// Runs a read on a pooled connection.
    fn read<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_postgres::Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, tokio_postgres::Error>> + Send + 'static,
    {
        self.block(|pool| async move {
            let client = pool.get().await.map_err(|e| storage(pool_error(&e)))?;
            f(client).await.map_err(|e| storage(pg_error(&e)))
        })?
    }

    fn sender(&self) -> Option<Sender<Msg>> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|(tx, _)| tx.clone())
    }

    fn send(&self, op: Op, name: &str) {
        let sent = self.sender().is_some_and(|tx| tx.send(Msg { op, ack: None }).is_ok());
        if !sent {
            self.failures.lost_write(name, "the database is closed");
        }
    }

    fn write(&self, op: Op) -> Result<(), StoreError> {
        let (ack_tx, ack_rx) = bounded(1);
        let closed = || StoreError::Storage("the database is closed".into());
        self.sender().ok_or_else(closed)?.send(Msg { op, ack: Some(ack_tx) }).map_err(|_| closed())?;
        match ack_rx.recv_timeout(ANSWER_TIMEOUT) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if e == writer::DUPLICATE => Err(StoreError::Duplicate(String::new())),
            Ok(Err(e)) => Err(StoreError::Storage(e)),
            Err(_) => Err(StoreError::Storage("the database did not answer in time".into())),
        }
    }

    fn overlay(&self, mut job: Value) -> Value {
        if let Some(message) = job["name"].as_str().and_then(|name| self.failures.message(name)) {
            job["state"] = json!("Failed");
            job["error"] = json!(message);
        }
        job
    }

    /// [`PgStore::overlay`] for a dashboard row.
    fn overlay_row(&self, row: &mut JobRow) {
        if let Some(message) = self.failures.message(&row.name) {
            row.state = "Failed".into();
            row.error = Some(message);
        }
    }
}

/// A pool error as one line.
pub(crate) fn pool_error(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_error(e),
        other => other.to_string(),
    }
}

const COLUMNS: &str = "id, name, state, parallel, submitted_at, started_at, ended_at, progress_done, progress_total, \
                       error, request";

fn row_to_job(r: &tokio_postgres::Row) -> (i64, Value) {
    let request: String = r.get(10);
    let job = super::job_json(super::StoredJob {
        name: r.get(1),
        state: r.get(2),
        parallel: r.get(3),
        submitted: r.get(4),
        started: r.get(5),
        ended: r.get(6),
        done: r.get::<_, i64>(7).max(0) as u64,
        total: r.get::<_, i64>(8).max(0) as u64,
        error: r.get(9),
        request: &request,
    });
    (r.get(0), job)
}

/// `(seq, record)` rows as JSON records, stopping before the page would
/// pass [`MAX_PAGE_BYTES`] (but never before the first record).
fn read_page(rows: &[tokio_postgres::Row], mut dress: impl FnMut(u64, &mut Value)) -> Vec<Value> {
    let (mut records, mut bytes) = (Vec::new(), 0);
    for row in rows {
        let seq: i64 = row.get(0);
        let text: String = row.get(1);
        bytes += text.len();
        if bytes > MAX_PAGE_BYTES && !records.is_empty() {
            break;
        }
        let mut record: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        dress(seq.max(0) as u64, &mut record);
        records.push(record);
    }
    records
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

async fn job_id(c: &deadpool_postgres::Object, name: &str) -> Result<Option<i64>, tokio_postgres::Error> {
    Ok(c.query_opt("SELECT id FROM jobs WHERE name = $1", &[&name]).await?.map(|r| r.get(0)))
}

impl JobStore for PgStore {
    fn insert(&self, job: NewJob) -> Result<(), StoreError> {
        let name = job.name.clone();
        self.write(Op::insert(job)).map_err(|e| match e {
            StoreError::Duplicate(_) => StoreError::Duplicate(name),
            other => other,
        })
    }

    fn started(&self, name: &str, at: SystemTime) {
        self.send(Op::Started { name: name.to_string(), at: secs(at) }, name);
    }

    fn record_output(&self, name: &str, seq: u64, record: String, done: Option<u64>) {
        self.send(Op::Output { name: name.to_string(), seq, record, done }, name);
    }

    fn record_stream(&self, name: &str, stream: &str, seq: u64, record: String) {
        self.send(Op::Stream { name: name.to_string(), stream: stream.to_string(), seq, record }, name);
    }

    fn finished(&self, end: JobEnd) -> Result<(), StoreError> {
        let name = end.name.clone();
        let result = self.write(Op::Finished {
            name: end.name,
            state: end.state,
            at: secs(end.at),
            error: end.error,
            done: end.done,
        });
        if let Err(StoreError::Storage(e)) = &result {
            self.failures.lost_write(&name, e);
        }
        result
    }

    fn delete(&self, name: &str) -> Result<bool, StoreError> {
        let owned = name.to_string();
        let exists = self.read(move |c| async move { job_id(&c, &owned).await })?.is_some();
        if !exists {
            return Ok(false);
        }
        self.write(Op::Delete { name: name.to_string() })?;
        self.failures.forget(name);
        Ok(true)
    }

    fn get(&self, name: &str) -> Result<Option<Value>, StoreError> {
        let name = name.to_string();
        let job = self.read(move |c| async move {
            let sql = format!("SELECT {COLUMNS} FROM jobs WHERE name = $1");
            let Some(row) = c.query_opt(&sql, &[&name]).await? else {
                return Ok(None);
            };
            let (id, mut job) = row_to_job(&row);
            let history: Vec<Value> = c
                .query("SELECT state, at FROM history WHERE job_id = $1 ORDER BY id", &[&id])
                .await?
                .iter()
                .map(|r| json!({"state": r.get::<_, String>(0), "at": rfc3339(r.get(1))}))
                .collect();
            let outputs: i64 = c.query_one("SELECT count(*) FROM outputs WHERE job_id = $1", &[&id]).await?.get(0);
            job["history"] = Value::Array(history);
            job["output_count"] = json!(outputs);
            let (counts, tails) = stream_tails(&c, id).await?;
            job["streams"] = Value::Object(tails);
            job["stream_counts"] = Value::Object(counts);
            Ok(Some(job))
        })?;
        Ok(job.map(|j| self.overlay(j)))
    }

    fn list(&self, state: Option<&str>, offset: u64, limit: u64) -> Result<(u64, Vec<Value>), StoreError> {
        let state = state.map(str::to_string);
        let (total, jobs) = self.read(move |c| async move {
            let filter = "WHERE ($1::text IS NULL OR state = $1)";
            let total: i64 = c.query_one(&format!("SELECT count(*) FROM jobs {filter}"), &[&state]).await?.get(0);
            let sql = format!("SELECT {COLUMNS} FROM jobs {filter} ORDER BY id LIMIT $2 OFFSET $3");
            let rows = c.query(&sql, &[&state, &to_i64(limit), &to_i64(offset)]).await?;
            Ok((total.max(0) as u64, rows.iter().map(|r| row_to_job(r).1).collect::<Vec<_>>()))
        })?;
        Ok((total, jobs.into_iter().map(|j| self.overlay(j)).collect()))
    }

    fn output(&self, name: &str, offset: u64, limit: u64) -> Result<Option<(u64, Vec<Value>)>, StoreError> {
        let name = name.to_string();
        self.read(move |c| async move {
            let Some(id) = job_id(&c, &name).await? else {
                return Ok(None);
            };
            let total: i64 = c.query_one("SELECT count(*) FROM outputs WHERE job_id = $1", &[&id]).await?.get(0);
            let rows = c
                .query(
                    "SELECT seq, record FROM outputs WHERE job_id = $1 ORDER BY seq LIMIT $2 OFFSET $3",
                    &[&id, &to_i64(limit), &to_i64(offset)],
                )
                .await?;
            let records = read_page(&rows, |seq, record| {
                if let Value::Object(map) = record {
                    map.insert("seq".into(), json!(seq));
                }
            });
            Ok(Some((total.max(0) as u64, records)))
        })
    }

    fn stream(&self, name: &str, stream: &str, from: From, limit: u64) -> Result<Option<Page>, StoreError> {
        let (name, stream) = (name.to_string(), stream.to_string());
        self.read(move |c| async move {
            let Some(id) = job_id(&c, &name).await? else {
                return Ok(None);
            };
            let total: i64 = c
                .query_one("SELECT count(*) FROM stream_records WHERE job_id = $1 AND stream = $2", &[&id, &stream])
                .await?
                .get(0);
            let total = total.max(0) as u64;
            let offset = match from {
                From::Offset(n) => n,
                From::Tail => total.saturating_sub(limit),
            };
            let rows = c
                .query(
                    "SELECT seq, record FROM stream_records WHERE job_id = $1 AND stream = $2 ORDER BY seq \
                     LIMIT $3 OFFSET $4",
                    &[&id, &stream, &to_i64(limit), &to_i64(offset)],
                )
                .await?;
            Ok(Some(Page { total, offset, records: read_page(&rows, |_, _| {}) }))
        })
    }

    fn health(&self) -> StoreHealth {
        StoreHealth { failing: self.failures.failing(), failed_jobs: self.failures.failed_jobs() }
    }

    fn stored_request(&self, name: &str) -> Result<Option<StoredRequest>, StoreError> {
        let name = name.to_string();
        let row = self.read(move |c| async move {
            let row = c.query_opt("SELECT request, inputs FROM jobs WHERE name = $1", &[&name]).await?;
            Ok(row.map(|r| (r.get::<_, String>(0), r.get::<_, Option<String>>(1))))
        })?;
        Ok(row.map(|(request, inputs)| StoredRequest {
            request: serde_json::from_str(&request).unwrap_or(Value::Null),
            inputs: inputs.and_then(|i| serde_json::from_str(&i).ok()),
        }))
    }

    fn unfinished_items(&self, name: &str, total: u64, limit: usize) -> Result<(u64, Vec<u64>), StoreError> {
        let name = name.to_string();
        let total = total.min(MAX_ITEMS);
        let completed: Vec<i64> = self.read(move |c| async move {
            let rows = c
                .query(
                    "SELECT (o.record::jsonb ->> 'index')::bigint FROM outputs o JOIN jobs j ON j.id = o.job_id \
                     WHERE j.name = $1 AND o.record::jsonb ->> 'status' IN ('Completed', 'CompletedWithErrors') \
                     AND jsonb_typeof(o.record::jsonb -> 'index') = 'number'",
                    &[&name],
                )
                .await?;
            Ok(rows.iter().filter_map(|r| r.get::<_, Option<i64>>(0)).collect())
        })?;
        let mut done = vec![0u64; total.div_ceil(64) as usize];
        for index in completed.into_iter().filter_map(|i| u64::try_from(i).ok()).filter(|&i| i < total) {
            done[(index / 64) as usize] |= 1 << (index % 64);
        }
        let mut count = 0;
        let mut first = Vec::new();
        for index in (0..total).filter(|&i| done[(i / 64) as usize] & (1 << (i % 64)) == 0) {
            count += 1;
            if first.len() < limit {
                first.push(index);
            }
        }
        Ok((count, first))
    }

    fn delete_finished(&self, names: &[String]) -> Result<(), StoreError> {
        self.write(Op::DeleteFinished { names: names.to_vec() })?;
        names.iter().for_each(|name| self.failures.forget(name));
        Ok(())
    }

    fn workers(&self) -> Result<Vec<WorkerRow>, StoreError> {
        self.read(|c| async move {
            let rows = c
                .query(
                    "SELECT id, extract(epoch FROM heartbeat_at)::float8, slots, items_done FROM workers \
                     WHERE state = 'running' ORDER BY heartbeat_at DESC, id",
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| WorkerRow {
                    id: r.get(0),
                    heartbeat: r.get(1),
                    slots: r.get::<_, i32>(2).max(0) as u64,
                    items_done: r.get::<_, i64>(3).max(0) as u64,
                })
                .collect())
        })
    }

    fn state_counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(|c| async move { dashboard::state_counts(&c).await })
    }

    fn job_rows(&self, query: &JobQuery) -> Result<JobsPage, StoreError> {
        let query = query.clone();
        let mut page = self.read(move |c| async move { dashboard::job_rows(&c, &query).await })?;
        page.rows.iter_mut().for_each(|row| self.overlay_row(row));
        Ok(page)
    }

    fn job_row(&self, name: &str) -> Result<Option<JobRow>, StoreError> {
        let name = name.to_string();
        let mut row = self.read(move |c| async move { dashboard::one_job(&c, &name).await })?;
        row.iter_mut().for_each(|row| self.overlay_row(row));
        Ok(row)
    }

    fn active_jobs(&self, limit: u64) -> Result<Vec<JobRow>, StoreError> {
        self.read(move |c| async move { dashboard::active_jobs(&c, limit).await })
    }

    fn item_rows(
        &self,
        name: &str,
        status: Option<&str>,
        cursor: Cursor,
        limit: u64,
    ) -> Result<Option<ItemsPage>, StoreError> {
        let (name, status) = (name.to_string(), status.map(str::to_string));
        self.read(move |c| async move { dashboard::item_rows(&c, &name, status.as_deref(), cursor, limit).await })
    }

    fn close(&self) {
        let _ = self.write(Op::Flush);
        let taken = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((tx, handle)) = taken {
            drop(tx);
            let _ = handle.join();
        }
    }
}

/// How many records each of a job's streams has, and the last
/// [`STREAM_TAIL`] of each.
async fn stream_tails(
    c: &deadpool_postgres::Object,
    id: i64,
) -> Result<(Map<String, Value>, Map<String, Value>), tokio_postgres::Error> {
    let counts: Vec<(String, i64)> = c
        .query("SELECT stream, count(*) FROM stream_records WHERE job_id = $1 GROUP BY stream ORDER BY stream", &[&id])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut tails = Map::new();
    for (stream, count) in &counts {
        let from = count.saturating_sub(STREAM_TAIL as i64);
        let records: Vec<Value> = c
            .query(
                "SELECT record FROM stream_records WHERE job_id = $1 AND stream = $2 AND seq >= $3 ORDER BY seq",
                &[&id, stream, &from],
            )
            .await?
            .iter()
            .map(|r| {
                let text: String = r.get(0);
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            })
            .collect();
        tails.insert(stream.clone(), Value::Array(records));
    }
    let counts = counts.into_iter().map(|(stream, n)| (stream, json!(n))).collect();
    Ok((counts, tails))
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.close();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
