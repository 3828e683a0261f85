//! The PostgreSQL store's writer: one thread that commits whatever has
//! queued up in one transaction (group commit), as the SQLite store's
//! writer does, with the same promise: a write that fails is reported to
//! its caller when it waits, and in every case marks its job failed.
//!
//! Every statement names its job by name and touches nothing when the job
//! is gone (deleted while it ran), so one statement's failure means the
//! database failed, and the whole batch is lost with it.

use std::sync::OnceLock;

use crossbeam_channel::Receiver;
use deadpool_postgres::Pool;
use tokio_postgres::Transaction;

use super::{pg_error, pool_error, to_i64};
use crate::store::writes::{Failures, Msg, Op};

/// The most operations committed in one transaction.
const BATCH: usize = 1024;

/// The acknowledgement of an insert whose name is taken.
pub(super) const DUPLICATE: &str = "duplicate";

/// Commits what arrives until every sender is gone.
/// `owner` is the server whose jobs these are, once it registered (see `servers`).
pub(super) fn write_loop(
    runtime: &tokio::runtime::Handle,
    pool: &Pool,
    rx: &Receiver<Msg>,
    failures: &Failures,
    owner: &OnceLock<String>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(msg) => batch.push(msg),
                Err(_) => break,
            }
        }
        // This thread is the writer's own, never a runtime's: block_on is sound here.
        let results = runtime.block_on(commit(pool, &batch, failures, owner.get()));
        for (msg, result) in batch.into_iter().zip(results) {
            if let Some(ack) = msg.ack {
                let _ = ack.send(result);
            }
        }
    }
}

async fn commit(pool: &Pool, batch: &[Msg], failures: &Failures, owner: Option<&String>) -> Vec<Result<(), String>> {
    let fail_all = |why: String| {
        batch.iter().for_each(|m| failures.lost(&m.op, &why));
        failures.set_failing(Some(why.clone()));
        batch.iter().map(|_| Err(why.clone())).collect::<Vec<_>>()
    };
    let mut client = match pool.get().await {
        Ok(c) => c,
        Err(e) => return fail_all(format!("cannot connect: {}", pool_error(&e))),
    };
    let tx = match client.transaction().await {
        Ok(tx) => tx,
        Err(e) => return fail_all(format!("cannot begin a transaction: {}", pg_error(&e))),
    };
    let mut results = Vec::with_capacity(batch.len());
    for msg in batch {
        match apply(&tx, &msg.op, failures, owner).await {
            Ok(result) => results.push(result),
            Err(e) => return fail_all(pg_error(&e)),
        }
    }
    match tx.commit().await {
        Ok(()) => {
            failures.set_failing(None);
            results
        }
        Err(e) => fail_all(format!("commit failed: {}", pg_error(&e))),
    }
}

/// Applies one write; `Ok(Err(…))` is a refusal of this write alone (a
/// duplicate name), `Err` a failure of the database.
async fn apply(
    tx: &Transaction<'_>,
    op: &Op,
    failures: &Failures,
    owner: Option<&String>,
) -> Result<Result<(), String>, tokio_postgres::Error> {
    match op {
        Op::Insert { name, parallel, request, total, at, inputs } => {
            let row = tx
                .query_opt(
                    "INSERT INTO jobs (name, state, parallel, request, submitted_at, progress_total, inputs, server_id) \
                     VALUES ($1, 'Queued', $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING RETURNING id",
                    &[name, parallel, request, at, &to_i64(*total), inputs, &owner],
                )
                .await?;
            let Some(row) = row else {
                return Ok(Err(DUPLICATE.into()));
            };
            let id: i64 = row.get(0);
            tx.execute("INSERT INTO history (job_id, state, at) VALUES ($1, 'Queued', $2)", &[&id, at]).await?;
        }
        Op::Started { name, at } => {
            tx.execute(
                "WITH j AS (UPDATE jobs SET state = 'Running', started_at = $2 WHERE name = $1 AND state = 'Queued' \
                 RETURNING id) \
                 INSERT INTO history (job_id, state, at) SELECT id, 'Running', $2 FROM j",
                &[name, at],
            )
            .await?;
        }
        Op::Output { name, seq, record, done } => {
            tx.execute(
                "INSERT INTO outputs (job_id, seq, record) SELECT id, $2, $3 FROM jobs WHERE name = $1 \
                 AND state IN ('Queued', 'Running') ON CONFLICT (job_id, seq) DO UPDATE SET record = excluded.record",
                &[name, &to_i64(*seq), record],
            )
            .await?;
            if let Some(done) = done {
                // Failed items are counted as they arrive, as in the SQLite
                // store, so the dashboard's list reads no job's records.
                let failed = failed_status(record);
                tx.execute(
                    "UPDATE jobs SET progress_done = $2, failed_items = failed_items + $3 \
                     WHERE name = $1 AND state IN ('Queued', 'Running')",
                    &[name, &to_i64(*done), &i64::from(failed)],
                )
                .await?;
            }
        }
        Op::Stream { name, stream, seq, record } => {
            tx.execute(
                "INSERT INTO stream_records (job_id, stream, seq, record) SELECT id, $2, $3, $4 FROM jobs \
                 WHERE name = $1 ON CONFLICT (job_id, stream, seq) DO UPDATE SET record = excluded.record",
                &[name, stream, &to_i64(*seq), record],
            )
            .await?;
        }
        Op::Finished { name, state, at, error, done } => {
            let lost = failures.message(name);
            let (state, error) = match &lost {
                Some(message) => ("Failed", Some(message)),
                None => (state.as_str(), error.as_ref()),
            };
            tx.execute(
                "WITH j AS (UPDATE jobs SET state = $2::text, ended_at = $3::float8, error = $4, progress_done = $5, \
                 started_at = coalesce(started_at, CASE WHEN $2::text = 'Stopped' THEN NULL ELSE $3::float8 END) \
                 WHERE name = $1 AND state IN ('Queued', 'Running') RETURNING id) \
                 INSERT INTO history (job_id, state, at) SELECT id, $2, $3 FROM j",
                &[name, &state, at, &error, &to_i64(*done)],
            )
            .await?;
        }
        Op::Delete { name } => {
            // The job's records go with it (ON DELETE CASCADE).
            tx.execute("DELETE FROM jobs WHERE name = $1", &[name]).await?;
        }
        Op::DeleteFinished { names } => {
            tx.execute("DELETE FROM jobs WHERE name = ANY($1) AND state NOT IN ('Queued', 'Running')", &[names])
                .await?;
        }
        Op::Flush => {}
    }
    Ok(Ok(()))
}

/// Whether an item's record says it failed or timed out.
fn failed_status(record: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Status<'a> {
        #[serde(borrow)]
        status: Option<&'a str>,
    }
    serde_json::from_str::<Status<'_>>(record).is_ok_and(|r| matches!(r.status, Some("Failed" | "TimedOut")))
}
