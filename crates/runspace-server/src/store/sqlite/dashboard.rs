//! The dashboard's reads from SQLite: keyset pages (a seek on the primary
//! key and a `LIMIT`, never an `OFFSET`), counts by state (a scan of the
//! `jobs_by_state` index), and the jobs in flight.

use rusqlite::types::Value as Sql;
use rusqlite::{params_from_iter, Connection, OptionalExtension, Row};
use serde_json::Value;

use crate::limits::MAX_PAGE_BYTES;
use crate::store::{Cursor, ItemsPage, JobQuery, JobRow, JobsPage};

/// A job row's columns, in the order [`job_row`] reads them.
const ROW: &str = "id, name, state, parallel, coalesce(json_extract(request, '$.script_name'), ''), submitted_at, \
                   started_at, ended_at, progress_done, progress_total, error, failed_items";

fn job_row(r: &Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        key: r.get(0)?,
        name: r.get(1)?,
        state: r.get(2)?,
        parallel: r.get(3)?,
        script_name: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
        submitted: r.get(5)?,
        started: r.get(6)?,
        ended: r.get(7)?,
        done: r.get(8)?,
        total: r.get(9)?,
        error: r.get(10)?,
        failed: r.get(11)?,
    })
}

/// One keyset walk over `table`, whose key column is `key`: rows matching
/// `filter` (SQL with `?` placeholders bound to `args`), `limit` of them
/// from `cursor`. `descending` says which way the walk runs from
/// [`Cursor::First`]. Rows come back in walk order, with whether more
/// exist below and above the page.
struct Walk<'a> {
    table: &'a str,
    columns: &'a str,
    key: &'a str,
    filter: String,
    args: Vec<Sql>,
    descending: bool,
}

impl Walk<'_> {
    fn run<T>(
        &self,
        c: &Connection,
        cursor: Cursor,
        limit: u64,
        read: impl Fn(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<(Vec<T>, bool, bool)> {
        let seek = cursor.seek(self.descending);
        let mut args = self.args.clone();
        let mut filter = self.filter.clone();
        if let Some((op, k)) = seek.bound {
            filter.push_str(&format!(" AND {} {op} ?", self.key));
            args.push(Sql::Integer(k));
        }
        let order = seek.order();
        let sql =
            format!("SELECT {} FROM {} WHERE {filter} ORDER BY {} {order} LIMIT ?", self.columns, self.table, self.key);
        args.push(Sql::Integer(i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX)));
        let mut stmt = c.prepare_cached(&sql)?;
        let mut rows = stmt.query(params_from_iter(args.iter()))?;
        let mut out = Vec::new();
        let mut more_on_the_way = false;
        while let Some(row) = rows.next()? {
            if out.len() as u64 == limit {
                more_on_the_way = true;
                break;
            }
            out.push(read(row)?);
        }
        // Is there anything on the side the walk came from?
        let behind = match seek.back() {
            None => false,
            Some((back, k)) => {
                let sql =
                    format!("SELECT 1 FROM {} WHERE {} AND {} {back} ? LIMIT 1", self.table, self.filter, self.key);
                let mut args = self.args.clone();
                args.push(Sql::Integer(k));
                c.prepare_cached(&sql)?.query_row(params_from_iter(args.iter()), |_| Ok(())).optional()?.is_some()
            }
        };
        Ok(seek.page(out, self.descending, more_on_the_way, behind))
    }
}

/// A page of the job list, newest first.
pub(super) fn job_rows(c: &Connection, q: &JobQuery) -> rusqlite::Result<JobsPage> {
    let mut filter = "1".to_string();
    let mut args = Vec::new();
    if let Some(state) = &q.state {
        filter.push_str(" AND state = ?");
        args.push(Sql::Text(state.clone()));
    }
    if let Some(search) = q.search.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        filter.push_str(
            " AND (instr(lower(name), ?) > 0 OR instr(lower(coalesce(json_extract(request, '$.script_name'), '')), ?) > 0)",
        );
        let needle = search.to_ascii_lowercase();
        args.push(Sql::Text(needle.clone()));
        args.push(Sql::Text(needle));
    }
    let walk = Walk { table: "jobs", columns: ROW, key: "id", filter, args, descending: true };
    let (rows, more_below, more_above) = walk.run(c, q.cursor, q.limit, job_row)?;
    if matches!(q.cursor, Cursor::Above(_)) && (rows.len() as u64) < q.limit {
        // Walking back up ran into the newest jobs: show a full first page instead.
        let (rows, more_below, _) = walk.run(c, Cursor::First, q.limit, job_row)?;
        return Ok(JobsPage { rows, more_below, more_above: false });
    }
    Ok(JobsPage { rows, more_below, more_above })
}

/// One job's row.
pub(super) fn one_job(c: &Connection, name: &str) -> rusqlite::Result<Option<JobRow>> {
    c.prepare_cached(&format!("SELECT {ROW} FROM jobs WHERE name = ?1"))?.query_row([name], job_row).optional()
}

/// How many jobs are in each state.
pub(super) fn state_counts(c: &Connection) -> rusqlite::Result<Vec<(String, u64)>> {
    let mut stmt = c.prepare_cached("SELECT state, count(*) FROM jobs GROUP BY state")?;
    let counts = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect();
    counts
}

/// The Queued and Running jobs, oldest first.
pub(super) fn active_jobs(c: &Connection, limit: u64) -> rusqlite::Result<Vec<JobRow>> {
    let sql = format!("SELECT {ROW} FROM jobs WHERE state IN ('Running', 'Queued') ORDER BY id LIMIT ?1");
    let mut stmt = c.prepare_cached(&sql)?;
    let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], job_row)?.collect();
    rows
}

/// A page of a job's output records, of one item status if given.
pub(super) fn item_rows(
    c: &Connection,
    name: &str,
    status: Option<&str>,
    cursor: Cursor,
    limit: u64,
) -> rusqlite::Result<Option<ItemsPage>> {
    let Some(id) = c.query_row("SELECT id FROM jobs WHERE name = ?1", [name], |r| r.get::<_, i64>(0)).optional()?
    else {
        return Ok(None);
    };
    let mut filter = "job_id = ?".to_string();
    let mut args = vec![Sql::Integer(id)];
    if let Some(status) = status {
        filter.push_str(" AND json_extract(record, '$.status') = ?");
        args.push(Sql::Text(status.to_string()));
    }
    let walk = Walk { table: "outputs", columns: "seq, record", key: "seq", filter, args, descending: false };
    // Records may be large: a page stops at MAX_PAGE_BYTES (one record at least).
    let bytes = std::cell::Cell::new(0usize);
    let read = |r: &Row<'_>| -> rusqlite::Result<(i64, Option<Value>)> {
        let text: String = r.get(1)?;
        let seen = bytes.get();
        bytes.set(seen + text.len());
        if seen > 0 && seen + text.len() > MAX_PAGE_BYTES {
            return Ok((r.get(0)?, None));
        }
        Ok((r.get(0)?, Some(serde_json::from_str(&text).unwrap_or(Value::String(text)))))
    };
    let (rows, more_below, more_above) = walk.run(c, cursor, limit, read)?;
    let cut = rows.iter().any(|(_, v)| v.is_none());
    let records: Vec<(i64, Value)> = rows.into_iter().filter_map(|(k, v)| Some((k, v?))).collect();
    // The records cut off lie further along the walk's way.
    let (more_below, more_above) = match cursor {
        Cursor::Below(_) => (more_below || cut, more_above),
        _ => (more_below, more_above || cut),
    };
    Ok(Some(ItemsPage { records, more_below, more_above }))
}
