//! The PostgreSQL schema and its migrations.
//!
//! The schema's version is the one row of `rsp_schema`. Opening a store
//! runs, in order and in one transaction with the version bump,
//! every migration above that version, under a transaction-level advisory
//! lock: many workers starting at once against a new database migrate it
//! once, the others wait and then find it current. A database from a newer
//! program is refused rather than guessed at. A migration is never edited
//! once released: changes are new steps.

use deadpool_postgres::Client;

/// Every migration, oldest first; the last one's version is the current schema.
const MIGRATIONS: &[(i32, &str)] = &[(1, V1), (2, V2), (3, V3)];

/// The schema version this program writes.
pub(super) const CURRENT: i32 = 3;

/// The advisory lock key that serialises migrations ("rsp" in ASCII).
const MIGRATION_LOCK: i64 = 0x72_73_70;

/// Version 1: the job service's tables, as in the SQLite store.
const V1: &str = "
CREATE TABLE jobs (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    parallel BOOLEAN NOT NULL,
    request TEXT NOT NULL,
    submitted_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    ended_at DOUBLE PRECISION,
    progress_done BIGINT NOT NULL DEFAULT 0,
    progress_total BIGINT NOT NULL,
    error TEXT,
    inputs TEXT
);
CREATE INDEX jobs_by_state ON jobs (state, id);
CREATE TABLE history (
    id BIGSERIAL PRIMARY KEY,
    job_id BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL
);
CREATE INDEX history_by_job ON history (job_id, id);
CREATE TABLE outputs (
    job_id BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE stream_records (
    job_id BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    stream TEXT NOT NULL,
    seq BIGINT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (job_id, stream, seq)
);
";

/// Version 2: work as rows with leases, for `rsp worker`s on many hosts.
/// A cluster job's items are cut into chunks; a worker leases a chunk
/// (`lease_owner`, `attempt`, `lease_until`, all on the database's clock)
/// and records its items' results in `outputs` (seq = the item's index, so
/// the primary key is the unique key per item) only while it holds that
/// attempt's lease. A chunk counts what it recorded, so completions never
/// queue on the job's row (its progress is summed from its chunks, and
/// stored on the job when it ends).
const V2: &str = "
ALTER TABLE jobs ADD COLUMN cluster BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE jobs ADD COLUMN rejected BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN failed_items BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN refusals TEXT;
CREATE TABLE chunks (
    job_id BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    chunk INTEGER NOT NULL,
    first BIGINT NOT NULL,
    inputs TEXT NOT NULL,
    done BOOLEAN NOT NULL DEFAULT false,
    recorded INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    lease_until TIMESTAMPTZ,
    PRIMARY KEY (job_id, chunk)
);
CREATE INDEX chunks_open ON chunks (job_id, chunk) WHERE NOT done;
CREATE TABLE workers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    host TEXT NOT NULL,
    slots INTEGER NOT NULL,
    allow_max TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    items_done BIGINT NOT NULL DEFAULT 0,
    rejected BIGINT NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'running'
);
";

/// Version 3: servers on leases (see `servers`). A server's row is kept
/// alive by its heartbeat; the jobs it accepts name it, so that when its
/// lease runs out another server can mark them Interrupted.
const V3: &str = "
CREATE TABLE servers (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_until TIMESTAMPTZ NOT NULL
);
ALTER TABLE jobs ADD COLUMN server_id TEXT;
CREATE INDEX jobs_unfinished_by_server ON jobs (server_id) WHERE state IN ('Queued', 'Running');
";

/// Brings the database to [`CURRENT`]; refuses one from a newer program.
pub(super) async fn migrate(client: &mut Client) -> Result<(), String> {
    let fail = |what: &str, e: tokio_postgres::Error| format!("{what}: {}", super::pg_error(&e));
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS rsp_schema (version INTEGER NOT NULL)")
        .await
        .or_else(|e| if is_unique_race(&e) { Ok(()) } else { Err(e) })
        .map_err(|e| fail("cannot create the schema table", e))?;
    let tx = client.transaction().await.map_err(|e| fail("cannot begin a transaction", e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| fail("cannot lock the schema", e))?;
    let version: i32 = tx
        .query_opt("SELECT version FROM rsp_schema", &[])
        .await
        .map_err(|e| fail("cannot read the schema version", e))?
        .map_or(0, |r| r.get(0));
    if version > CURRENT {
        return Err(format!(
            "written by a newer version of runspace (schema version {version}; this one knows up to {CURRENT}); \
             use that version, or another database"
        ));
    }
    for (step, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > version) {
        tx.batch_execute(sql).await.map_err(|e| fail(&format!("cannot migrate the schema to version {step}"), e))?;
    }
    if version < CURRENT {
        tx.execute("DELETE FROM rsp_schema", &[]).await.map_err(|e| fail("cannot record the schema version", e))?;
        tx.execute("INSERT INTO rsp_schema (version) VALUES ($1)", &[&CURRENT])
            .await
            .map_err(|e| fail("cannot record the schema version", e))?;
    }
    tx.commit().await.map_err(|e| fail("cannot commit the schema", e))
}

/// Two sessions creating the same table at once: one of them fails on the
/// catalog's unique index, and the table exists either way.
fn is_unique_race(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_migration_is_the_current_version() {
        assert_eq!(MIGRATIONS.last().map(|m| m.0), Some(CURRENT));
        assert!(MIGRATIONS.windows(2).all(|w| w[1].0 == w[0].0 + 1));
    }
}
