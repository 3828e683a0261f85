//! Luau behaves like Luau: each item runs in a Luau thread (so `pcall`
//! recurses as deep as Luau allows and the top level is yieldable), and
//! `collectgarbage` has Luau's own options.

use std::time::{Duration, Instant};

use runspace::{Runspace, RunspacePool, Script, SessionState, Status};
use serde_json::json;

/// Generous bound for "returns promptly": a hang would take forever, a
/// loaded machine a little longer than usual.
const PROMPT: Duration = Duration::from_secs(5);

fn run(rs: &mut Runspace, code: &str) -> runspace::InvocationResult {
    rs.invoke(&Script::new(code).unwrap(), &[], &[])
}

fn open() -> Runspace {
    Runspace::open(&SessionState::new()).unwrap()
}

/// Recursing through `pcall` 5,000 levels deep: a call from C on the main
/// thread stops at ~200 with "C stack overflow".
#[test]
fn pcall_recurses_as_deep_as_in_luau() {
    let code = "local function f(n) if n == 0 then return 0 end \
                local ok, v = pcall(f, n - 1) if not ok then error(v, 0) end return v + 1 end \
                return f(5000)";
    let r = run(&mut open(), code);
    assert_eq!(r.status(), Status::Completed, "{:?}", r.error());
    assert_eq!(r.output(), &[json!(5000)]);
}

#[test]
fn the_top_level_is_yieldable_and_a_yield_there_fails_the_item() {
    let mut rs = open();
    assert_eq!(run(&mut rs, "return coroutine.isyieldable()").output(), &[json!(true)]);
    for code in ["coroutine.yield(1, 2)", "pcall(coroutine.yield, 1)", "local x = {} coroutine.yield(x)"] {
        let r = run(&mut rs, code);
        assert_eq!(r.status(), Status::Failed, "{code}");
        assert!(r.error().unwrap().contains("cannot yield from the top level of an item"), "{code}: {:?}", r.error());
        // The runspace goes on as before.
        assert_eq!(run(&mut rs, "return 1 + 1").output(), &[json!(2)], "after {code}");
    }
    // Coroutines inside the item work as always.
    let r = run(
        &mut rs,
        "local co = coroutine.wrap(function(a) local b = coroutine.yield(a + 1) return b * 2 end) return co(1), co(5)",
    );
    assert_eq!(r.output(), &[json!(2), json!(10)]);
}

/// A failed item's locals are garbage once it ends: the thread it ran in
/// does not keep them alive, and the collection after a failure frees them.
#[test]
fn a_failed_item_leaves_nothing_alive_in_its_thread() {
    let session = SessionState::new().memory_limit(64 << 20);
    let mut rs = Runspace::open(&session).unwrap();
    for code in [
        "local keep = string.rep('x', 40 * 2^20) error('boom')",
        "local keep = string.rep('x', 40 * 2^20) coroutine.yield()",
    ] {
        assert_eq!(run(&mut rs, code).status(), Status::Failed, "{code}");
        assert!(rs.memory_used() < 8 << 20, "{code}: {} bytes still in use", rs.memory_used());
    }
}

#[test]
fn collectgarbage_collects_and_counts() {
    let mut rs = open();
    let code = "local t = {} for i = 1, 1e5 do t[i] = {i} end \
                local before = collectgarbage('count') t = nil collectgarbage() \
                local after = collectgarbage('count') collectgarbage('collect') \
                return before > after + 1000, type(collectgarbage('count'))";
    let r = run(&mut rs, code);
    assert_eq!(r.status(), Status::Completed, "{:?}", r.error());
    assert_eq!(r.output(), &[json!(true), json!("number")]);
    for option in ["stop", "restart", "step", "isrunning", "setpause", "bogus"] {
        let r = run(&mut rs, &format!("collectgarbage('{option}')"));
        assert_eq!(r.status(), Status::Failed, "{option}");
        assert!(
            r.error().unwrap().contains("collectgarbage must be called with 'count' or 'collect'"),
            "{option}: {:?}",
            r.error()
        );
    }
}

/// The interrupt reaches code running in the item's thread however deep in
/// `pcall`s it is, and no `pcall` swallows the stop.
#[test]
fn timeout_and_stop_end_loops_inside_nested_pcalls() {
    let code = "local function f(n) if n == 0 then while true do end end \
                pcall(f, n - 1) while true do end end f(1000)";
    let pool = RunspacePool::builder().max(1).open().unwrap();
    let started = Instant::now();
    let r = pool.invocation(&Script::new(code).unwrap()).timeout(Duration::from_millis(200)).invoke().unwrap();
    assert_eq!(r.status(), Status::TimedOut, "{:?}", r.error());
    assert!(started.elapsed() < PROMPT);
    assert_eq!(pool.invocation(&Script::new("return 7").unwrap()).invoke().unwrap().output(), &[json!(7)]);

    let mut rs = open();
    let stopper = rs.stopper();
    let stopping = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        stopper.stop();
    });
    let started = Instant::now();
    let r = run(&mut rs, code);
    assert_eq!(r.status(), Status::Stopped, "{:?}", r.error());
    assert!(started.elapsed() < PROMPT);
    stopping.join().unwrap();
}
