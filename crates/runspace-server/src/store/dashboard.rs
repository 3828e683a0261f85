//! What the web dashboard reads from a store: pages of jobs and of a
//! job's item records walked by key (never by offset, so the thousandth
//! page costs what the first does), counts by state, the jobs in flight,
//! and the workers of a shared store.
//!
//! Rows are plain structs rather than the API's JSON, so that rendering a
//! page of fifty jobs does not build and re-parse fifty JSON documents.

use serde_json::Value;

/// Where a page of a keyset walk starts. Keys are the store's own (a
/// job's row id, an item record's sequence number): stable while rows are
/// added, and cheap to seek to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// The start of the walk: the newest jobs, the first item records.
    First,
    /// The rows whose keys are below this one, nearest first.
    Below(i64),
    /// The rows whose keys are above this one, nearest first.
    Above(i64),
}

/// How a keyset walk from a [`Cursor`] reads, whatever the store's SQL
/// dialect: the comparison and key that bound it, and its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seek {
    /// `("<", k)` or `(">", k)`; none from the start.
    pub(crate) bound: Option<(&'static str, i64)>,
    /// Newest first.
    pub(crate) descending: bool,
}

impl Cursor {
    /// The walk from here, for a list that starts `descending` or not.
    pub(crate) fn seek(self, descending: bool) -> Seek {
        let (bound, descending) = match self {
            Cursor::First => (None, descending),
            Cursor::Below(k) => (Some(("<", k)), true),
            Cursor::Above(k) => (Some((">", k)), false),
        };
        Seek { bound, descending }
    }
}

impl Seek {
    /// `ORDER BY key …`.
    pub(crate) fn order(&self) -> &'static str {
        if self.descending {
            "DESC"
        } else {
            "ASC"
        }
    }

    /// The rows read, back in the order of a list that starts
    /// `descending` or not, and whether there are more below and above.
    /// `more_on_the_way`: rows beyond the page in the reading direction;
    /// `behind`: rows on the side the walk came from.
    pub(crate) fn page<T>(
        &self,
        mut rows: Vec<T>,
        descending: bool,
        more_on_the_way: bool,
        behind: bool,
    ) -> (Vec<T>, bool, bool) {
        if self.descending != descending {
            rows.reverse();
        }
        if self.descending {
            (rows, more_on_the_way, behind)
        } else {
            (rows, behind, more_on_the_way)
        }
    }

    /// The comparison and key that find a row on the side the walk came
    /// from (is there a page behind this one?); none from the start.
    pub(crate) fn back(&self) -> Option<(&'static str, i64)> {
        self.bound.map(|(op, k)| (if op == "<" { ">=" } else { "<=" }, k))
    }
}

/// Which jobs a page of the dashboard's list holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobQuery {
    /// Only jobs in this state.
    pub state: Option<String>,
    /// Only jobs whose name or script name contains this text (ASCII letters compared without case).
    pub search: Option<String>,
    /// Where the page starts.
    pub cursor: Cursor,
    /// The most rows in the page.
    pub limit: u64,
}

/// One job as the dashboard lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    /// The job's key in the store (a cursor position).
    pub key: i64,
    /// Its name.
    pub name: String,
    /// Its state (`Queued`, `Running`, `Completed`, …).
    pub state: String,
    /// A run over inputs (true) or one run of a script.
    pub parallel: bool,
    /// The name its script was given.
    pub script_name: String,
    /// Seconds since the epoch when it was submitted.
    pub submitted: f64,
    /// … when it began running.
    pub started: Option<f64>,
    /// … when it ended.
    pub ended: Option<f64>,
    /// Items done.
    pub done: u64,
    /// Items in all.
    pub total: u64,
    /// Why it did not complete, if it did not.
    pub error: Option<String>,
    /// How many of its items failed or timed out.
    pub failed: u64,
}

/// A page of the job list, newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobsPage {
    /// The jobs, newest first.
    pub rows: Vec<JobRow>,
    /// Whether jobs below (older than) the page's match the query.
    pub more_below: bool,
    /// Whether jobs above (newer than) the page's match the query.
    pub more_above: bool,
}

/// A page of one job's output records, in the order they finished.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ItemsPage {
    /// `(seq, record)`: the record's position and the record itself.
    pub records: Vec<(i64, Value)>,
    /// Whether records below (before) the page's match.
    pub more_below: bool,
    /// Whether records above (after) the page's match.
    pub more_above: bool,
}

/// One worker process of a shared store, as its heartbeat row says.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRow {
    /// Its id (host and pid, say).
    pub id: String,
    /// Seconds since the epoch of its last heartbeat.
    pub heartbeat: f64,
    /// How many items it may run at once.
    pub slots: u64,
    /// How many items it has finished.
    pub items_done: u64,
}
