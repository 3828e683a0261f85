//! Batch mode, retries, halt rules, progress events and bounded memory of
//! parallel runs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runspace::{Halt, ItemResult, RunProgress, RunspacePool, Script, Status};
use serde_json::json;

fn pool(max: usize) -> RunspacePool {
    RunspacePool::builder().max(max).open().unwrap()
}

fn script(code: &str) -> Script {
    Script::new(code).unwrap()
}

#[test]
fn batches_carry_ids_and_run_in_order_on_one_runspace() {
    let pool = pool(3);
    let results: Vec<ItemResult> =
        pool.parallel(&script("return _ * 2")).batch_size(10).run((0..95).map(|n| json!(n))).collect();
    assert_eq!(results.len(), 95);
    let mut by_batch: BTreeMap<u64, Vec<&ItemResult>> = BTreeMap::new();
    for r in &results {
        assert_eq!(r.status, Status::Completed);
        let (batch, pos) = (r.batch().unwrap(), r.batch_index().unwrap());
        assert_eq!(batch, r.index / 10, "item {} in the wrong batch", r.index);
        assert_eq!(pos, r.index % 10, "item {} at the wrong place in its batch", r.index);
        by_batch.entry(batch).or_default().push(r);
    }
    assert_eq!(by_batch.len(), 10);
    assert_eq!(by_batch[&9].len(), 5, "the last batch is the remainder");
    for items in by_batch.values() {
        // Results of one batch arrive in the batch's order.
        let positions: Vec<u64> = items.iter().map(|r| r.batch_index().unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    }
    // Without batch mode, no batch fields.
    let plain = pool.parallel(&script("return _")).run(vec![json!(1)]).next().unwrap();
    assert_eq!((plain.batch(), plain.batch_index()), (None, None));
    assert!(!serde_json::to_string(&plain).unwrap().contains("batch"));
}

#[test]
fn at_most_max_batches_run_at_once() {
    // Two runspaces, batches of 5 items sleeping 20 ms: 4 batches take
    // about 2 × 100 ms, never 4 × 100 ms, and never under 200 ms.
    let pool = pool(2);
    let started = std::time::Instant::now();
    let n = pool.parallel(&script("sleep(0.02)")).batch_size(5).run((0..20).map(|n| json!(n))).count();
    let took = started.elapsed();
    assert_eq!(n, 20);
    assert!(took >= Duration::from_millis(190), "{took:?}: more than 2 batches ran at once");
}

#[test]
fn ordered_batches_keep_input_order() {
    let pool = pool(4);
    let indices: Vec<u64> = pool
        .parallel(&script("if _ % 7 == 0 then sleep(0.002) end return _"))
        .batch_size(16)
        .ordered(true)
        .run((0..500).map(|n| json!(n)))
        .map(|r| r.index)
        .collect();
    assert_eq!(indices, (0..500).collect::<Vec<u64>>());
}

#[test]
fn retries_rerun_failed_and_timed_out_items_and_count_attempts() {
    let pool = pool(2);
    // Items 0..3 always fail, 3 always times out, the rest succeed at once.
    let started = std::time::Instant::now();
    let mut results: Vec<ItemResult> = pool
        .parallel(&script("if _ < 3 then error('no') end if _ == 3 then sleep(10) end return _"))
        .timeout(Duration::from_millis(50))
        .retries(2, Duration::from_millis(10))
        .run((0..10).map(|n| json!(n)))
        .collect();
    results.sort_by_key(|r| r.index);
    for r in &results[..3] {
        assert_eq!((r.status, r.attempts), (Status::Failed, 3), "{r:?}");
    }
    assert_eq!((results[3].status, results[3].attempts), (Status::TimedOut, 3));
    for r in &results[4..] {
        assert_eq!((r.status, r.attempts), (Status::Completed, 1));
    }
    // Back-off: 10 ms then 20 ms between the attempts of each failing item.
    assert!(started.elapsed() >= Duration::from_millis(30));
    let json = serde_json::to_value(&results[0]).unwrap();
    assert_eq!(json["attempts"], json!(3));
    assert!(serde_json::to_value(&results[5]).unwrap().get("attempts").is_none());
}

#[test]
fn a_retry_that_succeeds_reports_its_attempts() {
    // A script can tell attempts apart through a module's private table,
    // which lives as long as the runspace: one runspace, so every attempt
    // of an item runs on it.
    let module = "local seen = {} return { bump = function(k) seen[k] = (seen[k] or 0) + 1 return seen[k] end }";
    let session = runspace::SessionState::new().module("flaky", module).unwrap();
    let pool = RunspacePool::builder().max(1).session(session).open().unwrap();
    let code = "local n = flaky.bump(_) if n < 3 then error('try again') end return n";
    let results: Vec<ItemResult> =
        pool.parallel(&script(code)).retries(5, Duration::from_millis(1)).run((0..4).map(|n| json!(n))).collect();
    for r in &results {
        assert_eq!((r.status, r.attempts, r.result.clone()), (Status::Completed, 3, json!(3)), "{r:?}");
    }
}

fn collect_events(code: &str, total: u64, batch: Option<usize>) -> (Vec<RunProgress>, RunProgress) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let pool = pool(2);
    let mut parallel = pool
        .parallel(&script(code))
        .total(total)
        .on_progress(Duration::from_millis(5), move |p| sink.lock().unwrap().push(p.clone()));
    if let Some(b) = batch {
        parallel = parallel.batch_size(b);
    }
    let mut results = parallel.run((0..total).map(|n| json!(n)));
    results.by_ref().for_each(drop);
    let last = results.progress();
    let events = events.lock().unwrap().clone();
    (events, last)
}

#[test]
fn progress_events_add_up_and_end_with_the_totals() {
    let code = "if _ % 10 == 0 then error('x') elseif _ % 10 == 1 then write_error('w') end \
                write_progress('step', tostring(_)) sleep(0.001)";
    let (events, last) = collect_events(code, 300, Some(7));
    assert!(events.len() >= 3, "only {} events", events.len());
    let mut done = 0;
    for p in &events {
        assert_eq!(p.done, p.completed + p.with_errors + p.failed + p.timed_out + p.stopped, "{p:?}");
        assert!(p.done >= done, "done went backwards");
        assert!(p.read >= p.done);
        assert_eq!(p.total, Some(300));
        done = p.done;
    }
    let fin = events.last().unwrap();
    assert!(fin.finished);
    assert_eq!((fin.done, fin.completed, fin.with_errors, fin.failed), (300, 240, 30, 30));
    assert_eq!(fin.batches, 43);
    assert_eq!(fin.eta, Some(Duration::ZERO));
    assert_eq!(fin.activity.as_ref().map(|a| a.activity.as_str()), Some("step"));
    assert_eq!(events.iter().filter(|p| p.finished).count(), 1, "one final event");
    assert_eq!((last.done, last.failures()), (300, 30));
}

fn halt_run(rule: &str, code: &str, n: u64) -> (Vec<ItemResult>, Option<Halt>) {
    let pool = pool(2);
    let mut results = pool.parallel(&script(code)).halt(rule.parse().unwrap()).run((0..n).map(|i| json!(i)));
    let items: Vec<ItemResult> = results.by_ref().collect();
    (items, results.halted())
}

#[test]
fn halt_soon_fail_n_lets_running_items_finish() {
    let (items, halted) = halt_run("soon,fail=3", "sleep(0.005) if _ % 5 == 0 then error('bad') end", 1000);
    assert_eq!(halted.unwrap().to_string(), "soon,fail=3");
    let failed = items.iter().filter(|r| r.status == Status::Failed).count();
    assert!(failed >= 3, "{failed}");
    assert!(items.len() < 1000, "the run went on to the end");
    assert!(items.iter().all(|r| r.status != Status::Stopped), "soon stopped a running item");
}

#[test]
fn halt_now_stops_running_items() {
    // Item 0 fails once the other slot's item is surely asleep (failing at
    // once could halt the run before any other item started, leaving none
    // to stop); the others sleep long and are stopped.
    let (items, halted) = halt_run("now,fail=1", "if _ == 0 then sleep(1) error('bad') end sleep(30)", 100);
    assert!(halted.is_some());
    assert!(items.len() < 100);
    assert!(items.iter().any(|r| r.status == Status::Stopped), "{items:?}");
    assert_eq!(items.iter().filter(|r| r.status == Status::Failed).count(), 1);
}

#[test]
fn halt_on_a_failure_percentage() {
    // Every other item fails: 50% halts once ten have finished.
    let code = "sleep(0.002) if _ % 2 == 0 then error('bad') end";
    let (items, halted) = halt_run("soon,fail=50%", code, 2000);
    assert!(halted.is_some());
    assert!(items.len() >= 10 && items.len() < 2000, "{}", items.len());
    // Only 5 of 60 fail, so no ten finished items can be 60% failures,
    // whatever order they finish in.
    let few = "sleep(0.002) if _ >= 50 and _ % 2 == 0 then error('bad') end";
    let (items, halted) = halt_run("soon,fail=60%", few, 60);
    assert!(halted.is_none());
    assert_eq!(items.len(), 60);
}

#[test]
fn halt_on_successes() {
    let (items, halted) = halt_run("soon,success=5", "sleep(0.005) return _", 1000);
    assert!(halted.is_some());
    let ok = items.iter().filter(|r| r.status == Status::Completed).count();
    assert!((5..100).contains(&ok), "{ok}");
    // Item 0 succeeds once the other slot's item is surely asleep (see
    // halt_now_stops_running_items).
    let (items, halted) = halt_run("now,success=1", "if _ > 0 then sleep(30) else sleep(1) end", 50);
    assert!(halted.is_some());
    assert!(items.iter().any(|r| r.status == Status::Stopped));
}

#[test]
fn a_million_streamed_items_stay_within_the_window() {
    let pool = pool(2);
    let mut results = pool.parallel(&script("return _")).run((0..1_000_000u64).map(|n| json!(n)));
    let mut count = 0u64;
    let mut sum = 0u64;
    for r in results.by_ref() {
        count += 1;
        sum += r.index;
    }
    assert_eq!(count, 1_000_000);
    assert_eq!(sum, 999_999 * 1_000_000 / 2, "an item was lost or duplicated");
    let peak = results.peak_in_memory();
    assert!(peak < 20_000, "peak {peak} items in memory");
    // Batch mode: bounded by throttle × batch size times a constant, the
    // batches queued (4 per runspace), one in the feeder's hand, one
    // running per runspace, results in the channel (4 per runspace + 4)
    // and the one being handed out; never by the input's length.
    let mut batched = pool.parallel(&script("return _")).batch_size(100).run((0..200_000u64).map(|n| json!(n)));
    assert_eq!(batched.by_ref().count(), 200_000);
    let bound = 100 * (2 * 4 + 1 + 2 + (2 * 4 + 4) + 1);
    assert!(batched.peak_in_memory() <= bound, "peak {} > {bound}", batched.peak_in_memory());
}

#[test]
fn run_indexed_keeps_given_indices_in_order() {
    let pool = pool(2);
    let given: Vec<(u64, serde_json::Value)> = (0..300u64).filter(|i| i % 3 != 0).map(|i| (i, json!(i))).collect();
    let got: Vec<u64> = pool
        .parallel(&script("return _"))
        .ordered(true)
        .window(16)
        .run_indexed(given.clone())
        .map(|r| {
            assert_eq!(r.input, json!(r.index));
            r.index
        })
        .collect();
    assert_eq!(got, given.iter().map(|(i, _)| *i).collect::<Vec<_>>());
}

#[test]
fn a_record_with_a_batch_and_no_position_reads_back_as_it_was() {
    for (batch, index) in [(Some(3), None), (None, Some(4)), (Some(5), Some(6)), (None, None)] {
        let mut record = serde_json::json!({
            "index": 1, "input": 1, "result": 2, "status": "Completed", "errors": [], "duration_ms": 0.5
        });
        if let Some(batch) = batch {
            record["batch"] = batch.into();
        }
        if let Some(index) = index {
            record["batch_index"] = index.into();
        }
        let item: runspace::ItemResult = serde_json::from_value(record.clone()).unwrap();
        assert_eq!((item.batch(), item.batch_index()), (batch, index));
        assert_eq!(serde_json::to_value(&item).unwrap(), record);
    }
}
