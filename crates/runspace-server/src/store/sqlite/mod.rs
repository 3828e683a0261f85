//! The embedded SQLite store: every job, its request, state history,
//! outputs and streams, so that a restart loses nothing.
//!
//! All writes go through one writer thread ([`writer`]); reads use their
//! own connections, which WAL lets run beside the writer.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{bounded, Sender};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::{json, Map, Value};

mod dashboard;
mod schema;
mod verbs;
mod writer;

use crate::limits::MAX_PAGE_BYTES;
use crate::private::{self, Access};

use super::writes::{Failures, Msg, Op};

use super::{
    rfc3339, secs, Cursor, From, ItemsPage, JobEnd, JobQuery, JobRow, JobStore, JobsPage, NewJob, Page, StoreError,
    StoreHealth, StoredRequest, STREAM_TAIL,
};

/// How long a caller waits for its write to commit before giving up.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// The most writes queued for the writer: a job producing records faster
/// than the disk takes them waits, rather than the server's memory growing.
const QUEUE: usize = 4096;

/// The store: a writer thread and a handful of reader connections.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Option<(Sender<Msg>, JoinHandle<()>)>>,
    readers: Mutex<Vec<Connection>>,
    failures: Arc<Failures>,
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
    // The WAL shrinks back to this after a checkpoint, instead of keeping
    // the size of the largest burst of writes.
    conn.pragma_update(None, "journal_size_limit", 64i64 << 20)?;
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
        let (tx, rx) = bounded::<Msg>(QUEUE);
        let failures = Arc::new(Failures::default());
        let writer_failures = failures.clone();
        let writer = std::thread::Builder::new()
            .name("rsp-db-writer".into())
            .spawn(move || writer::write_loop(conn, &rx, &writer_failures))
            .map_err(|e| format!("cannot start the database writer: {e}"))?;
        let store = SqliteStore {
            path: path.to_path_buf(),
            writer: Mutex::new(Some((tx, writer))),
            readers: Mutex::default(),
            failures,
            _lock: lock,
        };
        Ok((store, interrupted))
    }

    /// The writer's queue, unless the store is closed.
    fn sender(&self) -> Option<Sender<Msg>> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|(tx, _)| tx.clone())
    }

    /// Queues a write without waiting for it to commit (waiting while the
    /// queue is full); a failure marks its job failed.
    fn send(&self, op: Op, name: &str) {
        let sent = self.sender().is_some_and(|tx| tx.send(Msg { op, ack: None }).is_ok());
        if !sent {
            self.failures.lost_write(name, "the database is closed");
        }
    }

    /// Writes and waits until it is committed.
    fn write(&self, op: Op) -> Result<(), StoreError> {
        let (ack_tx, ack_rx) = bounded(1);
        let closed = || StoreError::Storage("the database is closed".into());
        self.sender().ok_or_else(closed)?.send(Msg { op, ack: Some(ack_tx) }).map_err(|_| closed())?;
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

    /// A job as stored, corrected by what the writer knows and the
    /// database may not: that the job lost records (even its end) to a
    /// storage error, so it failed.
    fn overlay(&self, mut job: Value) -> Value {
        if let Some(message) = job["name"].as_str().and_then(|name| self.failures.message(name)) {
            job["state"] = json!("Failed");
            job["error"] = json!(message);
        }
        job
    }

    /// [`SqliteStore::overlay`] for a dashboard row.
    fn overlay_row(&self, row: &mut JobRow) {
        if let Some(message) = self.failures.message(&row.name) {
            row.state = "Failed".into();
            row.error = Some(message);
        }
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
        self.write(Op::insert(job)).map_err(|e| match e {
            StoreError::Duplicate(_) => StoreError::Duplicate(name),
            other => other,
        })
    }

    fn started(&self, name: &str, at: SystemTime) {
        self.send(Op::Started { name: name.to_string(), at: secs(at) }, name);
    }

    fn record_stream(&self, name: &str, stream: &str, seq: u64, record: String) {
        self.send(Op::Stream { name: name.to_string(), stream: stream.to_string(), seq, record }, name);
    }

    fn record_output(&self, name: &str, seq: u64, record: String, done: Option<u64>) {
        self.send(Op::Output { name: name.to_string(), seq, record, done }, name);
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
            // Not even its end could be stored: reads still say how it ended.
            self.failures.lost_write(&name, e);
        }
        result
    }

    fn delete(&self, name: &str) -> Result<bool, StoreError> {
        if !self.exists(name)? {
            return Ok(false);
        }
        self.write(Op::Delete { name: name.to_string() })?;
        self.failures.forget(name);
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
            let (counts, tails) = stream_tails(c, id)?;
            job["streams"] = Value::Object(tails);
            job["stream_counts"] = Value::Object(counts);
            Ok(Some(job))
        })
        .map(|job| job.map(|j| self.overlay(j)))
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
        .map(|(total, jobs): (u64, Vec<Value>)| (total, jobs.into_iter().map(|j| self.overlay(j)).collect()))
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
            let rows = stmt.query(params![id, limit as i64, offset as i64])?;
            let records = read_page(rows, |seq, record| {
                if let Value::Object(map) = record {
                    map.insert("seq".into(), json!(seq));
                }
            })?;
            Ok(Some((total, records)))
        })
    }

    fn stream(&self, name: &str, stream: &str, from: From, limit: u64) -> Result<Option<Page>, StoreError> {
        self.read(|c| {
            let Some(id) =
                c.query_row("SELECT id FROM jobs WHERE name = ?1", [name], |r| r.get::<_, i64>(0)).optional()?
            else {
                return Ok(None);
            };
            let total: u64 = c.query_row(
                "SELECT count(*) FROM stream_records WHERE job_id = ?1 AND stream = ?2",
                params![id, stream],
                |r| r.get(0),
            )?;
            let offset = match from {
                From::Offset(n) => n,
                From::Tail => total.saturating_sub(limit),
            };
            let mut stmt = c.prepare_cached(
                "SELECT seq, record FROM stream_records WHERE job_id = ?1 AND stream = ?2 ORDER BY seq \
                 LIMIT ?3 OFFSET ?4",
            )?;
            let rows = stmt.query(params![id, stream, limit as i64, offset as i64])?;
            let records = read_page(rows, |_, _| {})?;
            Ok(Some(Page { total, offset, records }))
        })
    }

    fn health(&self) -> StoreHealth {
        StoreHealth { failing: self.failures.failing(), failed_jobs: self.failures.failed_jobs() }
    }

    fn stored_request(&self, name: &str) -> Result<Option<StoredRequest>, StoreError> {
        self.read(|c| verbs::stored_request(c, name))
    }

    fn unfinished_items(&self, name: &str, total: u64, limit: usize) -> Result<(u64, Vec<u64>), StoreError> {
        self.read(|c| verbs::unfinished_items(c, name, total, limit))
    }

    fn delete_finished(&self, names: &[String]) -> Result<(), StoreError> {
        self.write(Op::DeleteFinished { names: names.to_vec() })?;
        names.iter().for_each(|name| self.failures.forget(name));
        Ok(())
    }

    fn close(&self) {
        self.shutdown();
    }

    fn state_counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(dashboard::state_counts)
    }

    fn job_rows(&self, query: &JobQuery) -> Result<JobsPage, StoreError> {
        let mut page = self.read(|c| dashboard::job_rows(c, query))?;
        page.rows.iter_mut().for_each(|row| self.overlay_row(row));
        Ok(page)
    }

    fn job_row(&self, name: &str) -> Result<Option<JobRow>, StoreError> {
        let mut row = self.read(|c| dashboard::one_job(c, name))?;
        row.iter_mut().for_each(|row| self.overlay_row(row));
        Ok(row)
    }

    fn active_jobs(&self, limit: u64) -> Result<Vec<JobRow>, StoreError> {
        self.read(|c| dashboard::active_jobs(c, limit))
    }

    fn item_rows(
        &self,
        name: &str,
        status: Option<&str>,
        cursor: Cursor,
        limit: u64,
    ) -> Result<Option<ItemsPage>, StoreError> {
        self.read(|c| dashboard::item_rows(c, name, status, cursor, limit))
    }
}

const COLUMNS: &str = "id, name, state, parallel, submitted_at, started_at, ended_at, progress_done, progress_total, \
                       error, request";

/// Reads `(seq, record)` rows into JSON records, stopping before the page
/// would pass [`MAX_PAGE_BYTES`] (but never before the first record).
fn read_page(mut rows: rusqlite::Rows<'_>, mut dress: impl FnMut(u64, &mut Value)) -> rusqlite::Result<Vec<Value>> {
    let (mut records, mut bytes) = (Vec::new(), 0);
    while let Some(row) = rows.next()? {
        let seq: u64 = row.get(0)?;
        let text: String = row.get(1)?;
        bytes += text.len();
        if bytes > MAX_PAGE_BYTES && !records.is_empty() {
            break;
        }
        let mut record: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        dress(seq, &mut record);
        records.push(record);
    }
    Ok(records)
}

/// How many records each of a job's streams has, and the last
/// [`STREAM_TAIL`] of each.
fn stream_tails(c: &Connection, id: i64) -> rusqlite::Result<(Map<String, Value>, Map<String, Value>)> {
    let mut stmt = c.prepare_cached(
        "SELECT stream, count(*) FROM stream_records WHERE job_id = ?1 GROUP BY stream ORDER BY stream",
    )?;
    let counts: Vec<(String, u64)> =
        stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
    let mut tail = c.prepare_cached(
        "SELECT record FROM stream_records WHERE job_id = ?1 AND stream = ?2 AND seq >= ?3 ORDER BY seq",
    )?;
    let mut tails = Map::new();
    for (stream, count) in &counts {
        // seq runs 0..count within a stream, so the tail is a range of it.
        let from = count.saturating_sub(STREAM_TAIL) as i64;
        let records: Vec<Value> = tail
            .query_map(params![id, stream, from], |r| {
                let text: String = r.get(0)?;
                Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
            })?
            .collect::<rusqlite::Result<_>>()?;
        tails.insert(stream.clone(), Value::Array(records));
    }
    let counts = counts.into_iter().map(|(stream, n)| (stream, json!(n))).collect();
    Ok((counts, tails))
}

fn row_to_job(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, Value)> {
    let request: String = r.get(10)?;
    let job = super::job_json(super::StoredJob {
        name: r.get(1)?,
        state: r.get(2)?,
        parallel: r.get(3)?,
        submitted: r.get(4)?,
        started: r.get(5)?,
        ended: r.get(6)?,
        done: r.get(7)?,
        total: r.get(8)?,
        error: r.get(9)?,
        request: &request,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn page_count(path: &Path) -> i64 {
        let conn = Connection::open(path).unwrap();
        conn.pragma_query_value(None, "page_count", |r| r.get(0)).unwrap()
    }

    #[test]
    fn deleting_a_job_gives_its_space_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        let (store, _) = SqliteStore::open(&path).unwrap();
        let job = NewJob {
            name: "big".into(),
            parallel: true,
            request: "{}".into(),
            total: 2000,
            at: SystemTime::now(),
            inputs: None,
        };
        store.insert(job).unwrap();
        for seq in 0..2000 {
            store.record_output("big", seq, format!("{{\"result\": \"{}\"}}", "x".repeat(10_000)), Some(seq + 1));
        }
        let end =
            JobEnd { name: "big".into(), state: "Completed".into(), at: SystemTime::now(), error: None, done: 2000 };
        store.finished(end).unwrap();
        assert_eq!(store.output("big", 0, 10).unwrap().unwrap().0, 2000);
        store.close();
        drop(store);
        let full = page_count(&path);
        let (store, _) = SqliteStore::open(&path).unwrap();
        assert!(store.delete("big").unwrap());
        store.close();
        drop(store);
        let after = page_count(&path);
        assert!(after * 10 < full, "{full} pages before the delete, {after} after");
    }

    #[test]
    fn a_page_of_output_is_bounded_in_bytes_but_never_empty() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = SqliteStore::open(&dir.path().join("jobs.db")).unwrap();
        let job = NewJob {
            name: "j".into(),
            parallel: true,
            request: "{}".into(),
            total: 10,
            at: SystemTime::now(),
            inputs: None,
        };
        store.insert(job).unwrap();
        let huge = format!("{{\"result\": \"{}\"}}", "y".repeat(MAX_PAGE_BYTES));
        store.record_output("j", 0, huge, Some(1));
        for seq in 1..10 {
            store.record_output(
                "j",
                seq,
                format!("{{\"result\": \"{}\"}}", "z".repeat(MAX_PAGE_BYTES / 4)),
                Some(seq + 1),
            );
        }
        store.close();
        let (store, _) = {
            drop(store);
            SqliteStore::open(&dir.path().join("jobs.db")).unwrap()
        };
        let (total, first) = store.output("j", 0, 100).unwrap().unwrap();
        assert_eq!((total, first.len()), (10, 1), "one record over the byte bound still comes alone");
        let (_, next) = store.output("j", 1, 100).unwrap().unwrap();
        assert!((1..4).contains(&next.len()), "{} records", next.len());
    }
}
