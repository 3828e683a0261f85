//! The SQLite schema and its migrations.
//!
//! The schema's version is the database's `PRAGMA user_version`. Opening
//! a database runs, in order, every migration above its version, each
//! recording its version as it completes; a database from a newer program
//! (a version above the last migration) is refused rather than guessed at.
//! A migration is never edited once released: changes are new steps.

use rusqlite::Connection;

/// One step from `version - 1` to `version`.
struct Migration {
    version: u32,
    apply: fn(&mut Connection) -> rusqlite::Result<()>,
}

/// Every migration, oldest first; the last one's version is the current schema.
const MIGRATIONS: &[Migration] = &[
    // The tables of the first release. `IF NOT EXISTS`, so that a database
    // written before versioning (user_version 0, tables present) is adopted.
    Migration { version: 1, apply: |c| in_transaction(c, V1, 1) },
    Migration { version: 2, apply: incremental_vacuum },
    Migration { version: 3, apply: |c| in_transaction(c, V3, 3) },
    // A job's explicit inputs, kept apart from its request (which every
    // list reads) so that restart and rerun-failed can replay them.
    Migration { version: 4, apply: |c| in_transaction(c, "ALTER TABLE jobs ADD COLUMN inputs TEXT;", 4) },
    Migration { version: 5, apply: |c| in_transaction(c, V5, 5) },
];

/// The schema version this program writes.
pub(super) const CURRENT: u32 = 5;

/// Version 5: a job's failed items are counted as their records arrive,
/// so the dashboard's list shows failures without reading any job's
/// records. Existing jobs are counted once, here.
const V5: &str = "
ALTER TABLE jobs ADD COLUMN failed_items INTEGER NOT NULL DEFAULT 0;
UPDATE jobs SET failed_items = (
    SELECT count(*) FROM outputs o
    WHERE o.job_id = jobs.id AND json_valid(o.record) AND json_extract(o.record, '$.status') IN ('Failed', 'TimedOut')
) WHERE parallel = 1;
";

/// Version 3: streams become one row per record, stored and served in
/// pages like output, instead of one JSON document per job. Stored
/// documents move into rows (strings as JSON strings, progress records as
/// objects).
const V3: &str = "
CREATE TABLE stream_records (
    job_id INTEGER NOT NULL,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (job_id, stream, seq)
);
INSERT INTO stream_records (job_id, stream, seq, record)
    SELECT jobs.id, s.key, r.key, CASE WHEN r.type = 'text' THEN json_quote(r.value) ELSE r.value END
    FROM jobs, json_each(jobs.streams) AS s, json_each(s.value) AS r
    WHERE jobs.streams IS NOT NULL AND json_valid(jobs.streams) AND s.type = 'array';
UPDATE jobs SET streams = NULL;
";

const V1: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    parallel INTEGER NOT NULL,
    request TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    progress_done INTEGER NOT NULL DEFAULT 0,
    progress_total INTEGER NOT NULL,
    error TEXT,
    streams TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, id);
CREATE TABLE IF NOT EXISTS history (
    job_id INTEGER NOT NULL,
    state TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS history_by_job ON history(job_id);
CREATE TABLE IF NOT EXISTS outputs (
    job_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
";

/// Runs `sql` and records `version`, atomically.
fn in_transaction(conn: &mut Connection, sql: &str, version: u32) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    tx.execute_batch(sql)?;
    tx.pragma_update(None, "user_version", version)?;
    tx.commit()
}

/// Version 2: deleted jobs give their pages back. `auto_vacuum` can only
/// change on an empty database or through a full `VACUUM` (which cannot run
/// inside a transaction); the step is idempotent, so a crash between the
/// vacuum and the version bump only repeats it.
fn incremental_vacuum(conn: &mut Connection) -> rusqlite::Result<()> {
    let mode: i64 = conn.pragma_query_value(None, "auto_vacuum", |r| r.get(0))?;
    if mode != 2 {
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        conn.execute_batch("VACUUM")?;
    }
    conn.pragma_update(None, "user_version", 2)
}

/// Brings the database to [`CURRENT`]; refuses one from a newer program.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), String> {
    let version = version(conn).map_err(|e| format!("cannot read the schema version: {e}"))?;
    if version > CURRENT {
        return Err(format!(
            "written by a newer version of runspace (schema version {version}; this one knows up to {CURRENT}); \
             use that version, or another database"
        ));
    }
    if version == 0 && !has_tables(conn).map_err(|e| e.to_string())? {
        // A new database: set before any table exists, auto_vacuum costs no VACUUM.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL").map_err(|e| e.to_string())?;
    }
    for step in MIGRATIONS.iter().filter(|m| m.version > version) {
        (step.apply)(conn).map_err(|e| format!("cannot migrate the schema to version {}: {e}", step.version))?;
    }
    Ok(())
}

fn version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
}

fn has_tables(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row("SELECT count(*) FROM sqlite_schema WHERE type = 'table'", [], |r| r.get::<_, i64>(0)).map(|n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auto_vacuum(conn: &Connection) -> i64 {
        conn.pragma_query_value(None, "auto_vacuum", |r| r.get(0)).unwrap()
    }

    #[test]
    fn the_last_migration_is_the_current_version() {
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(CURRENT));
        assert!(MIGRATIONS.windows(2).all(|w| w[1].version == w[0].version + 1));
    }

    #[test]
    fn a_new_database_gets_every_step_and_incremental_vacuum_without_a_vacuum() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("new.db")).unwrap();
        migrate(&mut conn).unwrap();
        assert_eq!(version(&conn).unwrap(), CURRENT);
        assert_eq!(auto_vacuum(&conn), 2);
        migrate(&mut conn).unwrap();
        assert_eq!(version(&conn).unwrap(), CURRENT, "migrating twice changes nothing");
    }

    /// A database migrated up to (and including) `version`.
    fn at_version(path: &std::path::Path, version: u32) -> Connection {
        let mut conn = Connection::open(path).unwrap();
        for step in MIGRATIONS.iter().filter(|m| m.version <= version) {
            (step.apply)(&mut conn).unwrap();
        }
        conn
    }

    #[test]
    fn version_3_adds_an_empty_inputs_column_and_keeps_the_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v3.db");
        {
            let conn = at_version(&path, 3);
            conn.execute(
                "INSERT INTO jobs (name, state, parallel, request, submitted_at, progress_total) \
                 VALUES ('kept', 'Completed', 1, '{\"inputs\": 2}', 1.0, 2)",
                [],
            )
            .unwrap();
            assert_eq!(version(&conn).unwrap(), 3);
        }
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn).unwrap();
        assert_eq!(version(&conn).unwrap(), CURRENT);
        let (name, inputs): (String, Option<String>) =
            conn.query_row("SELECT name, inputs FROM jobs", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        // The old job has no kept inputs (a restart says so); new ones can.
        assert_eq!((name.as_str(), inputs), ("kept", None));
        conn.execute("UPDATE jobs SET inputs = '[1,2]'", []).unwrap();
    }

    #[test]
    fn version_5_counts_the_failed_items_of_existing_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v4.db");
        {
            let conn = at_version(&path, 4);
            conn.execute(
                "INSERT INTO jobs (name, state, parallel, request, submitted_at, progress_total) \
                 VALUES ('old', 'CompletedWithErrors', 1, '{}', 1.0, 4)",
                [],
            )
            .unwrap();
            for (seq, status) in ["Completed", "Failed", "TimedOut", "Stopped"].iter().enumerate() {
                conn.execute(
                    "INSERT INTO outputs (job_id, seq, record) VALUES (1, ?1, ?2)",
                    rusqlite::params![seq as i64, format!("{{\"status\": \"{status}\"}}")],
                )
                .unwrap();
            }
            conn.execute("INSERT INTO outputs (job_id, seq, record) VALUES (1, 9, 'not json')", []).unwrap();
        }
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn).unwrap();
        let failed: i64 = conn.query_row("SELECT failed_items FROM jobs", [], |r| r.get(0)).unwrap();
        assert_eq!(failed, 2, "Failed and TimedOut count; Stopped and unreadable records do not");
    }

    #[test]
    fn version_2_streams_become_rows_and_the_jobs_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            // Version 2 as that release wrote it: streams as one JSON document.
            let mut conn = Connection::open(&path).unwrap();
            for step in MIGRATIONS.iter().filter(|m| m.version < 3) {
                (step.apply)(&mut conn).unwrap();
            }
            conn.execute(
                "INSERT INTO jobs (name, state, parallel, request, submitted_at, progress_total, streams) \
                 VALUES ('kept', 'Completed', 0, '{}', 1.0, 1, \
                 '{\"warning\": [\"w1\", \"w2\"], \"progress\": [{\"activity\": \"a\"}]}')",
                [],
            )
            .unwrap();
            assert_eq!(version(&conn).unwrap(), 2);
        }
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn).unwrap();
        assert_eq!(version(&conn).unwrap(), CURRENT);
        let name: String = conn.query_row("SELECT name FROM jobs", [], |r| r.get(0)).unwrap();
        assert_eq!(name, "kept");
        let mut stmt = conn.prepare("SELECT stream, seq, record FROM stream_records ORDER BY stream, seq").unwrap();
        let rows: Vec<(String, i64, String)> =
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect();
        assert_eq!(
            rows,
            vec![
                ("progress".into(), 0, r#"{"activity":"a"}"#.into()),
                ("warning".into(), 0, r#""w1""#.into()),
                ("warning".into(), 1, r#""w2""#.into()),
            ]
        );
    }

    #[test]
    fn version_1_without_auto_vacuum_is_migrated_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            in_transaction(&mut conn, V1, 1).unwrap();
            assert_eq!(auto_vacuum(&conn), 0);
        }
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn).unwrap();
        assert_eq!((version(&conn).unwrap(), auto_vacuum(&conn)), (CURRENT, 2));
    }

    #[test]
    fn a_database_from_before_versioning_is_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("unversioned.db")).unwrap();
        conn.execute_batch(V1).unwrap();
        conn.execute("INSERT INTO history (job_id, state, at) VALUES (1, 'Queued', 1.0)", []).unwrap();
        migrate(&mut conn).unwrap();
        assert_eq!(version(&conn).unwrap(), CURRENT);
        let n: i64 = conn.query_row("SELECT count(*) FROM history", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn a_database_from_a_newer_version_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("future.db")).unwrap();
        conn.pragma_update(None, "user_version", CURRENT + 1).unwrap();
        let e = migrate(&mut conn).unwrap_err();
        assert!(e.contains("newer version") && e.contains(&format!("schema version {}", CURRENT + 1)), "{e}");
        assert!(!has_tables(&conn).unwrap());
        assert_eq!(version(&conn).unwrap(), CURRENT + 1);
    }
}
