//! The SQLite store's writer: one thread that commits whatever has queued
//! up in one transaction (group commit), so a burst of submissions from
//! many clients costs one fsync per batch, not one per job.
//!
//! Nothing is lost without a word: a write that fails (disk full,
//! read-only file system, I/O error) is reported to its caller when the
//! caller waits for it, and in every case marks the job it belongs to as
//! failed ([`Failures`]): the job's end is then stored as `Failed` with a
//! `storage error: …` message, reads show it so even when that write fails
//! too, and the store reports itself failing until a write succeeds again.

use crossbeam_channel::Receiver;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension};

use crate::store::writes::{Failures, Msg, Op};

/// The most operations committed in one transaction.
const BATCH: usize = 1024;

/// Whether an error means the store failed (rather than the request: a
/// duplicate name, or a job deleted while it ran).
fn is_storage_failure(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::QueryReturnedNoRows => false,
        rusqlite::Error::SqliteFailure(f, _) => f.code != ErrorCode::ConstraintViolation,
        _ => true,
    }
}

/// Commits what arrives until every sender is gone, then checkpoints.
pub(super) fn write_loop(mut conn: Connection, rx: &Receiver<Msg>, failures: &Failures) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(msg) => batch.push(msg),
                Err(_) => break,
            }
        }
        let results = commit(&mut conn, &batch, failures);
        if batch.iter().any(|m| matches!(m.op, Op::Delete { .. } | Op::DeleteFinished { .. })) {
            // Give the deleted jobs' pages back to the file system (auto_vacuum
            // is INCREMENTAL since schema version 2). A failure only delays it.
            let _ = incremental_vacuum(&conn);
            // Copy the shrunk database back from the WAL now (without
            // waiting for readers), so the file shrinks soon, not at exit.
            let _ = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)");
        }
        for (msg, result) in batch.into_iter().zip(results) {
            if let Some(ack) = msg.ack {
                let _ = ack.send(result);
            }
        }
    }
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
}

/// Frees every page on the free list. The pragma frees one page per step,
/// so it is stepped to its end.
fn incremental_vacuum(conn: &Connection) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare("PRAGMA incremental_vacuum")?;
    let mut rows = stmt.query([])?;
    while rows.next()?.is_some() {}
    Ok(())
}

/// Applies a batch in one transaction; returns each write's outcome and
/// records every storage failure against its job.
fn commit(conn: &mut Connection, batch: &[Msg], failures: &Failures) -> Vec<Result<(), String>> {
    let fail_all = |why: String| {
        batch.iter().for_each(|m| failures.lost(&m.op, &why));
        failures.set_failing(Some(why.clone()));
        batch.iter().map(|_| Err(why.clone())).collect()
    };
    let tx = match conn.transaction() {
        Ok(tx) => tx,
        Err(e) => return fail_all(format!("cannot begin a transaction: {e}")),
    };
    let mut results = Vec::with_capacity(batch.len());
    let mut failed = None;
    for msg in batch {
        let result = apply(&tx, &msg.op, failures);
        if let Err(e) = &result {
            if is_storage_failure(e) {
                failures.lost(&msg.op, &e.to_string());
                failed = Some(e.to_string());
            }
            if tx.is_autocommit() {
                // SQLite rolled the whole transaction back (as it may on a
                // full disk): nothing of this batch is stored.
                return fail_all(e.to_string());
            }
        }
        results.push(result.map_err(|e| e.to_string()));
    }
    match tx.commit() {
        Ok(()) => {
            failures.set_failing(failed);
            results
        }
        Err(e) => fail_all(format!("commit failed: {e}")),
    }
}

fn apply(tx: &rusqlite::Transaction<'_>, op: &Op, failures: &Failures) -> rusqlite::Result<()> {
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
                // An item's record: count it if it failed (for the dashboard's list).
                tx.execute(
                    "UPDATE jobs SET progress_done = ?2, failed_items = failed_items + \
                     (json_valid(?3) AND json_extract(?3, '$.status') IN ('Failed', 'TimedOut')) WHERE id = ?1",
                    params![id, *done as i64, record],
                )?;
            }
        }
        Op::Stream { name, stream, seq, record } => {
            let id = job_id(name)?;
            tx.execute(
                "INSERT OR REPLACE INTO stream_records (job_id, stream, seq, record) VALUES (?1, ?2, ?3, ?4)",
                params![id, stream, *seq as i64, record],
            )?;
        }
        Op::Finished { name, state, at, error, done } => {
            let id = job_id(name)?;
            // Records of this job were lost: it did not complete, whatever it did.
            let lost = failures.message(name);
            let (state, error) = match &lost {
                Some(message) => ("Failed", Some(message)),
                None => (state.as_str(), error.as_ref()),
            };
            tx.execute(
                "UPDATE jobs SET state = ?2, ended_at = ?3, error = ?4, progress_done = ?5, \
                 started_at = coalesce(started_at, CASE WHEN ?2 = 'Stopped' THEN NULL ELSE ?3 END) WHERE id = ?1",
                params![id, state, at, error, *done as i64],
            )?;
            tx.execute("INSERT INTO history (job_id, state, at) VALUES (?1, ?2, ?3)", params![id, state, at])?;
        }
        Op::Delete { name } => {
            if let Some(id) = job_id(name).optional()? {
                delete_job(tx, id)?;
            }
        }
        Op::DeleteFinished { names } => {
            for name in names {
                let finished = "SELECT id FROM jobs WHERE name = ?1 AND state NOT IN ('Queued', 'Running')";
                if let Some(id) = tx.query_row(finished, [name], |r| r.get::<_, i64>(0)).optional()? {
                    delete_job(tx, id)?;
                }
            }
        }
        Op::Flush => {}
    }
    Ok(())
}

/// Deletes a job with everything recorded of it.
fn delete_job(tx: &rusqlite::Transaction<'_>, id: i64) -> rusqlite::Result<()> {
    for table in ["outputs", "stream_records", "history"] {
        tx.execute(&format!("DELETE FROM {table} WHERE job_id = ?1"), [id])?;
    }
    tx.execute("DELETE FROM jobs WHERE id = ?1", [id])?;
    Ok(())
}
