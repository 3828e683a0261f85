//! Items as Luau threads: thousands of waiting items share a few runspaces,
//! and stay isolated, stoppable and timed one by one.

mod host_common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

#[cfg(any(feature = "exec", feature = "http"))]
use host_common::{lit, session};
use runspace::{RunspacePool, Script, SessionState, Status};
use serde_json::{json, Value};

#[test]
fn ten_thousand_sleeping_items_share_two_runspaces_and_never_see_each_other() {
    let pool = RunspacePool::builder().threads(2).throttle(10_000).open().unwrap();
    assert_eq!((pool.threads(), pool.max()), (2, 10_000));
    // Each item writes globals, waits (so every other item of its VM runs
    // meanwhile), then checks nobody touched them.
    let script = Script::new(
        "assert(mine == nil and _G.count == nil, 'a neighbour leaked a global')
         mine = _
         _G.count = (_G.count or 0) + 1
         sleep(0.05)
         assert(mine == _, 'a neighbour overwrote a global')
         return mine, count",
    )
    .unwrap();
    let started = Instant::now();
    let mut seen = HashSet::new();
    for item in pool.parallel(&script).run((0..10_000).map(|n| json!(n))) {
        assert_eq!(item.status, Status::Completed, "{:?}", item.errors());
        assert_eq!(item.result, json!([item.index, 1]));
        assert!(seen.insert(item.index), "item {} came twice", item.index);
    }
    assert_eq!(seen.len(), 10_000);
    // One after another on 2 threads this is 250 s.
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
    assert_eq!(pool.open_runspaces(), 2);
}

/// The throttle counts items that run. Quick items first make the feeder
/// send chunks of dozens; when the items after them wait, each chunk's
/// rest must go to lanes of its own, not wait one by one behind its first.
#[test]
fn items_that_wait_after_quick_ones_all_wait_at_once() {
    let pool = RunspacePool::builder().threads(1).throttle(200).open().unwrap();
    let script = Script::new("if _ <= 100 then return _ end sleep(1) return _").unwrap();
    // The quick items are measured before the waiting ones are read.
    let inputs = (1..=300).map(|n| {
        if n == 101 {
            std::thread::sleep(Duration::from_millis(300));
        }
        json!(n)
    });
    for ordered in [false, true] {
        let started = Instant::now();
        let results: Vec<_> = pool.parallel(&script).ordered(ordered).run(inputs.clone()).collect();
        let took = started.elapsed();
        let indices: HashSet<u64> = results.iter().map(|r| r.index).collect();
        assert_eq!((results.len(), indices.len()), (300, 300));
        assert!(results.iter().all(|r| r.status == Status::Completed && r.result == r.input));
        if ordered {
            assert!(results.iter().enumerate().all(|(i, r)| r.index == i as u64), "out of order");
        }
        // 200 sleepers at throttle 200: one second of waiting, all at once.
        // Queued in chunks behind each other, it took over three minutes.
        assert!(took < Duration::from_secs(10), "ordered {ordered}: took {took:?}");
    }
}

#[test]
fn a_timeout_and_a_stop_hit_only_their_own_item_while_its_neighbours_run_on() {
    let pool = RunspacePool::builder().threads(1).throttle(20).open().unwrap();
    let begin = |code: &str, timeout: Option<u64>| {
        let mut inv = pool.invocation(&Script::new(code).unwrap());
        if let Some(ms) = timeout {
            inv = inv.timeout(Duration::from_millis(ms));
        }
        inv.begin().unwrap()
    };
    let neighbours: Vec<_> = (0..5).map(|_| begin("sleep(0.6) return 'ok'", None)).collect();
    let waiting_timeout = begin("sleep(3600)", Some(200));
    let stopped = begin("sleep(3600)", None);
    std::thread::sleep(Duration::from_millis(100));
    // A computing item holds the VM until its deadline interrupts it.
    let computing_timeout = begin("while true do end", Some(300));
    stopped.stop();
    let r = stopped.end();
    assert_eq!(r.status(), Status::Stopped, "{:?}", r.error());
    let r = waiting_timeout.end();
    assert_eq!(r.status(), Status::TimedOut, "{:?}", r.error());
    let r = computing_timeout.end();
    assert_eq!(r.status(), Status::TimedOut, "{:?}", r.error());
    for n in neighbours {
        let r = n.end();
        assert_eq!((r.status(), r.result()), (Status::Completed, json!("ok")), "{:?}", r.error());
    }
    assert_eq!(pool.open_runspaces(), 1, "all of them shared one VM");
}

#[test]
fn stopping_one_item_of_a_run_does_not_stop_the_others() {
    // A run-wide timeout ends only the items that pass it.
    let pool = RunspacePool::builder().threads(1).throttle(100).open().unwrap();
    let script = Script::new("if _ % 10 == 0 then sleep(3600) end sleep(0.1) return _").unwrap();
    let items: Vec<_> =
        pool.parallel(&script).timeout(Duration::from_millis(500)).run((0..100).map(|n| json!(n))).collect();
    assert_eq!(items.len(), 100);
    for item in items {
        let expected = if item.index % 10 == 0 { Status::TimedOut } else { Status::Completed };
        assert_eq!(item.status, expected, "item {}: {:?}", item.index, item.errors());
    }
}

/// The pid a child wrote to `file`, once it has.
#[cfg(feature = "exec")]
fn pid_in(file: &std::path::Path) -> u32 {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = std::fs::read_to_string(file).ok().and_then(|s| s.trim().parse().ok()) {
            return pid;
        }
        assert!(Instant::now() < until, "the child never wrote its pid");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` is still a process (a zombie counts: it was not reaped).
#[cfg(feature = "exec")]
fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
#[cfg(feature = "exec")]
fn a_stopped_items_exec_child_is_killed_and_reaped_while_a_neighbour_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pid");
    let pool = RunspacePool::builder().threads(1).throttle(4).session(session(&["exec"])).open().unwrap();
    let neighbour = pool.invocation(&Script::new("sleep(0.5) return 'ok'").unwrap()).begin().unwrap();
    let command = format!("echo $$ > '{}'; exec sleep 3600", file.display());
    let code = format!("return exec('sh', {{'-c', {}}})", lit(command));
    let handle = pool.invocation(&Script::new(&code).unwrap()).begin().unwrap();
    let pid = pid_in(&file);
    assert!(alive(pid));
    handle.stop();
    let r = handle.end();
    assert_eq!(r.status(), Status::Stopped, "{:?}", r.error());
    let until = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!alive(pid), "the child {pid} outlived the stop (or was never reaped)");
    let r = neighbour.end();
    assert_eq!((r.status(), r.result()), (Status::Completed, json!("ok")));
}

#[test]
#[cfg(feature = "http")]
fn a_stopped_items_http_request_is_cancelled_while_a_neighbour_runs_on() {
    // A server that accepts and never answers, and reports the hang-up.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hang", listener.local_addr().unwrap());
    let (hung_up, hang_ups) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let hung_up = hung_up.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while matches!(std::io::Read::read(&mut stream, &mut buf), Ok(n) if n > 0) {}
                let _ = hung_up.send(Instant::now());
            });
        }
    });
    let pool = RunspacePool::builder().threads(1).throttle(4).session(session(&["http"])).open().unwrap();
    let neighbour = pool.invocation(&Script::new("sleep(0.5) return 'ok'").unwrap()).begin().unwrap();
    let code = format!("return http.get({}, {{timeout = 3600}})", lit(&url));
    let handle = pool.invocation(&Script::new(&code).unwrap()).begin().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!handle.is_completed());
    let stopped_at = Instant::now();
    handle.stop();
    let r = handle.end();
    assert_eq!(r.status(), Status::Stopped, "{:?}", r.error());
    let closed = hang_ups.recv_timeout(Duration::from_secs(5)).expect("the request's connection stayed open");
    assert!(closed.duration_since(stopped_at) < Duration::from_secs(3));
    let r = neighbour.end();
    assert_eq!((r.status(), r.result()), (Status::Completed, json!("ok")));
}

#[test]
fn cpu_bound_items_run_one_per_runspace_as_before() {
    // throttle <= threads: each runspace runs one item at a time, so two
    // endless items time out side by side and each takes one runspace.
    let pool = RunspacePool::builder().max(2).open().unwrap();
    assert_eq!((pool.threads(), pool.max()), (2, 2));
    let script =
        Script::new("if _ < 2 then while true do end end local s = 0 for i = 1, 1000 do s += i end return s").unwrap();
    let started = Instant::now();
    let items: Vec<_> =
        pool.parallel(&script).timeout(Duration::from_millis(300)).run((0..1000).map(|n| json!(n))).collect();
    assert_eq!(items.len(), 1000);
    for item in &items {
        if item.index < 2 {
            assert_eq!(item.status, Status::TimedOut);
        } else {
            assert_eq!((item.status, &item.result), (Status::Completed, &json!(500500)));
        }
    }
    // Side by side: not 2 × 300 ms one after the other plus the rest.
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(pool.open_runspaces(), 2);
}

/// The most items one VM held at once, per item, at `throttle` on 2 threads.
fn peaks_in_one_vm(throttle: usize) -> Vec<u64> {
    // Module locals are per runspace: the counter sees every item of its VM.
    let session = SessionState::new()
        .module(
            "vm",
            "local inflight, peak = 0, 0
             return {
               enter = function() inflight += 1; peak = math.max(peak, inflight) end,
               leave = function() local p = peak; inflight -= 1; if inflight == 0 then peak = 0 end; return p end,
             }",
        )
        .unwrap();
    let pool = RunspacePool::builder().threads(2).throttle(throttle).session(session).open().unwrap();
    // Each item waits a little, which lets its VM run another item meanwhile
    // if it has one to run.
    let script = Script::new("vm.enter() sleep(0.002) return vm.leave()").unwrap();
    pool.parallel(&script)
        .run((0..200).map(|n| json!(n)))
        .map(|item| {
            assert_eq!(item.status, Status::Completed, "{:?}", item.errors());
            item.result.as_u64().unwrap()
        })
        .collect()
}

#[test]
fn at_a_throttle_up_to_the_threads_each_runspace_runs_one_item_at_a_time() {
    let peaks = peaks_in_one_vm(2);
    assert!(peaks.iter().all(|&p| p == 1), "two items shared a VM at throttle 2 on 2 threads: {peaks:?}");
    // The same measure sees items share a VM once the throttle allows it.
    let peaks = peaks_in_one_vm(8);
    assert!(peaks.iter().any(|&p| p > 1), "the measure cannot see items sharing a VM: {peaks:?}");
}

#[test]
fn a_hundred_thousand_mixed_items_are_neither_lost_nor_duplicated() {
    let pool = RunspacePool::builder().threads(2).throttle(5_000).session(SessionState::new()).open().unwrap();
    let script = Script::new(
        "local kind = _ % 4
         if kind == 0 then sleep(0.001) return _
         elseif kind == 1 then return _ * 2
         elseif kind == 2 then error('no ' .. _)
         else write_error('soft') sleep(0) return -_ end",
    )
    .unwrap();
    let mut seen = vec![false; 100_000];
    let mut count = 0;
    for item in pool.parallel(&script).run((0..100_000u64).map(|n| json!(n))) {
        let n = item.index;
        assert!(!std::mem::replace(&mut seen[n as usize], true), "item {n} came twice");
        assert_eq!(item.input, json!(n));
        let (status, result) = match n % 4 {
            0 => (Status::Completed, json!(n)),
            1 => (Status::Completed, json!(n * 2)),
            2 => (Status::Failed, Value::Null),
            _ => (Status::CompletedWithErrors, json!(-(n as i64))),
        };
        assert_eq!((item.status, &item.result), (status, &result), "item {n}: {:?}", item.errors());
        count += 1;
    }
    assert_eq!(count, 100_000);
    assert!(seen.iter().all(|s| *s));
}

/// A caller that stops reading for a while fills the results channel; the
/// worker whose lanes then wait for room must keep running its other items
/// (here: a sleeping item's timeout), not block its whole event loop in a
/// send until the caller reads again.
#[test]
fn a_caller_that_stops_reading_does_not_stall_the_items_of_a_runspace() {
    let pool = RunspacePool::builder().threads(1).throttle(4).open().unwrap();
    let script = Script::new("if _ == 0 then sleep(3600) end return _").unwrap();
    // Item 0 sleeps past its timeout; the trivial ones after it fill the
    // results channel (a few dozen deliveries) within milliseconds.
    let mut results = pool.parallel(&script).timeout(Duration::from_secs(1)).run((0..20_000).map(|n| json!(n)));
    let first = results.next().expect("a first result");
    std::thread::sleep(Duration::from_secs(4));
    let mut seen = HashSet::from([first.index]);
    let mut slow = None;
    for item in std::iter::once(first).chain(results) {
        seen.insert(item.index);
        if item.index == 0 {
            slow = Some(item);
        }
    }
    assert_eq!(seen.len(), 20_000);
    let slow = slow.expect("item 0 came back");
    assert_eq!(slow.status, Status::TimedOut, "{:?}", slow.errors());
    // Its deadline came 1 s in, while the caller was not reading; a worker
    // blocked on the full channel would only have ended it 4 s in.
    assert!(slow.duration_ms < 3000.0, "item 0 ended after {} ms", slow.duration_ms);
}
