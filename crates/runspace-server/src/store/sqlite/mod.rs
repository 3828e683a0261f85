//! The embedded SQLite store: every job, its request, state history,
//! outputs and streams, so that a restart loses nothing.
//!
//! All writes go through one writer thread that commits whatever has
//! queued up in one transaction (group commit): a burst of submissions from
//! many clients costs one fsync per batch, not one per job. Reads use their
//! own connections, which WAL lets run beside the writer.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::{json, Value};

mod schema;
mod verbs;

use crate::private::{self, Access};

use super::{rfc3339, secs, JobEnd, JobStore, NewJob, StoreError, StoreHealth, StoredRequest};

/// The most operations committed in one transaction.
const BATCH: usize = 1024;
/// How long a caller waits for its write to commit before giving up.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// A write for the writer thread.
enum Op {
    /// A new job, Queued. Fails (and is acknowledged as such) on a duplicate name.
    Insert { name: String, parallel: bool, request: String, total: u64, at: f64, inputs: Option<String> },
    /// The job began running.
    Started { name: String, at: f64 },
    /// One output record (an item of a run over inputs, or an output value).
    Output { name: String, seq: u64, record: String, done: Option<u64> },
    /// The job ended.
    Finished { name: String, state: String, at: f64, error: Option<String>, streams: String, done: u64 },
    /// Forget the job entirely.
    Delete { name: String },
    /// Forget each of these jobs that is finished.
    DeleteFinished { names: Vec<String> },
    /// Nothing: acknowledged once everything sent before it is committed.
    Flush,
}

struct Msg {
    op: Op,
    ack: Option<Sender<Result<(), String>>>,
}

/// The store: a writer thread and a handful of reader connections.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Option<(Sender<Msg>, JoinHandle<()>)>>,
    readers: Mutex<Vec<Connection>>,
    /// The database file, opened by us and `flock`ed: no second server
    /// uses this database while we hold it. Last, so it closes after every
    /// connection (closing a descriptor drops the process's POSIX locks on
    /// the file, SQLite's included).
    _lock: File,
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    // NOFOLLOW: SQLite itself refuses a database path that is a symbolic link.
    let conn = Connection::open_with_flags(path, OpenFlags::default() | OpenFlags::SQLITE_OPEN_NOFOLLOW)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // WAL: readers never block the writer; NORMAL sync is durable across
    // a process crash (kill -9), which is the failure this store is for.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

/// `jobs.db` + `-wal` = `jobs.db-wal`, as SQLite names its side files.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

impl SqliteStore {
    /// Opens (creating if needed) the database and marks jobs that were
    /// queued or running when the previous server died as Interrupted.
    /// Returns the store and how many jobs were interrupted.
    pub fn open(path: &Path) -> Result<(SqliteStore, usize), String> {
        let fail = |e: rusqlite::Error| format!("database {}: {e}", path.display());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            private::ensure_private_dir(dir)?;
        }
        let lock = private::open_private(path, Access::ReadWrite)?;
        // SAFETY: flock on a descriptor we own; the lock lives as long as the file.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(format!("the database {} is in use by another job server", path.display()));
        }
        let side_files = [with_suffix(path, "-wal"), with_suffix(path, "-shm")];
        // SQLite gives its side files the database's mode (0600 now); a
        // planted link or a foreign file there is refused before it opens them.
        side_files.iter().try_for_each(|f| private::tighten_if_present(f))?;
        let mut conn = open(path).map_err(fail)?;
        schema::migrate(&mut conn).map_err(|e| format!("database {}: {e}", path.display()))?;
        side_files.iter().try_for_each(|f| private::tighten_if_present(f))?;
        let interrupted = interrupt_unfinished(&mut conn).map_err(fail)?;
        let (tx, rx) = unbounded::<Msg>();
        let writer = std::thread::Builder::new()
            .name("rsp-db-writer".into())
            .spawn(move || write_loop(conn, &rx))
            .map_err(|e| format!("cannot start the database writer: {e}"))?;
        let store = SqliteStore {
            path: path.to_path_buf(),
            writer: Mutex::new(Some((tx, writer))),
            readers: Mutex::default(),
            _lock: lock,
        };
        Ok((store, interrupted))
    }

    /// Queues a write without waiting for it.
    fn send(&self, op: Op) {
        if let Some((tx, _)) = &*self.writer.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = tx.send(Msg { op, ack: None });
        }
    }

    /// Writes and waits until it is committed.
    fn write(&self, op: Op) -> Result<(), StoreError> {
        let (ack_tx, ack_rx) = bounded(1);
        {
            let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            let closed = || StoreError::Storage("the database is closed".into());
            let (tx, _) = writer.as_ref().ok_or_else(closed)?;
            tx.send(Msg { op, ack: Some(ack_tx) }).map_err(|_| closed())?;
        }
        match ack_rx.recv_timeout(ACK_TIMEOUT) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if e.contains("UNIQUE") => Err(StoreError::Duplicate(String::new())),
            Ok(Err(e)) => Err(StoreError::Storage(e)),
            Err(_) => Err(StoreError::Storage("the database did not answer in time".into())),
        }
    }

    /// Commits everything queued, checkpoints the WAL and stops the writer.
    fn shutdown(&self) {
        let _ = self.write(Op::Flush);
        let taken = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((tx, handle)) = taken {
            drop(tx);
            let _ = handle.join();
        }
    }

    /// Whether a job of this name is stored.
    fn exists(&self, name: &str) -> Result<bool, StoreError> {
        self.read(|c| c.query_row("SELECT 1 FROM jobs WHERE name = ?1", [name], |_| Ok(())).optional())
            .map(|r| r.is_some())
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let conn = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => open(&self.path).map_err(|e| StoreError::Storage(format!("database: {e}")))?,
        };
        let out = f(&conn).map_err(|e| StoreError::Storage(format!("database: {e}")));
        let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if readers.len() < 8 {
            readers.push(conn);
        }
        out
    }
}

impl JobStore for SqliteStore {
    fn insert(&self, job: NewJob) -> Result<(), StoreError> {
        let name = job.name.clone();
        let op = Op::Insert {
            name: job.name,
            parallel: job.parallel,
            request: job.request,
            total: job.total,
            at: secs(job.at),
            inputs: job.inputs,
        };
        self.write(op).map_err(|e| match e {
            StoreError::Duplicate(_) => StoreError::Duplicate(name),
            other => other,
        })
    }

    fn started(&self, name: &str, at: SystemTime) {
        self.send(Op::Started { name: name.to_string(), at: secs(at) });
    }

    fn record_output(&self, name: &str, seq: u64, record: String, done: Option<u64>) {
        self.send(Op::Output { name: name.to_string(), seq, record, done });
    }

    fn finished(&self, end: JobEnd) -> Result<(), StoreError> {
        self.write(Op::Finished {
            name: end.name,
            state: end.state,
            at: secs(end.at),
            error: end.error,
            streams: end.streams.to_string(),
            done: end.done,
        })
    }

    fn delete(&self, name: &str) -> Result<bool, StoreError> {
        if !self.exists(name)? {
            return Ok(false);
        }
        self.write(Op::Delete { name: name.to_string() })?;
        Ok(true)
    }

    /// One job with its history and streams; `None` if unknown.
    fn get(&self, name: &str) -> Result<Option<Value>, StoreError> {
        self.read(|c| {
            let Some((id, mut job)) =
                c.query_row(&format!("SELECT {COLUMNS} FROM jobs WHERE name = ?1"), [name], row_to_job).optional()?
            else {
                return Ok(None);
            };
            let mut stmt = c.prepare_cached("SELECT state, at FROM history WHERE job_id = ?1 ORDER BY rowid")?;
            let history: Vec<Value> = stmt
                .query_map([id], |r| Ok(json!({"state": r.get::<_, String>(0)?, "at": rfc3339(r.get(1)?)})))?
                .collect::<rusqlite::Result<_>>()?;
            let outputs: u64 = c.query_row("SELECT count(*) FROM outputs WHERE job_id = ?1", [id], |r| r.get(0))?;
            job["history"] = Value::Array(history);
            job["output_count"] = json!(outputs);
            Ok(Some(job))
        })
    }

    /// A page of jobs, oldest first, optionally of one state; and the
    /// number of jobs that match.
    fn list(&self, state: Option<&str>, offset: u64, limit: u64) -> Result<(u64, Vec<Value>), StoreError> {
        self.read(|c| {
            let filter = if state.is_some() { "WHERE state = ?1" } else { "WHERE ?1 IS NULL" };
            let total: u64 = c.query_row(&format!("SELECT count(*) FROM jobs {filter}"), [state], |r| r.get(0))?;
            let sql = format!("SELECT {COLUMNS} FROM jobs {filter} ORDER BY id LIMIT ?2 OFFSET ?3");
            let mut stmt = c.prepare_cached(&sql)?;
            let jobs = stmt
                .query_map(params![state, limit as i64, offset as i64], row_to_job)?
                .map(|r| r.map(|(_, j)| j))
                .collect::<rusqlite::Result<_>>()?;
            Ok((total, jobs))
        })
    }

    /// A page of a job's output records and their total; `None` if unknown.
    fn output(&self, name: &str, offset: u64, limit: u64) -> Result<Option<(u64, Vec<Value>)>, StoreError> {
        self.read(|c| {
            let Some(id) =
                c.query_row("SELECT id FROM jobs WHERE name = ?1", [name], |r| r.get::<_, i64>(0)).optional()?
            else {
                return Ok(None);
            };
            let total: u64 = c.query_row("SELECT count(*) FROM outputs WHERE job_id = ?1", [id], |r| r.get(0))?;
            let mut stmt =
                c.prepare_cached("SELECT seq, record FROM outputs WHERE job_id = ?1 ORDER BY seq LIMIT ?2 OFFSET ?3")?;
            let records = stmt
                .query_map(params![id, limit as i64, offset as i64], |r| {
                    let seq: u64 = r.get(0)?;
                    let text: String = r.get(1)?;
                    let mut record: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
                    if let Value::Object(map) = &mut record {
                        map.insert("seq".into(), json!(seq));
                    }
                    Ok(record)
                })?
                .collect::<rusqlite::Result<_>>()?;
            Ok(Some((total, records)))
        })
    }

    fn health(&self) -> StoreHealth {
        StoreHealth::default()
    }

    fn stored_request(&self, name: &str) -> Result<Option<StoredRequest>, StoreError> {
        self.read(|c| verbs::stored_request(c, name))
    }

    fn unfinished_items(&self, name: &str, total: u64, limit: usize) -> Result<(u64, Vec<u64>), StoreError> {
        self.read(|c| verbs::unfinished_items(c, name, total, limit))
    }

    fn delete_finished(&self, names: &[String]) -> Result<(), StoreError> {
        self.write(Op::DeleteFinished { names: names.to_vec() })
    }

    fn close(&self) {
        self.shutdown();
    }
}

const COLUMNS: &str = "id, name, state, parallel, submitted_at, started_at, ended_at, progress_done, progress_total, \
                       error, streams, request";

fn row_to_job(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, Value)> {
    let started: Option<f64> = r.get(5)?;
    let ended: Option<f64> = r.get(6)?;
    let duration = match (started, ended) {
        (Some(s), Some(e)) => json!(((e - s) * 1000.0).max(0.0).round() / 1000.0),
        (Some(s), None) => json!(((secs(SystemTime::now()) - s) * 1000.0).max(0.0).round() / 1000.0),
        _ => Value::Null,
    };
    let streams: Option<String> = r.get(10)?;
    let request: String = r.get(11)?;
    let request: Value = serde_json::from_str(&request).unwrap_or(Value::Null);
    let job = json!({
        "name": r.get::<_, String>(1)?,
        "state": r.get::<_, String>(2)?,
        "kind": if r.get::<_, bool>(3)? { "parallel" } else { "single" },
        "submitted": rfc3339(r.get(4)?),
        "start": rfc3339(started),
        "end": rfc3339(ended),
        "duration_s": duration,
        "progress": {"done": r.get::<_, u64>(7)?, "total": r.get::<_, u64>(8)?},
        "error": r.get::<_, Option<String>>(9)?,
        "streams": streams.and_then(|s| serde_json::from_str::<Value>(&s).ok()).unwrap_or_else(|| json!({})),
        "script_name": request.get("script_name").cloned().unwrap_or(Value::Null),
    });
    Ok((r.get(0)?, job))
}

/// Marks every Queued or Running job Interrupted (the server that ran
/// them is gone) and records it in their history.
fn interrupt_unfinished(conn: &mut Connection) -> rusqlite::Result<usize> {
    let now = secs(SystemTime::now());
    let tx = conn.transaction()?;
    tx.execute(
        "INSERT INTO history (job_id, state, at) SELECT id, 'Interrupted', ?1 FROM jobs \
         WHERE state IN ('Queued', 'Running')",
        [now],
    )?;
    let n = tx.execute(
        "UPDATE jobs SET state = 'Interrupted', ended_at = ?1, \
         error = coalesce(error, CASE state WHEN 'Running' THEN 'the server stopped while the job was running' \
         ELSE 'the server stopped before the job started' END) \
         WHERE state IN ('Queued', 'Running')",
        [now],
    )?;
    tx.commit()?;
    Ok(n)
}

fn write_loop(mut conn: Connection, rx: &Receiver<Msg>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(msg) => batch.push(msg),
                Err(_) => break,
            }
        }
        let results: Vec<Result<(), String>> = match conn.transaction() {
            Ok(tx) => {
                let results = batch.iter().map(|m| apply(&tx, &m.op).map_err(|e| e.to_string())).collect();
                match tx.commit() {
                    Ok(()) => results,
                    Err(e) => batch.iter().map(|_| Err(format!("commit failed: {e}"))).collect(),
                }
            }
            Err(e) => batch.iter().map(|_| Err(format!("cannot begin a transaction: {e}"))).collect(),
        };
        if batch.iter().any(|m| matches!(m.op, Op::Delete { .. } | Op::DeleteFinished { .. })) {
            // Give the deleted jobs' pages back to the file system (auto_vacuum
            // is INCREMENTAL since schema version 2). A failure only delays it.
            let _ = conn.execute_batch("PRAGMA incremental_vacuum");
        }
        for (msg, result) in batch.into_iter().zip(results) {
            if let Some(ack) = msg.ack {
                let _ = ack.send(result);
            }
        }
    }
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
}

fn apply(tx: &rusqlite::Transaction<'_>, op: &Op) -> rusqlite::Result<()> {
    let job_id = |name: &str| tx.query_row("SELECT id FROM jobs WHERE name = ?1", [name], |r| r.get::<_, i64>(0));
    match op {
        Op::Insert { name, parallel, request, total, at, inputs } => {
            tx.execute(
                "INSERT INTO jobs (name, state, parallel, request, submitted_at, progress_total, inputs) \
                 VALUES (?1, 'Queued', ?2, ?3, ?4, ?5, ?6)",
                params![name, parallel, request, at, *total as i64, inputs],
            )?;
            tx.execute(
                "INSERT INTO history (job_id, state, at) VALUES (?1, 'Queued', ?2)",
                params![tx.last_insert_rowid(), at],
            )?;
        }
        Op::Started { name, at } => {
            let id = job_id(name)?;
            tx.execute("UPDATE jobs SET state = 'Running', started_at = ?2 WHERE id = ?1", params![id, at])?;
            tx.execute("INSERT INTO history (job_id, state, at) VALUES (?1, 'Running', ?2)", params![id, at])?;
        }
        Op::Output { name, seq, record, done } => {
            let id = job_id(name)?;
            tx.execute(
                "INSERT OR REPLACE INTO outputs (job_id, seq, record) VALUES (?1, ?2, ?3)",
                params![id, *seq as i64, record],
            )?;
            if let Some(done) = done {
                tx.execute("UPDATE jobs SET progress_done = ?2 WHERE id = ?1", params![id, *done as i64])?;
            }
        }
        Op::Finished { name, state, at, error, streams, done } => {
            let id = job_id(name)?;
            tx.execute(
                "UPDATE jobs SET state = ?2, ended_at = ?3, error = ?4, streams = ?5, progress_done = ?6, \
                 started_at = coalesce(started_at, CASE WHEN ?2 = 'Stopped' THEN NULL ELSE ?3 END) WHERE id = ?1",
                params![id, state, at, error, streams, *done as i64],
            )?;
            tx.execute("INSERT INTO history (job_id, state, at) VALUES (?1, ?2, ?3)", params![id, state, at])?;
        }
        Op::Delete { name } => {
            if let Some(id) = job_id(name).optional()? {
                tx.execute("DELETE FROM outputs WHERE job_id = ?1", [id])?;
                tx.execute("DELETE FROM history WHERE job_id = ?1", [id])?;
                tx.execute("DELETE FROM jobs WHERE id = ?1", [id])?;
            }
        }
        Op::DeleteFinished { names } => {
            for name in names {
                verbs::delete_finished(tx, name)?;
            }
        }
        Op::Flush => {}
    }
    Ok(())
}
