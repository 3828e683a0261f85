//! One store test suite, run against both backends: the embedded SQLite
//! store and the PostgreSQL store (on a server this binary starts). Each
//! check is written once, against `&dyn JobStore`.

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use runspace_server::store::{
    Cursor, From, ItemsPage, JobEnd, JobQuery, JobStore, NewJob, PgStore, SqliteStore, StoreError,
};
use serde_json::{json, Value};

/// A backend: opens (and reopens) one store.
trait Backend {
    fn open(&self) -> Arc<dyn JobStore>;
}

struct Sqlite(tempfile::TempDir);

impl Backend for Sqlite {
    fn open(&self) -> Arc<dyn JobStore> {
        Arc::new(SqliteStore::open(&self.0.path().join("jobs.db")).expect("open sqlite").0)
    }
}

struct Postgres(String);

impl Backend for Postgres {
    fn open(&self) -> Arc<dyn JobStore> {
        Arc::new(PgStore::open(&self.0).expect("open postgres"))
    }
}

fn sqlite() -> Option<Box<dyn Backend>> {
    Some(Box::new(Sqlite(tempfile::tempdir().unwrap())))
}

fn postgres() -> Option<Box<dyn Backend>> {
    Some(Box::new(Postgres(support::pg::fresh_database("suite")?)))
}

fn job(name: &str, parallel: bool, total: u64) -> NewJob {
    NewJob {
        name: name.into(),
        parallel,
        request: json!({"script": "return _", "script_name": "s.luau"}).to_string(),
        total,
        inputs: parallel.then(|| json!((0..total).collect::<Vec<_>>()).to_string()),
        at: SystemTime::now(),
    }
}

fn end(name: &str, state: &str, done: u64) -> JobEnd {
    JobEnd { name: name.into(), state: state.into(), at: SystemTime::now(), error: None, done }
}

fn item(index: u64, status: &str) -> String {
    json!({"index": index, "input": index, "result": index * 2, "status": status}).to_string()
}

fn states(job: &Value) -> Vec<String> {
    job["history"].as_array().unwrap().iter().map(|h| h["state"].as_str().unwrap().to_string()).collect()
}

fn a_name_is_stored_once(b: &dyn Backend) {
    let store = b.open();
    store.insert(job("j", false, 1)).unwrap();
    assert_eq!(store.insert(job("j", false, 1)), Err(StoreError::Duplicate("j".into())));
    store.insert(job("k", false, 1)).unwrap();
    assert_eq!(store.list(None, 0, 10).unwrap().0, 2);
}

fn a_job_lifecycle_is_stored_and_survives_a_reopen(b: &dyn Backend) {
    let store = b.open();
    store.insert(job("life", true, 3)).unwrap();
    store.started("life", SystemTime::now());
    for i in 0..3 {
        store.record_output("life", i, item(i, "Completed"), Some(i + 1));
    }
    store.record_stream("life", "warning", 0, json!("careful").to_string());
    store.record_stream("life", "progress", 0, json!({"activity": "a"}).to_string());
    store.finished(end("life", "Completed", 3)).unwrap();
    store.close();
    drop(store);
    let store = b.open();
    let got = store.get("life").unwrap().expect("stored");
    assert_eq!(got["state"], "Completed");
    assert_eq!(got["kind"], "parallel");
    assert_eq!(got["script_name"], "s.luau");
    assert_eq!(got["progress"], json!({"done": 3, "total": 3}));
    assert_eq!(states(&got), ["Queued", "Running", "Completed"]);
    assert_eq!(got["output_count"], 3);
    assert_eq!(got["stream_counts"], json!({"progress": 1, "warning": 1}));
    assert_eq!(got["streams"]["warning"], json!(["careful"]));
    assert!(got["duration_s"].as_f64().is_some(), "{got}");
    let (total, records) = store.output("life", 1, 10).unwrap().unwrap();
    assert_eq!(total, 3);
    assert_eq!(records.iter().map(|r| r["seq"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(records[1]["result"], 4);
}

fn lists_filter_by_state_and_page_oldest_first(b: &dyn Backend) {
    let store = b.open();
    for i in 0..5 {
        store.insert(job(&format!("l{i}"), false, 1)).unwrap();
    }
    store.started("l1", SystemTime::now());
    store.finished(end("l1", "Failed", 0)).unwrap();
    let (total, jobs) = store.list(None, 1, 2).unwrap();
    assert_eq!(total, 5);
    assert_eq!(jobs.iter().map(|j| j["name"].as_str().unwrap()).collect::<Vec<_>>(), ["l1", "l2"]);
    let (total, jobs) = store.list(Some("Failed"), 0, 10).unwrap();
    assert_eq!((total, jobs[0]["name"].as_str()), (1, Some("l1")));
    assert_eq!(store.list(Some("Queued"), 0, 10).unwrap().0, 4);
}

fn streams_page_from_an_offset_or_as_a_tail(b: &dyn Backend) {
    let store = b.open();
    store.insert(job("s", false, 1)).unwrap();
    for i in 0..250u64 {
        store.record_stream("s", "verbose", i, json!(format!("line {i}")).to_string());
    }
    store.finished(end("s", "Completed", 1)).unwrap();
    let page = store.stream("s", "verbose", From::Tail, 3).unwrap().unwrap();
    assert_eq!((page.total, page.offset), (250, 247));
    assert_eq!(page.records, vec![json!("line 247"), json!("line 248"), json!("line 249")]);
    let page = store.stream("s", "verbose", From::Offset(10), 2).unwrap().unwrap();
    assert_eq!(page.records, vec![json!("line 10"), json!("line 11")]);
    let got = store.get("s").unwrap().unwrap();
    assert_eq!(got["streams"]["verbose"].as_array().unwrap().len(), 100, "the description carries a tail");
    assert_eq!(store.stream("s", "error", From::Tail, 3).unwrap().unwrap().total, 0);
}

fn unknown_jobs_are_none_not_errors(b: &dyn Backend) {
    let store = b.open();
    assert!(store.get("nope").unwrap().is_none());
    assert!(store.output("nope", 0, 1).unwrap().is_none());
    assert!(store.stream("nope", "error", From::Tail, 1).unwrap().is_none());
    assert!(store.stored_request("nope").unwrap().is_none());
    assert!(!store.delete("nope").unwrap());
}

fn requests_and_unfinished_items_are_kept_for_restarts(b: &dyn Backend) {
    let store = b.open();
    store.insert(job("r", true, 6)).unwrap();
    store.started("r", SystemTime::now());
    store.record_output("r", 0, item(0, "Completed"), Some(1));
    store.record_output("r", 1, item(3, "Failed"), Some(2));
    store.record_output("r", 2, item(4, "CompletedWithErrors"), Some(3));
    store.finished(end("r", "Failed", 3)).unwrap();
    let kept = store.stored_request("r").unwrap().unwrap();
    assert_eq!(kept.request["script"], "return _");
    assert_eq!(kept.inputs, Some((0..6).map(|i| json!(i)).collect()));
    assert_eq!(store.unfinished_items("r", 6, 2).unwrap(), (4, vec![1, 2]));
}

fn only_finished_jobs_are_cleaned_and_a_delete_takes_the_records(b: &dyn Backend) {
    let store = b.open();
    store.insert(job("done", true, 1)).unwrap();
    store.record_output("done", 0, item(0, "Completed"), Some(1));
    store.finished(end("done", "Completed", 1)).unwrap();
    store.insert(job("queued", false, 1)).unwrap();
    store.delete_finished(&["done".into(), "queued".into()]).unwrap();
    assert!(store.get("done").unwrap().is_none());
    assert!(store.get("queued").unwrap().is_some(), "a queued job is not cleaned");
    assert!(store.delete("queued").unwrap());
    assert!(store.get("queued").unwrap().is_none());
    // A name freed by a delete can be used again, with no old records.
    store.insert(job("done", true, 1)).unwrap();
    assert_eq!(store.output("done", 0, 10).unwrap().unwrap().0, 0);
}

fn a_job_deleted_while_it_runs_ends_without_error(b: &dyn Backend) {
    let store = b.open();
    store.insert(job("gone", true, 2)).unwrap();
    store.started("gone", SystemTime::now());
    assert!(store.delete("gone").unwrap());
    store.record_output("gone", 0, item(0, "Completed"), Some(1));
    // SQLite says the job is gone; either way nothing is stored and the store is healthy.
    let _ = store.finished(end("gone", "Completed", 1));
    assert!(store.get("gone").unwrap().is_none());
    assert_eq!(store.health().failing, None);
}

fn pages_are_bounded_in_bytes_but_never_empty(b: &dyn Backend) {
    let max = runspace_server::limits::MAX_PAGE_BYTES;
    let store = b.open();
    store.insert(job("big", true, 5)).unwrap();
    store.record_output("big", 0, json!({"result": "y".repeat(max)}).to_string(), Some(1));
    for seq in 1..5 {
        store.record_output("big", seq, json!({"result": "z".repeat(max / 4)}).to_string(), Some(seq + 1));
    }
    store.finished(end("big", "Completed", 5)).unwrap();
    let (total, first) = store.output("big", 0, 100).unwrap().unwrap();
    assert_eq!((total, first.len()), (5, 1));
    let (_, next) = store.output("big", 1, 100).unwrap().unwrap();
    assert!((1..4).contains(&next.len()), "{} records", next.len());
}

fn many_writers_at_once_lose_nothing(b: &dyn Backend) {
    let store = b.open();
    std::thread::scope(|s| {
        for t in 0..4 {
            let store = store.clone();
            s.spawn(move || {
                let name = format!("w{t}");
                store.insert(job(&name, true, 500)).unwrap();
                for i in 0..500 {
                    store.record_output(&name, i, item(i, "Completed"), Some(i + 1));
                }
                store.finished(end(&name, "Completed", 500)).unwrap();
            });
        }
    });
    for t in 0..4 {
        let got = store.get(&format!("w{t}")).unwrap().unwrap();
        assert_eq!((got["output_count"].as_u64(), got["state"].as_str()), (Some(500), Some("Completed")));
    }
    let started = std::time::Instant::now();
    store.close();
    assert!(started.elapsed() < Duration::from_secs(10));
}

// The dashboard's reads.

/// A finished job "j" of 120 items, every third Failed, its script named Audit.luau.
fn store_with_items(b: &dyn Backend) -> Arc<dyn JobStore> {
    let store = b.open();
    let mut new = job("j", true, 120);
    new.request = json!({"script": "return _", "script_name": "Audit.luau"}).to_string();
    store.insert(new).unwrap();
    store.started("j", SystemTime::now());
    for seq in 0..120u64 {
        let status = if seq % 3 == 0 { "Failed" } else { "Completed" };
        store.record_output("j", seq, item(seq, status), Some(seq + 1));
    }
    store.finished(end("j", "CompletedWithErrors", 120)).unwrap();
    store
}

fn seqs(page: &ItemsPage) -> Vec<i64> {
    page.records.iter().map(|(k, _)| *k).collect()
}

fn item_records_are_walked_by_key_both_ways_and_by_status(b: &dyn Backend) {
    let store = store_with_items(b);
    let first = store.item_rows("j", None, Cursor::First, 50).unwrap().unwrap();
    assert_eq!(seqs(&first), (0..50).collect::<Vec<_>>());
    assert_eq!((first.more_below, first.more_above), (false, true));
    assert_eq!(first.records[7].1["result"], 14);
    let second = store.item_rows("j", None, Cursor::Above(49), 50).unwrap().unwrap();
    assert_eq!(seqs(&second), (50..100).collect::<Vec<_>>());
    assert_eq!((second.more_below, second.more_above), (true, true));
    let last = store.item_rows("j", None, Cursor::Above(99), 50).unwrap().unwrap();
    assert_eq!(seqs(&last), (100..120).collect::<Vec<_>>());
    assert_eq!((last.more_below, last.more_above), (true, false));
    let back = store.item_rows("j", None, Cursor::Below(100), 50).unwrap().unwrap();
    assert_eq!(seqs(&back), (50..100).collect::<Vec<_>>(), "in walk order after walking back");
    let failed = store.item_rows("j", Some("Failed"), Cursor::First, 50).unwrap().unwrap();
    assert_eq!(seqs(&failed), (0..120).step_by(3).collect::<Vec<_>>());
    assert!(!failed.more_above);
    let failed = store.item_rows("j", Some("Failed"), Cursor::First, 10).unwrap().unwrap();
    assert_eq!(seqs(&failed), (0..30).step_by(3).collect::<Vec<_>>());
    assert!(failed.more_above);
    let next = store.item_rows("j", Some("Failed"), Cursor::Above(27), 10).unwrap().unwrap();
    assert_eq!(seqs(&next), (30..60).step_by(3).collect::<Vec<_>>());
    assert!(store.item_rows("nope", None, Cursor::First, 50).unwrap().is_none());
    // The failed items were counted as they arrived.
    let row = store.job_row("j").unwrap().unwrap();
    assert_eq!((row.failed, row.done, row.total), (40, 120, 120));
    assert_eq!(
        (row.state.as_str(), row.script_name.as_str(), row.parallel),
        ("CompletedWithErrors", "Audit.luau", true)
    );
    assert!(row.started.is_some() && row.ended.is_some());
    assert!(store.job_row("nope").unwrap().is_none());
}

fn item_pages_are_bounded_in_bytes_but_never_empty(b: &dyn Backend) {
    let max = runspace_server::limits::MAX_PAGE_BYTES;
    let store = b.open();
    store.insert(job("big", true, 5)).unwrap();
    store.record_output("big", 0, json!({"result": "y".repeat(max)}).to_string(), Some(1));
    for seq in 1..5 {
        store.record_output("big", seq, json!({"result": "z".repeat(max / 4)}).to_string(), Some(seq + 1));
    }
    store.finished(end("big", "Completed", 5)).unwrap();
    let first = store.item_rows("big", None, Cursor::First, 100).unwrap().unwrap();
    assert_eq!(seqs(&first), [0]);
    assert!(first.more_above, "the records cut off are further on");
    let next = store.item_rows("big", None, Cursor::Above(0), 100).unwrap().unwrap();
    assert!((1..4).contains(&next.records.len()), "{} records", next.records.len());
}

fn the_job_list_filters_by_state_and_searches_names_and_script_names(b: &dyn Backend) {
    let store = store_with_items(b);
    let query = |state: Option<&str>, search: Option<&str>| JobQuery {
        state: state.map(String::from),
        search: search.map(String::from),
        cursor: Cursor::First,
        limit: 10,
    };
    let names = |q: JobQuery| -> Vec<String> { store.job_rows(&q).unwrap().rows.into_iter().map(|r| r.name).collect() };
    assert_eq!(names(query(None, Some("audit"))), vec!["j"], "script name, any case");
    assert_eq!(names(query(None, Some("J"))), vec!["j"]);
    assert_eq!(names(query(Some("Failed"), None)), Vec::<String>::new());
    assert_eq!(names(query(Some("CompletedWithErrors"), Some("aud"))), vec!["j"]);
    assert_eq!(names(query(None, Some("%"))), Vec::<String>::new(), "no pattern characters");
    assert_eq!(names(query(None, Some("_"))), Vec::<String>::new(), "no pattern characters");
    assert_eq!(store.state_counts().unwrap(), vec![("CompletedWithErrors".to_string(), 1)]);
    assert!(store.active_jobs(10).unwrap().is_empty());
}

fn the_job_list_is_walked_newest_first_by_key_with_counts_and_jobs_in_flight(b: &dyn Backend) {
    let store = b.open();
    for i in 0..25 {
        store.insert(job(&format!("n{i:02}"), false, 1)).unwrap();
    }
    for i in 0..10 {
        let name = format!("n{i:02}");
        store.started(&name, SystemTime::now());
        store.finished(end(&name, "Completed", 1)).unwrap();
    }
    // Started is queued; the acknowledged end after it commits it.
    store.started("n21", SystemTime::now());
    store.started("n20", SystemTime::now());
    store.finished(end("n20", "Failed", 0)).unwrap();
    let page = |state: Option<&str>, cursor: Cursor| {
        store.job_rows(&JobQuery { state: state.map(String::from), search: None, cursor, limit: 10 }).unwrap()
    };
    let names = |p: &runspace_server::store::JobsPage| p.rows.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
    let first = page(None, Cursor::First);
    assert_eq!(names(&first), (15..25).rev().map(|i| format!("n{i:02}")).collect::<Vec<_>>());
    assert_eq!((first.more_below, first.more_above), (true, false));
    let second = page(None, Cursor::Below(first.rows.last().unwrap().key));
    assert_eq!(names(&second), (5..15).rev().map(|i| format!("n{i:02}")).collect::<Vec<_>>());
    assert_eq!((second.more_below, second.more_above), (true, true));
    let third = page(None, Cursor::Below(second.rows.last().unwrap().key));
    assert_eq!(names(&third), (0..5).rev().map(|i| format!("n{i:02}")).collect::<Vec<_>>());
    assert_eq!((third.more_below, third.more_above), (false, true));
    let back = page(None, Cursor::Above(third.rows[0].key));
    assert_eq!(names(&back), names(&second), "back up, newest first");
    let top = page(None, Cursor::Above(first.rows[3].key));
    assert_eq!(names(&top), names(&first), "walking up into the newest shows a full first page");
    assert!(!top.more_above);
    let done = page(Some("Completed"), Cursor::First);
    assert_eq!(names(&done), (0..10).rev().map(|i| format!("n{i:02}")).collect::<Vec<_>>());
    assert_eq!((done.more_below, done.more_above), (false, false));
    let mut counts = store.state_counts().unwrap();
    counts.sort();
    let expected = [("Completed", 10), ("Failed", 1), ("Queued", 13), ("Running", 1)];
    assert_eq!(counts, expected.map(|(s, n)| (s.to_string(), n)));
    let active: Vec<String> = store.active_jobs(5).unwrap().into_iter().map(|r| r.name).collect();
    assert_eq!(active, ["n10", "n11", "n12", "n13", "n14"], "oldest first, at most the limit");
    let running = store.job_row("n21").unwrap().unwrap();
    assert_eq!((running.state.as_str(), running.ended), ("Running", None));
    assert_eq!(store.job_row("n20").unwrap().unwrap().state, "Failed");
}

/// Each check, once per backend (a test per pair, so a failure names both).
macro_rules! suite {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $check() { if let Some(b) = super::sqlite() { super::$check(b.as_ref()) } } )*
        }
        mod postgres {
            $( #[test] fn $check() { if let Some(b) = super::postgres() { super::$check(b.as_ref()) } } )*
        }
    };
}

suite!(
    a_name_is_stored_once,
    a_job_lifecycle_is_stored_and_survives_a_reopen,
    lists_filter_by_state_and_page_oldest_first,
    streams_page_from_an_offset_or_as_a_tail,
    unknown_jobs_are_none_not_errors,
    requests_and_unfinished_items_are_kept_for_restarts,
    only_finished_jobs_are_cleaned_and_a_delete_takes_the_records,
    a_job_deleted_while_it_runs_ends_without_error,
    pages_are_bounded_in_bytes_but_never_empty,
    many_writers_at_once_lose_nothing,
    item_records_are_walked_by_key_both_ways_and_by_status,
    item_pages_are_bounded_in_bytes_but_never_empty,
    the_job_list_filters_by_state_and_searches_names_and_script_names,
    the_job_list_is_walked_newest_first_by_key_with_counts_and_jobs_in_flight,
);
