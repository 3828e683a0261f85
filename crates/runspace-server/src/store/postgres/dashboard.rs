//! The dashboard's reads from PostgreSQL, as from SQLite
//! (`store/sqlite/dashboard.rs`): keyset pages (a seek on the key and a
//! `LIMIT`, never an `OFFSET`), counts by state (the `jobs_by_state`
//! index), and the jobs in flight.
//!
//! One difference: a cluster job's items are counted on its chunks while
//! it runs (completions never queue on the job's row, see `work`), so a
//! row of a cluster job that has not ended sums its chunks for its
//! progress and failures; an ended one has them on its row.

use deadpool_postgres::Object;
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{job_id, to_i64};
use crate::limits::MAX_PAGE_BYTES;
use crate::store::{Cursor, ItemsPage, JobQuery, JobRow, JobsPage};

/// A job row's columns, in the order [`job_row`] reads them.
const ROW: &str = "id, name, state, parallel, coalesce(request::jsonb ->> 'script_name', ''), submitted_at, \
     started_at, ended_at, \
     CASE WHEN cluster AND ended_at IS NULL \
       THEN (SELECT coalesce(sum(recorded), 0) FROM chunks c WHERE c.job_id = jobs.id)::bigint \
       ELSE progress_done END, \
     progress_total, error, \
     CASE WHEN cluster AND ended_at IS NULL \
       THEN (SELECT coalesce(sum(failed), 0) FROM chunks c WHERE c.job_id = jobs.id)::bigint \
       ELSE failed_items END";

fn job_row(r: &Row) -> JobRow {
    JobRow {
        key: r.get(0),
        name: r.get(1),
        state: r.get(2),
        parallel: r.get(3),
        script_name: r.get(4),
        submitted: r.get(5),
        started: r.get(6),
        ended: r.get(7),
        done: r.get::<_, i64>(8).max(0) as u64,
        total: r.get::<_, i64>(9).max(0) as u64,
        error: r.get(10),
        failed: r.get::<_, i64>(11).max(0) as u64,
    }
}

/// A value bound to a placeholder of a walk's filter.
#[derive(Debug, Clone)]
enum Arg {
    Text(String),
    Int(i64),
}

impl Arg {
    fn sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Arg::Text(s) => s,
            Arg::Int(n) => n,
        }
    }
}

fn bind(args: &[Arg]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(Arg::sql).collect()
}

/// One keyset walk, as in the SQLite store: rows of `table` matching
/// `filter` (SQL whose placeholders `$1…` are bound to `args`), `limit`
/// of them from `cursor`, in walk order, with whether more exist below
/// and above the page.
struct Walk<'a> {
    table: &'a str,
    columns: &'a str,
    key: &'a str,
    filter: String,
    args: Vec<Arg>,
    descending: bool,
}

impl Walk<'_> {
    async fn run<T>(
        &self,
        c: &Object,
        cursor: Cursor,
        limit: u64,
        mut read: impl FnMut(&Row) -> T,
    ) -> Result<(Vec<T>, bool, bool), tokio_postgres::Error> {
        let seek = cursor.seek(self.descending);
        let mut args = self.args.clone();
        let mut filter = self.filter.clone();
        if let Some((op, k)) = seek.bound {
            args.push(Arg::Int(k));
            filter.push_str(&format!(" AND {} {op} ${}", self.key, args.len()));
        }
        let order = seek.order();
        args.push(Arg::Int(to_i64(limit.saturating_add(1))));
        let sql = format!(
            "SELECT {} FROM {} WHERE {filter} ORDER BY {} {order} LIMIT ${}",
            self.columns,
            self.table,
            self.key,
            args.len()
        );
        let rows = c.query(&sql, &bind(&args)).await?;
        let more_on_the_way = rows.len() as u64 > limit;
        let out: Vec<T> = rows.iter().take(usize::try_from(limit).unwrap_or(usize::MAX)).map(&mut read).collect();
        // Is there anything on the side the walk came from?
        let behind = match seek.back() {
            None => false,
            Some((back, k)) => {
                let mut args = self.args.clone();
                args.push(Arg::Int(k));
                let sql = format!(
                    "SELECT 1 FROM {} WHERE {} AND {} {back} ${} LIMIT 1",
                    self.table,
                    self.filter,
                    self.key,
                    args.len()
                );
                c.query_opt(&sql, &bind(&args)).await?.is_some()
            }
        };
        Ok(seek.page(out, self.descending, more_on_the_way, behind))
    }
}

/// A page of the job list, newest first.
pub(super) async fn job_rows(c: &Object, q: &JobQuery) -> Result<JobsPage, tokio_postgres::Error> {
    let mut filter = "true".to_string();
    let mut args = Vec::new();
    if let Some(state) = &q.state {
        args.push(Arg::Text(state.clone()));
        filter.push_str(&format!(" AND state = ${}", args.len()));
    }
    if let Some(search) = q.search.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        // strpos, not LIKE: the text is searched for as it is, with no
        // pattern characters. Both sides through lower(), so any letter
        // the database lowers compares without case.
        args.push(Arg::Text(search.to_string()));
        let n = args.len();
        filter.push_str(&format!(
            " AND (strpos(lower(name), lower(${n})) > 0 \
               OR strpos(lower(coalesce(request::jsonb ->> 'script_name', '')), lower(${n})) > 0)"
        ));
    }
    let walk = Walk { table: "jobs", columns: ROW, key: "id", filter, args, descending: true };
    let (rows, more_below, more_above) = walk.run(c, q.cursor, q.limit, job_row).await?;
    if matches!(q.cursor, Cursor::Above(_)) && (rows.len() as u64) < q.limit {
        // Walking back up ran into the newest jobs: show a full first page instead.
        let (rows, more_below, _) = walk.run(c, Cursor::First, q.limit, job_row).await?;
        return Ok(JobsPage { rows, more_below, more_above: false });
    }
    Ok(JobsPage { rows, more_below, more_above })
}

/// One job's row.
pub(super) async fn one_job(c: &Object, name: &str) -> Result<Option<JobRow>, tokio_postgres::Error> {
    Ok(c.query_opt(&format!("SELECT {ROW} FROM jobs WHERE name = $1"), &[&name]).await?.map(|r| job_row(&r)))
}

/// How many jobs are in each state.
pub(super) async fn state_counts(c: &Object) -> Result<Vec<(String, u64)>, tokio_postgres::Error> {
    let rows = c.query("SELECT state, count(*) FROM jobs GROUP BY state ORDER BY state", &[]).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get::<_, i64>(1).max(0) as u64)).collect())
}

/// The Queued and Running jobs, oldest first.
pub(super) async fn active_jobs(c: &Object, limit: u64) -> Result<Vec<JobRow>, tokio_postgres::Error> {
    let sql = format!("SELECT {ROW} FROM jobs WHERE state IN ('Running', 'Queued') ORDER BY id LIMIT $1");
    Ok(c.query(&sql, &[&to_i64(limit)]).await?.iter().map(job_row).collect())
}

/// A page of a job's output records, of one item status if given.
pub(super) async fn item_rows(
    c: &Object,
    name: &str,
    status: Option<&str>,
    cursor: Cursor,
    limit: u64,
) -> Result<Option<ItemsPage>, tokio_postgres::Error> {
    let Some(id) = job_id(c, name).await? else {
        return Ok(None);
    };
    let mut filter = "job_id = $1".to_string();
    let mut args = vec![Arg::Int(id)];
    if let Some(status) = status {
        args.push(Arg::Text(status.to_string()));
        filter.push_str(&format!(" AND record::jsonb ->> 'status' = ${}", args.len()));
    }
    let walk = Walk { table: "outputs", columns: "seq, record", key: "seq", filter, args, descending: false };
    // Records may be large: a page stops at MAX_PAGE_BYTES (one record at least).
    let mut bytes = 0usize;
    let read = |r: &Row| -> (i64, Option<Value>) {
        let text: String = r.get(1);
        let seen = bytes;
        bytes += text.len();
        if seen > 0 && seen + text.len() > MAX_PAGE_BYTES {
            return (r.get(0), None);
        }
        (r.get(0), Some(serde_json::from_str(&text).unwrap_or(Value::String(text))))
    };
    let (rows, more_below, more_above) = walk.run(c, cursor, limit, read).await?;
    let cut = rows.iter().any(|(_, v)| v.is_none());
    let records: Vec<(i64, Value)> = rows.into_iter().filter_map(|(k, v)| Some((k, v?))).collect();
    // The records cut off lie further along the walk's way.
    let (more_below, more_above) = match cursor {
        Cursor::Below(_) => (more_below || cut, more_above),
        _ => (more_below, more_above || cut),
    };
    Ok(Some(ItemsPage { records, more_below, more_above }))
}
