//! Attacks on the promises of items as Luau threads: many items share one
//! VM, and each must still be isolated, timed, stopped and reported once,
//! whatever its neighbours do.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Duration;

use runspace::{ItemResult, RunspacePool, Script, SessionState, Status};
use serde_json::{json, Value};

/// Runs `f` on a thread and fails the test if it has not returned within
/// `bound` (a hang is the bug these tests look for; they must not hang).
fn within<T: Send + 'static>(bound: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(bound).unwrap_or_else(|_| panic!("did not finish within {bound:?}"))
}

/// A script whose input 0 gets stuck in one long C call (a sort with a C
/// comparator: seconds without an interrupt) after its deadline, so the
/// watchdog abandons its VM; the other inputs wait, then answer.
const STUCK_FIRST: &str = "
    if _ == 0 then
      local t = {}
      for i = 1, 5000000 do t[i] = (i * 7919) % 1000003 end
      table.sort(t, rawequal)
      return 'sorted'
    end
    sleep(0.2)
    return _";

/// The results of a run by index; fails on a duplicate.
fn by_index(items: Vec<ItemResult>) -> BTreeMap<u64, ItemResult> {
    let mut seen = BTreeMap::new();
    for item in items {
        let index = item.index;
        assert!(seen.insert(index, item).is_none(), "item {index} was reported twice");
    }
    seen
}

#[test]
fn items_queued_behind_a_neighbour_stuck_in_a_c_call_are_not_lost_when_its_vm_is_abandoned() {
    // One VM, every item in flight at once: the five behind input 0 are
    // started on the VM's event loop but not yet polled when it gets stuck.
    // They used to be dropped with the abandoned VM: the run ended with
    // one record of six, and nothing said the rest were gone.
    let items = within(Duration::from_secs(60), || {
        let pool = RunspacePool::builder().threads(1).throttle(10).open().unwrap();
        let script = Script::new(STUCK_FIRST).unwrap();
        pool.parallel(&script).timeout(Duration::from_millis(1500)).run((0..6).map(|n| json!(n))).collect::<Vec<_>>()
    });
    let items = by_index(items);
    assert_eq!(items.keys().copied().collect::<Vec<_>>(), (0..6).collect::<Vec<_>>(), "items were lost");
    let stuck = &items[&0];
    assert_eq!(stuck.status, Status::TimedOut, "{:?}", stuck.errors());
    for n in 1..6 {
        let item = &items[&n];
        assert_eq!((item.status, &item.result), (Status::Completed, &json!(n)), "item {n}: {:?}", item.errors());
    }
}

#[test]
fn invocations_queued_behind_a_neighbour_stuck_in_a_c_call_still_end() {
    // The same with single invocations: a handle whose invocation was
    // dropped with the abandoned VM waited forever in `end()`.
    let results = within(Duration::from_secs(60), || {
        let pool = RunspacePool::builder().threads(1).throttle(10).open().unwrap();
        let stuck = pool
            .invocation(&Script::new(STUCK_FIRST).unwrap())
            .arg(json!(0))
            .timeout(Duration::from_millis(1500))
            .begin()
            .unwrap();
        let script = Script::new(STUCK_FIRST).unwrap();
        let others: Vec<_> = (1..5).map(|n| pool.invocation(&script).arg(json!(n)).begin().unwrap()).collect();
        let stuck = stuck.end();
        let others: Vec<(Status, Value)> = others
            .into_iter()
            .map(|h| {
                let r = h.end();
                (r.status(), r.result())
            })
            .collect();
        (stuck.status(), others)
    });
    assert_eq!(results.0, Status::TimedOut);
    for (n, (status, result)) in results.1.into_iter().enumerate() {
        assert_eq!((status, result), (Status::Completed, json!(n + 1)));
    }
}

#[test]
fn errors_of_every_kind_end_only_their_own_item() {
    // Non-string error values, an error whose __tostring never returns, an
    // error message bigger than the output cap: each item ends with a
    // status and the neighbours sleeping in the same VM are untouched.
    let script = Script::new(
        "local kind = _ % 8
         if kind == 0 then error({code = 1})
         elseif kind == 1 then error(nil)
         elseif kind == 2 then error(setmetatable({}, {__tostring = function() return 'told' end}))
         elseif kind == 3 then error(setmetatable({}, {__tostring = function() error('again') end}))
         elseif kind == 4 then error(string.rep('x', 4 * 1024 * 1024))
         elseif kind == 5 then error(coroutine.create(function() end))
         end
         sleep(0.05)
         return _",
    )
    .unwrap();
    let items = within(Duration::from_secs(120), move || {
        let session = SessionState::new().max_output(1024 * 1024);
        let pool = RunspacePool::builder().threads(1).throttle(64).session(session).open().unwrap();
        pool.parallel(&script).timeout(Duration::from_secs(2)).run((0..64).map(|n| json!(n))).collect::<Vec<_>>()
    });
    let items = by_index(items);
    assert_eq!(items.len(), 64, "items were lost");
    for (n, item) in &items {
        let kind = n % 8;
        let text = serde_json::to_string(item).unwrap();
        assert!(text.len() < 2 * 1024 * 1024, "item {n}'s record is {} bytes, past the output cap", text.len());
        match kind {
            0..=5 => assert!(
                matches!(item.status, Status::Failed | Status::TimedOut),
                "item {n}: {:?} {:?}",
                item.status,
                item.errors()
            ),
            _ => {
                assert_eq!((item.status, &item.result), (Status::Completed, &json!(n)), "item {n}: {:?}", item.errors())
            }
        }
    }
}

#[test]
fn an_error_whose_tostring_never_returns_times_out_and_its_neighbours_finish() {
    // The host turns the error value into text with `__tostring`: an
    // endless one must still be timed, and the VM must go on for the
    // items beside it (they have no deadline: a computing neighbour may
    // delay them, never end them).
    let (bad, others) = within(Duration::from_secs(60), || {
        let pool = RunspacePool::builder().threads(1).throttle(8).open().unwrap();
        let others: Vec<_> = (0..4)
            .map(|n| pool.invocation(&Script::new("sleep(0.05) return _").unwrap()).arg(json!(n)).begin().unwrap())
            .collect();
        let code = "error(setmetatable({}, {__tostring = function() while true do pcall(function() while true do end end) end end}))";
        let bad = pool.invocation(&Script::new(code).unwrap()).timeout(Duration::from_millis(300)).begin().unwrap();
        let bad = bad.end();
        let others: Vec<_> = others.into_iter().map(|h| h.end()).map(|r| (r.status(), r.result())).collect();
        (bad.status(), others)
    });
    assert_eq!(bad, Status::TimedOut);
    for (n, other) in others.into_iter().enumerate() {
        assert_eq!(other, (Status::Completed, json!(n)));
    }
}

#[test]
fn a_timeout_or_wait_of_duration_max_means_no_limit_not_a_panic() {
    // `now + Duration::MAX` overflows `Instant` and panicked on the worker
    // thread (a cluster job's `timeout_ms` of u64::MAX reached it).
    let out = within(Duration::from_secs(30), || {
        let session = SessionState::new().timeout(Duration::MAX);
        let pool = RunspacePool::builder().threads(1).throttle(4).session(session).open().unwrap();
        let script = Script::new("sleep(0.01) return _").unwrap();
        let mut results = pool.parallel(&script).timeout(Duration::MAX).run((0..3).map(|n| json!(n)));
        let mut items = Vec::new();
        while let runspace::Next::Item(item) = results.next_timeout(Duration::MAX) {
            items.push((item.status, item.result));
        }
        let handle = pool.invocation(&script).arg(json!(7)).timeout(Duration::MAX).begin().unwrap();
        assert!(handle.wait(Duration::MAX));
        let r = handle.end();
        items.push((r.status(), r.result()));
        items
    });
    let want: Vec<(Status, Value)> = [0, 1, 2, 7].iter().map(|n| (Status::Completed, json!(n))).collect();
    let mut out = out;
    out.sort_by_key(|(_, v)| v.as_i64());
    assert_eq!(out, want);
}

/// How long a run of 10,000 items in flight in one VM takes; each waits,
/// then runs `then`.
fn ten_thousand_waiting(then: &str) -> Duration {
    let code = format!("sleep(0.2) {then}");
    within(Duration::from_secs(300), move || {
        let pool = RunspacePool::builder().threads(1).throttle(10_000).open().unwrap();
        let script = Script::new(&code).unwrap();
        let started = std::time::Instant::now();
        let n = pool.parallel(&script).run((0..10_000).map(|n| json!(n))).count();
        assert_eq!(n, 10_000);
        started.elapsed()
    })
}

#[test]
fn ten_thousand_waiting_items_that_fail_end_about_as_fast_as_ones_that_succeed() {
    // Each abnormal end ran a full collection of the heap all 10,000 share:
    // quadratic, 24 s against 1.3 s in a release build. So stopping a big
    // run (Ctrl-C, a closed pipe) took half a minute.
    let ok = ten_thousand_waiting("return _");
    let failing = ten_thousand_waiting("error('no')");
    assert!(failing < ok * 4 + Duration::from_secs(3), "failing {failing:?}, succeeding {ok:?}");
}

#[test]
fn stopping_ten_thousand_waiting_items_ends_the_run_promptly() {
    // Ctrl-C, or a reader gone (`rsp run | head -1`), on a run with 10,000
    // items in flight in one VM: each stopped item's end ran a full
    // collection of the heap they share, so the run took ~25 s to end.
    let took = within(Duration::from_secs(300), || {
        let pool = RunspacePool::builder().threads(1).throttle(10_000).open().unwrap();
        let script = Script::new("sleep(3600)").unwrap();
        let mut results = pool.parallel(&script).run((0..10_000).map(|n| json!(n)));
        // Let them all start and wait.
        assert!(matches!(results.next_timeout(Duration::from_millis(1500)), runspace::Next::Idle));
        let stopped_at = std::time::Instant::now();
        results.control().stop();
        // Items not started yet when the stop came are not run (nor reported).
        let ended: Vec<_> = results.by_ref().map(|item| item.status).collect();
        assert!(ended.iter().all(|s| *s == Status::Stopped), "an item did not stop");
        assert!(ended.len() >= 1_000, "only {} had started", ended.len());
        stopped_at.elapsed()
    });
    assert!(took < Duration::from_secs(8), "took {took:?} to stop");
}

#[test]
#[cfg(feature = "exec")]
fn a_host_call_that_waits_inside_a_coroutine_fails_instead_of_leaving_its_work_behind() {
    // Inside a coroutine the item made, a waiting call yielded that
    // coroutine, not the item: `sleep` returned a stray userdata at once,
    // and `exec`'s child ran on after the item had completed.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pid");
    let command = format!("echo $$ > '{}'; exec sleep 3600", file.display());
    let code = format!(
        "local co = coroutine.create(function() return exec('sh', {{'-c', {}}}) end)
         local ok, err = coroutine.resume(co)
         local slept = coroutine.wrap(function() return pcall(sleep, 0.01) end)
         local s_ok, s_err = slept()
         return {{ok, tostring(err), s_ok, tostring(s_err)}}",
        serde_json::to_string(&command).unwrap()
    );
    let (status, result) = within(Duration::from_secs(30), move || {
        let session = SessionState::new().grants_from({
            let mut g = runspace::Grants::default();
            g.grant_spec("exec").unwrap();
            g
        });
        let pool = RunspacePool::builder().threads(1).throttle(4).session(session).open().unwrap();
        let r = pool.invocation(&Script::new(&code).unwrap()).invoke().unwrap();
        (r.status(), r.result())
    });
    assert_eq!(status, Status::Completed, "{result}");
    assert_eq!(result[0], json!(false), "exec in a coroutine must fail: {result}");
    assert!(result[1].as_str().unwrap().contains("cannot wait inside a coroutine"), "{result}");
    assert_eq!(result[2], json!(false), "sleep in a coroutine must fail: {result}");
    assert!(result[3].as_str().unwrap().contains("cannot wait inside a coroutine"), "{result}");
    std::thread::sleep(Duration::from_millis(200));
    if let Ok(pid) = std::fs::read_to_string(&file) {
        let pid: i32 = pid.trim().parse().unwrap();
        // SAFETY: kill on the child the test's script started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        panic!("exec started a child ({pid}) from inside a coroutine");
    }
}
