//! The cluster's work queue: a cluster job's items are rows, cut into
//! chunks that workers lease.
//!
//! - **Claim**: one short transaction takes the first open chunk whose
//!   lease is free or expired, `FOR UPDATE SKIP LOCKED` (workers never wait
//!   on each other's claims), and sets `lease_owner`, `attempt + 1` and
//!   `lease_until`, on the database's clock (the hosts' clocks never
//!   matter).
//! - **Heartbeat**: extends every lease a worker holds.
//! - **Complete**: in one transaction, the fence (`UPDATE chunks … WHERE
//!   lease_owner = $me AND attempt = $a AND NOT done`), then the items'
//!   records (the key (job, item) is unique). A completion that finds the
//!   fence closed (its lease expired and another worker took the chunk, or
//!   the chunk is done) records nothing and is counted on the job and the
//!   worker as rejected.
//!
//! So a script may run more than once (a worker that dies or is cut off
//! mid-chunk has its chunk run again elsewhere), and every item's result
//! is recorded exactly once. New work is announced with `NOTIFY` on
//! [`WORK_CHANNEL`]; workers also poll.

use std::time::Duration;

use futures_util::future::{join3, join5};
use serde_json::{json, Value};
use tokio_postgres::types::ToSql;

use super::{pg_error, PgStore};
use crate::store::{secs, StoreError};

/// The channel `NOTIFY`ed when a cluster job is submitted.
pub const WORK_CHANNEL: &str = "rsp_work";

/// A cluster job to submit.
#[derive(Debug, Clone)]
pub struct ClusterJob {
    /// Its unique name.
    pub name: String,
    /// What the workers run: the request as the job service keeps it
    /// (`script`, `script_name`, `params`, `variables`, `modules`,
    /// `allow`, `memory_limit`, `timeout_ms`, `cwd`, `env`).
    pub request: Value,
    /// Its inputs, item `i` being `inputs[i]`.
    pub inputs: Vec<Value>,
    /// How many items a worker claims at once.
    pub chunk_size: usize,
}

/// A chunk a worker holds.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The job's row.
    pub job_id: i64,
    /// The job's name.
    pub job: String,
    /// The chunk's number within the job.
    pub chunk: i32,
    /// The index of its first item.
    pub first: u64,
    /// The attempt this lease is for: the fence.
    pub attempt: i32,
    /// Its items' inputs, item `first + i` being `inputs[i]`.
    pub inputs: Vec<Value>,
    /// Why its inputs column could not be read as a JSON array (then
    /// `inputs` is empty): the row was not written by rsp.
    pub malformed: Option<String>,
}

/// A worker, as the `workers` table keeps it.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    /// Unique per process: the lease owner.
    pub id: String,
    /// The name it was given (or its host's).
    pub name: String,
    /// Its host.
    pub host: String,
    /// How many items it runs at once.
    pub slots: u32,
    /// The most capabilities it grants.
    pub allow_max: String,
}

/// How a completion went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// The records are stored.
    Recorded,
    /// The fence was closed: nothing stored, counted as rejected.
    Rejected,
}

/// A cluster job's progress, as a submitter follows it.
#[derive(Debug, Clone)]
pub struct JobStatus {
    /// Its state (`Queued`, `Running`, `Completed`, …).
    pub state: String,
    /// Items recorded.
    pub done: u64,
    /// Items in all.
    pub total: u64,
    /// Completions the fence rejected.
    pub rejected: u64,
    /// Why workers refused it, one line per worker.
    pub refusals: Vec<String>,
}

/// The claim of the first open chunk: `$1` the worker, `$2` the jobs it
/// refused, `$3` the lease in seconds. Returns the chunk and its job's name.
const CLAIM: &str = "
WITH open AS (
    SELECT ch.job_id, ch.chunk FROM chunks ch JOIN jobs j ON j.id = ch.job_id
    WHERE NOT ch.done AND j.state IN ('Queued', 'Running') AND NOT (ch.job_id = ANY($2))
      AND (ch.lease_owner IS NULL OR ch.lease_until < now())
    ORDER BY ch.job_id, ch.chunk LIMIT 1 FOR UPDATE OF ch SKIP LOCKED),
claimed AS (
    UPDATE chunks SET lease_owner = $1, attempt = chunks.attempt + 1, lease_until = now() + make_interval(secs => $3)
    FROM open WHERE chunks.job_id = open.job_id AND chunks.chunk = open.chunk
    RETURNING chunks.job_id, chunks.chunk, chunks.first, chunks.attempt, chunks.inputs)
SELECT c.job_id, c.chunk, c.first, c.attempt, c.inputs, j.name FROM claimed c JOIN jobs j ON j.id = c.job_id";

/// A completion's fence and records, as one statement: `$1` job, `$2`
/// chunk, `$3` worker, `$4` attempt, `$5`/`$6` items recorded/failed,
/// `$7`/`$8` the items' indices and records. The fence closes the chunk
/// only if this worker still holds this attempt's lease and the job runs;
/// the records go in only through an open fence, under the unique key
/// (job, item) as the last guard (a record already there stays, and is
/// not counted twice). A closed fence counts a rejection on the job and
/// the worker instead. Returns whether the fence was open.
const RECORD: &str = "
WITH fence AS (
    UPDATE chunks SET done = true, lease_until = NULL, recorded = $5, failed = $6
    FROM jobs j WHERE j.id = chunks.job_id AND chunks.job_id = $1 AND chunks.chunk = $2
      AND chunks.lease_owner = $3 AND chunks.attempt = $4 AND NOT chunks.done
      AND j.state IN ('Queued', 'Running')
    RETURNING 1),
stored AS (
    INSERT INTO outputs (job_id, seq, record)
    SELECT $1, x.seq, x.record FROM unnest($7::bigint[], $8::text[]) AS x(seq, record)
    WHERE EXISTS (SELECT 1 FROM fence)
    ON CONFLICT (job_id, seq) DO NOTHING RETURNING 1),
counted AS (
    UPDATE workers SET items_done = items_done + (SELECT count(*) FROM stored), heartbeat_at = now(),
      rejected = rejected + CASE WHEN EXISTS (SELECT 1 FROM fence) THEN 0 ELSE 1 END
    WHERE id = $3 RETURNING 1),
refused AS (
    UPDATE jobs SET rejected = rejected + 1 WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM fence) RETURNING 1)
SELECT EXISTS (SELECT 1 FROM fence), (SELECT count(*) FROM counted), (SELECT count(*) FROM refused)";

/// Whether this was the last open chunk: two completions that both judge
/// it before either commits each see the other's chunk not done, and
/// neither ends the job (Running forever, every chunk done). So the
/// judgement takes the job's row lock, held to the commit: the second to
/// take it waits for the first to commit, and its statement (a fresh
/// snapshot) sees that chunk done. NO KEY UPDATE, as the job's UPDATE
/// takes: it does not conflict with the KEY SHARE locks that the outputs'
/// foreign key took, so two completions never deadlock on them.
const LOCK_JOB: &str = "SELECT 1 FROM jobs WHERE id = $1 FOR NO KEY UPDATE";

/// Ends the job `$1` if no chunk of it is open.
const END_JOB: &str = "
WITH totals AS (SELECT coalesce(sum(recorded), 0)::bigint AS done,
    coalesce(sum(failed), 0)::bigint AS failed FROM chunks WHERE job_id = $1),
j AS (UPDATE jobs SET
    state = CASE WHEN totals.failed > 0 THEN 'CompletedWithErrors' ELSE 'Completed' END,
    ended_at = extract(epoch FROM now()), progress_done = totals.done, failed_items = totals.failed
    FROM totals WHERE id = $1 AND state IN ('Queued', 'Running')
      AND NOT EXISTS (SELECT 1 FROM chunks WHERE job_id = $1 AND NOT done)
    RETURNING id, state, ended_at)
INSERT INTO history (job_id, state, at) SELECT id, state, ended_at FROM j";

/// Ends job `job_id` if no chunk of it is open, under the job's lock (as a
/// completion would), in one pipelined transaction.
async fn end_job(c: &deadpool_postgres::Object, job_id: i64) -> Result<(), StoreError> {
    let (lock, end) = futures_util::future::join(c.prepare_cached(LOCK_JOB), c.prepare_cached(END_JOB)).await;
    let (lock, end) = (lock.map_err(|e| storage(&e))?, end.map_err(|e| storage(&e))?);
    let job: [&(dyn ToSql + Sync); 1] = [&job_id];
    let (begun, locked, ended, committed) = futures_util::future::join4(
        c.batch_execute("BEGIN"),
        c.execute(&lock, &job),
        c.execute(&end, &job),
        c.batch_execute("COMMIT"),
    )
    .await;
    begun.and(locked).and(ended).and(committed.map(|_| 0)).map_err(|e| storage(&e))?;
    Ok(())
}

fn storage(e: &tokio_postgres::Error) -> StoreError {
    StoreError::Storage(format!("database: {}", pg_error(e)))
}

fn pool_storage(e: &deadpool_postgres::PoolError) -> StoreError {
    StoreError::Storage(format!("database: {}", super::pool_error(e)))
}

fn interval(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl PgStore {
    /// Stores a cluster job with its chunks, Queued, and wakes the workers.
    pub fn submit_cluster(&self, job: ClusterJob) -> Result<(), StoreError> {
        let chunk_size = job.chunk_size.max(1);
        let total = job.inputs.len() as i64;
        let name = job.name.clone();
        let request = job.request.to_string();
        let chunks: Vec<(i32, i64, String)> = job
            .inputs
            .chunks(chunk_size)
            .enumerate()
            .map(|(n, c)| (n as i32, (n * chunk_size) as i64, Value::Array(c.to_vec()).to_string()))
            .collect();
        let at = secs(std::time::SystemTime::now());
        let inserted = self.block(move |pool| async move {
            let mut c = pool.get().await.map_err(|e| pool_storage(&e))?;
            let tx = c.transaction().await.map_err(|e| storage(&e))?;
            let row = tx
                .query_opt(
                    "INSERT INTO jobs (name, state, parallel, request, submitted_at, progress_total, cluster) \
                     VALUES ($1, 'Queued', true, $2, $3, $4, true) ON CONFLICT (name) DO NOTHING RETURNING id",
                    &[&name, &request, &at, &total],
                )
                .await
                .map_err(|e| storage(&e))?;
            let Some(row) = row else {
                return Ok(false);
            };
            let id: i64 = row.get(0);
            tx.execute("INSERT INTO history (job_id, state, at) VALUES ($1, 'Queued', $2)", &[&id, &at])
                .await
                .map_err(|e| storage(&e))?;
            let numbers: Vec<i32> = chunks.iter().map(|c| c.0).collect();
            let firsts: Vec<i64> = chunks.iter().map(|c| c.1).collect();
            let inputs: Vec<String> = chunks.into_iter().map(|c| c.2).collect();
            tx.execute(
                "INSERT INTO chunks (job_id, chunk, first, inputs) \
                 SELECT $1, * FROM unnest($2::int[], $3::bigint[], $4::text[])",
                &[&id, &numbers, &firsts, &inputs],
            )
            .await
            .map_err(|e| storage(&e))?;
            if numbers.is_empty() {
                // No chunk, so no completion would ever end it: it ends now.
                tx.execute(
                    "UPDATE jobs SET state = 'Completed', started_at = $2, ended_at = $2 WHERE id = $1",
                    &[&id, &at],
                )
                .await
                .map_err(|e| storage(&e))?;
                tx.execute("INSERT INTO history (job_id, state, at) VALUES ($1, 'Completed', $2)", &[&id, &at])
                    .await
                    .map_err(|e| storage(&e))?;
            }
            tx.execute(&format!("NOTIFY {WORK_CHANNEL}"), &[]).await.map_err(|e| storage(&e))?;
            tx.commit().await.map_err(|e| storage(&e))?;
            Ok(true)
        })??;
        if inserted {
            Ok(())
        } else {
            Err(StoreError::Duplicate(job.name))
        }
    }

    /// Records a worker (or, for the same id, refreshes it).
    pub fn register_worker(&self, w: &WorkerInfo) -> Result<(), StoreError> {
        let w = w.clone();
        self.block(move |pool| async move {
            let c = pool.get().await.map_err(|e| pool_storage(&e))?;
            c.execute(
                "INSERT INTO workers (id, name, host, slots, allow_max) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), state = 'running'",
                &[&w.id, &w.name, &w.host, &(w.slots as i32), &w.allow_max],
            )
            .await
            .map_err(|e| storage(&e))?;
            Ok(())
        })?
    }

    /// Leases the first open chunk (free, or its lease expired) of a job
    /// not in `skip`, for `lease`; `None` when there is none.
    ///
    /// One round trip: the claim is one statement, sent with its
    /// transaction in one pipeline. It commits without waiting for the
    /// disk (`synchronous_commit = off`): a claim lost in a database crash
    /// leaves the chunk unclaimed, to be claimed again, and the fence
    /// rejects a completion under a claim the database no longer has.
    pub fn claim(&self, worker: &str, lease: Duration, skip: &[i64]) -> Result<Option<Lease>, StoreError> {
        let (worker, skip, secs) = (worker.to_string(), skip.to_vec(), interval(lease));
        self.block(move |pool| async move {
            let c = pool.get().await.map_err(|e| pool_storage(&e))?;
            let claim = c.prepare_cached(CLAIM).await.map_err(|e| storage(&e))?;
            // Sent in this order on the first poll (join3 polls in order),
            // so the three go out as one pipeline.
            let params: [&(dyn ToSql + Sync); 3] = [&worker, &skip, &secs];
            let (begun, row, committed) = join3(
                c.batch_execute("BEGIN; SET LOCAL synchronous_commit = off"),
                c.query_opt(&claim, &params),
                c.batch_execute("COMMIT"),
            )
            .await;
            begun.map_err(|e| storage(&e))?;
            let row = row.map_err(|e| storage(&e))?;
            committed.map_err(|e| storage(&e))?;
            let Some(row) = row else { return Ok(None) };
            // A column that is not an array must not read as "no items": the
            // chunk would complete empty and its items vanish from the job.
            let (inputs, malformed) = match serde_json::from_str::<Vec<Value>>(&row.get::<_, String>(4)) {
                Ok(inputs) => (inputs, None),
                Err(e) => (Vec::new(), Some(format!("its inputs are not a JSON array: {e}"))),
            };
            Ok(Some(Lease {
                job_id: row.get(0),
                job: row.get(5),
                chunk: row.get(1),
                first: row.get::<_, i64>(2).max(0) as u64,
                attempt: row.get(3),
                inputs,
                malformed,
            }))
        })?
    }

    /// Beats `worker`'s heartbeat and extends its leases on `chunks`
    /// (`(job, chunk, attempt)`: those it is working on, and no others, so
    /// that a lease whose claim's answer was lost, say in a database
    /// restart, expires instead of being kept alive forever). Returns the
    /// chunks it still holds (one missing was taken over, or its job stopped).
    pub fn heartbeat(
        &self,
        worker: &str,
        lease: Duration,
        chunks: &[(i64, i32, i32)],
    ) -> Result<Vec<(i64, i32)>, StoreError> {
        let (worker, secs) = (worker.to_string(), interval(lease));
        let jobs: Vec<i64> = chunks.iter().map(|c| c.0).collect();
        let numbers: Vec<i32> = chunks.iter().map(|c| c.1).collect();
        let attempts: Vec<i32> = chunks.iter().map(|c| c.2).collect();
        self.block(move |pool| async move {
            let c = pool.get().await.map_err(|e| pool_storage(&e))?;
            c.execute("UPDATE workers SET heartbeat_at = now() WHERE id = $1", &[&worker])
                .await
                .map_err(|e| storage(&e))?;
            if jobs.is_empty() {
                return Ok(Vec::new());
            }
            let rows = c
                .query(
                    "UPDATE chunks SET lease_until = now() + make_interval(secs => $2) \
                     FROM jobs j, unnest($3::bigint[], $4::int[], $5::int[]) AS mine(job_id, chunk, attempt) \
                     WHERE j.id = chunks.job_id AND chunks.job_id = mine.job_id AND chunks.chunk = mine.chunk \
                       AND chunks.attempt = mine.attempt AND chunks.lease_owner = $1 AND NOT chunks.done \
                       AND j.state IN ('Queued', 'Running') \
                     RETURNING chunks.job_id, chunks.chunk",
                    &[&worker, &secs, &jobs, &numbers, &attempts],
                )
                .await
                .map_err(|e| storage(&e))?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })?
    }

    /// A worker took the job on (it was not refused there): the job is
    /// Running from now, if it was Queued.
    pub fn job_started(&self, job_id: i64) -> Result<(), StoreError> {
        self.block(move |pool| async move {
            let c = pool.get().await.map_err(|e| pool_storage(&e))?;
            c.execute(
                "WITH j AS (UPDATE jobs SET state = 'Running', started_at = extract(epoch FROM now()) \
                   WHERE id = $1 AND state = 'Queued' RETURNING id, started_at) \
                 INSERT INTO history (job_id, state, at) SELECT id, 'Running', started_at FROM j",
                &[&job_id],
            )
            .await
            .map_err(|e| storage(&e))?;
            Ok(())
        })?
    }

    /// Records a chunk's items (`(index, record, completed)`) if `worker`
    /// still holds `lease`'s attempt, in one transaction with the fence;
    /// ends the job when it was its last open chunk.
    ///
    /// One round trip: the transaction's statements go in one pipeline
    /// (each already prepared). A statement that fails aborts the
    /// transaction, and the `COMMIT` at the end of the pipeline then rolls
    /// it back, so nothing is recorded; the error is returned.
    pub fn complete(
        &self,
        worker: &str,
        lease: &Lease,
        records: Vec<(u64, String, bool)>,
    ) -> Result<Completion, StoreError> {
        let worker = worker.to_string();
        let (job_id, chunk, attempt) = (lease.job_id, lease.chunk, lease.attempt);
        self.block(move |pool| async move {
            let c = pool.get().await.map_err(|e| pool_storage(&e))?;
            let failed = records.iter().filter(|r| !r.2).count() as i32;
            let count = records.len() as i32;
            let seqs: Vec<i64> = records.iter().map(|r| r.0 as i64).collect();
            let texts: Vec<String> = records.into_iter().map(|r| r.1).collect();
            let (record, lock, end) =
                join3(c.prepare_cached(RECORD), c.prepare_cached(LOCK_JOB), c.prepare_cached(END_JOB)).await;
            let (record, lock, end) =
                (record.map_err(|e| storage(&e))?, lock.map_err(|e| storage(&e))?, end.map_err(|e| storage(&e))?);
            let params: [&(dyn ToSql + Sync); 8] = [&job_id, &chunk, &worker, &attempt, &count, &failed, &seqs, &texts];
            let job: [&(dyn ToSql + Sync); 1] = [&job_id];
            // In this order on the first poll (join5 polls in order): one pipeline.
            let (begun, recorded, locked, ended, committed) = join5(
                c.batch_execute("BEGIN"),
                c.query_one(&record, &params),
                c.execute(&lock, &job),
                c.execute(&end, &job),
                c.batch_execute("COMMIT"),
            )
            .await;
            begun.map_err(|e| storage(&e))?;
            let recorded = recorded.map_err(|e| storage(&e))?;
            locked.map_err(|e| storage(&e))?;
            ended.map_err(|e| storage(&e))?;
            committed.map_err(|e| storage(&e))?;
            Ok(if recorded.get::<_, bool>(0) { Completion::Recorded } else { Completion::Rejected })
        })?
    }

    /// A worker found its lease on `lease`'s chunk lost mid-run and stopped
    /// it: the fence decides. Closed (taken over, done or stopped): the
    /// late completion is rejected and counted. Still open (a stale view):
    /// the chunk is given back. Nothing of it is recorded either way.
    pub fn abandon(&self, worker: &str, lease: &Lease) -> Result<Completion, StoreError> {
        let worker = worker.to_string();
        let (job_id, chunk, attempt) = (lease.job_id, lease.chunk, lease.attempt);
        self.block(move |pool| async move {
            let c = pool.get().await.map_err(|e| pool_storage(&e))?;
            let released = c
                .execute(
                    "UPDATE chunks SET lease_owner = NULL, lease_until = NULL FROM jobs j \
                     WHERE j.id = chunks.job_id AND chunks.job_id = $1 AND chunks.chunk = $2 \
                       AND chunks.lease_owner = $3 AND chunks.attempt = $4 AND NOT chunks.done \
                       AND j.state IN ('Queued', 'Running')",
                    &[&job_id, &chunk, &worker, &attempt],
                )
                .await
                .map_err(|e| storage(&e))?;
            if released > 0 {
                return Ok(Completion::Recorded);
            }
            c.execute("UPDATE jobs SET rejected = rejected + 1 WHERE id = $1", &[&job_id])
                .await
                .map_err(|e| storage(&e))?;
            c.execute("UPDATE workers SET rejected = rejected + 1 WHERE id = $1", &[&worker])
                .await
                .map_err(|e| storage(&e))?;
            Ok(Completion::Rejected)
        })?
    }

    /// Gives a chunk back at once (a worker shutting down), so another
    /// worker claims it without waiting for the lease to expire.
    pub fn release(&self, worker: &str, lease: &Lease) -> Result<(), StoreError> {
        let worker = worker.to_string();
        let (job_id, chunk, attempt) = (lease.job_id, lease.chunk, lease.attempt);
        self.block(move |pool| async move {
            let c = pool.get().await.map_err(|e| pool_storage(&e))?;
            c.execute(
                "UPDATE chunks SET lease_owner = NULL, lease_until = NULL \
                 WHERE job_id = $1 AND chunk = $2 AND lease_owner = $3 AND attempt = $4 AND NOT done",
                &[&job_id, &chunk, &worker, &attempt],
            )
            .await
            .map_err(|e| storage(&e))?;
            c.execute(&format!("NOTIFY {WORK_CHANNEL}"), &[]).await.map_err(|e| storage(&e))?;
            Ok(())
        })?
    }

    /// Records on a job that worker `worker` refused it, and why.
    pub fn refuse(&self, job_id: i64, worker: &str, reason: &str) -> Result<(), StoreError> {
        let line = json!(format!("worker {worker}: {reason}")).to_string();
        self.block(move |pool| async move {
            let c = pool.get().await.map_err(|e| pool_storage(&e))?;
            c.execute(
                "UPDATE jobs SET refusals = (coalesce(refusals::jsonb, '[]'::jsonb) || $2::text::jsonb)::text \
                 WHERE id = $1 AND NOT coalesce(refusals::jsonb, '[]'::jsonb) @> $2::text::jsonb",
                &[&job_id, &format!("[{line}]")],
            )
            .await
            .map_err(|e| storage(&e))?;
            Ok(())
        })?
    }

    /// The request a cluster job runs, by its row.
    pub fn job_request(&self, job_id: i64) -> Result<Option<Value>, StoreError> {
        self.block(move |pool| async move {
            let c = pool.get().await.map_err(|e| pool_storage(&e))?;
            let row =
                c.query_opt("SELECT request FROM jobs WHERE id = $1", &[&job_id]).await.map_err(|e| storage(&e))?;
            Ok(row.map(|r| serde_json::from_str(&r.get::<_, String>(0)).unwrap_or(Value::Null)))
        })?
    }

    /// Marks a worker gone (it shut down).
    pub fn worker_stopped(&self, worker: &str) -> Result<(), StoreError> {
        let worker = worker.to_string();
        self.block(move |pool| async move {
            let c = pool.get().await.map_err(|e| pool_storage(&e))?;
            c.execute("UPDATE workers SET state = 'stopped', heartbeat_at = now() WHERE id = $1", &[&worker])
                .await
                .map_err(|e| storage(&e))?;
            Ok(())
        })?
    }

    /// Every worker, most recent heartbeat first, with how long ago it beat.
    pub fn worker_list(&self) -> Result<Vec<Value>, StoreError> {
        self.block(move |pool| async move {
            let c = pool.get().await.map_err(|e| pool_storage(&e))?;
            let rows = c
                .query(
                    "SELECT name, host, slots, allow_max, items_done, rejected, state, \
                       extract(epoch FROM now() - heartbeat_at)::float8, id \
                     FROM workers ORDER BY heartbeat_at DESC, name",
                    &[],
                )
                .await
                .map_err(|e| storage(&e))?;
            Ok(rows
                .iter()
                .map(|r| {
                    json!({
                        "name": r.get::<_, String>(0),
                        "host": r.get::<_, String>(1),
                        "slots": r.get::<_, i32>(2),
                        "allow_max": r.get::<_, String>(3),
                        "items_done": r.get::<_, i64>(4),
                        "rejected": r.get::<_, i64>(5),
                        "state": r.get::<_, String>(6),
                        "heartbeat_age_s": (r.get::<_, f64>(7) * 10.0).round() / 10.0,
                        "id": r.get::<_, String>(8),
                    })
                })
                .collect())
        })?
    }

    /// Stops a cluster job everywhere: it ends Stopped, and its leases
    /// fence every completion from then on. False if it had ended already.
    pub fn stop_cluster_job(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.block(move |pool| async move {
            let c = pool.get().await.map_err(|e| pool_storage(&e))?;
            let n = c
                .execute(
                    "WITH j AS (UPDATE jobs SET state = 'Stopped', ended_at = extract(epoch FROM now()), \
                       progress_done = (SELECT coalesce(sum(recorded), 0) FROM chunks WHERE job_id = jobs.id) \
                       WHERE name = $1 AND state IN ('Queued', 'Running') RETURNING id, ended_at) \
                     INSERT INTO history (job_id, state, at) SELECT id, 'Stopped', ended_at FROM j",
                    &[&name],
                )
                .await
                .map_err(|e| storage(&e))?;
            Ok(n > 0)
        })?
    }

    /// A cluster job's progress; `None` if unknown.
    ///
    /// A job left Running with no chunk open (its last completion did not
    /// end it) is ended here, as that completion would have: whoever
    /// watches the job sees it end, rather than wait forever.
    pub fn cluster_status(&self, name: &str) -> Result<Option<JobStatus>, StoreError> {
        let name = name.to_string();
        self.block(move |pool| async move {
            let c = pool.get().await.map_err(|e| pool_storage(&e))?;
            let unended = c
                .query_opt(
                    "SELECT id FROM jobs WHERE name = $1 AND cluster AND state IN ('Queued', 'Running') \
                     AND EXISTS (SELECT 1 FROM chunks WHERE job_id = jobs.id) \
                     AND NOT EXISTS (SELECT 1 FROM chunks WHERE job_id = jobs.id AND NOT done)",
                    &[&name],
                )
                .await
                .map_err(|e| storage(&e))?;
            if let Some(row) = unended {
                end_job(&c, row.get(0)).await?;
            }
            let row = c
                .query_opt(
                    "SELECT state, CASE WHEN cluster THEN \
                       (SELECT coalesce(sum(recorded), 0) FROM chunks WHERE job_id = jobs.id)::bigint \
                       ELSE progress_done END, progress_total, rejected, coalesce(refusals, '[]') \
                     FROM jobs WHERE name = $1",
                    &[&name],
                )
                .await
                .map_err(|e| storage(&e))?;
            Ok(row.map(|r| JobStatus {
                state: r.get(0),
                done: r.get::<_, i64>(1).max(0) as u64,
                total: r.get::<_, i64>(2).max(0) as u64,
                rejected: r.get::<_, i64>(3).max(0) as u64,
                refusals: serde_json::from_str(&r.get::<_, String>(4)).unwrap_or_default(),
            }))
        })?
    }

    /// Ends every cluster job left Queued or Running with all its chunks
    /// done (its last completion did not end it), as [`Self::cluster_status`]
    /// does for the one job it is asked about; returns how many it ended.
    /// Workers call it while idle, so such a job ends even when nobody
    /// watches it.
    pub fn end_unended(&self) -> Result<u64, StoreError> {
        self.block(move |pool| async move {
            let c = pool.get().await.map_err(|e| pool_storage(&e))?;
            let unended = c
                .query(
                    "SELECT id FROM jobs WHERE cluster AND state IN ('Queued', 'Running') \
                     AND EXISTS (SELECT 1 FROM chunks WHERE job_id = jobs.id) \
                     AND NOT EXISTS (SELECT 1 FROM chunks WHERE job_id = jobs.id AND NOT done)",
                    &[],
                )
                .await
                .map_err(|e| storage(&e))?;
            for row in &unended {
                end_job(&c, row.get(0)).await?;
            }
            Ok(unended.len() as u64)
        })?
    }

    /// The records of a cluster job's chunks that are done and not in
    /// `seen` (which they are added to): `(index, record)`. A chunk is done
    /// in the transaction that stores its records, so a done chunk's
    /// records are all there.
    pub fn new_records(
        &self,
        name: &str,
        seen: &mut std::collections::HashSet<i32>,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        let name = name.to_string();
        let known: Vec<i32> = seen.iter().copied().collect();
        let (chunks, records) = self.block(move |pool| async move {
            let c = pool.get().await.map_err(|e| pool_storage(&e))?;
            let chunks: Vec<(i32, i64, i64)> = c
                .query(
                    "SELECT ch.chunk, ch.first, ch.first + jsonb_array_length(ch.inputs::jsonb) \
                     FROM chunks ch JOIN jobs j ON j.id = ch.job_id \
                     WHERE j.name = $1 AND ch.done AND NOT (ch.chunk = ANY($2))",
                    &[&name, &known],
                )
                .await
                .map_err(|e| storage(&e))?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            if chunks.is_empty() {
                return Ok((chunks, Vec::new()));
            }
            let firsts: Vec<i64> = chunks.iter().map(|c| c.1).collect();
            let ends: Vec<i64> = chunks.iter().map(|c| c.2).collect();
            let records = c
                .query(
                    "SELECT o.seq, o.record FROM outputs o JOIN jobs j ON j.id = o.job_id \
                     JOIN unnest($2::bigint[], $3::bigint[]) AS r(first, stop) ON o.seq >= r.first AND o.seq < r.stop \
                     WHERE j.name = $1 ORDER BY o.seq",
                    &[&name, &firsts, &ends],
                )
                .await
                .map_err(|e| storage(&e))?
                .iter()
                .map(|r| (r.get::<_, i64>(0).max(0) as u64, r.get::<_, String>(1)))
                .collect::<Vec<_>>();
            Ok((chunks, records))
        })??;
        seen.extend(chunks.iter().map(|c| c.0));
        Ok(records)
    }
}

impl PgStore {
    /// A wake-up for every `NOTIFY` on [`WORK_CHANNEL`], from a connection
    /// of its own that reconnects (with back-off) when it is lost. Missed
    /// wake-ups cost only latency: workers poll as well.
    pub fn listen_for_work(&self) -> crossbeam_channel::Receiver<()> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let config = self.config.clone();
        self.handle.spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                if let Ok((client, mut connection)) = config.connect(tokio_postgres::NoTls).await {
                    let listening = async {
                        client.batch_execute(&format!("LISTEN {WORK_CHANNEL}")).await?;
                        Ok::<_, tokio_postgres::Error>(())
                    };
                    let driven = async {
                        // Drives the connection, and hands on its notifications.
                        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                            match message {
                                Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                                    backoff = Duration::from_millis(100);
                                    if let Err(crossbeam_channel::TrySendError::Disconnected(_)) = tx.try_send(()) {
                                        return true;
                                    }
                                }
                                Ok(_) => {}
                                Err(_) => break,
                            }
                        }
                        false
                    };
                    let (_, receiver_gone) = tokio::join!(listening, driven);
                    if receiver_gone {
                        return;
                    }
                }
                // A wake-up after a reconnection: notifications sent meanwhile were lost.
                if let Err(crossbeam_channel::TrySendError::Disconnected(_)) = tx.try_send(()) {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
        rx
    }
}
