//! Every bound holds, whatever the script does: library calls that used to
//! run past a timeout, memory that is garbage, output without end, endless
//! modules, closing while inputs block. Bounds here are loose hang-catchers;
//! the precise latencies are measured by `bench/limits.sh`.

use std::time::{Duration, Instant};

use runspace::{Runspace, RunspacePool, Script, SessionState, Status};
use serde_json::json;

/// A timeout of 1 s must end the item well before this.
const HANG: Duration = Duration::from_secs(5);

fn limited() -> SessionState {
    SessionState::new().memory_limit(64 << 20).timeout(Duration::from_secs(1))
}

/// Runs `code` once under a 64 MB limit and a 1 s timeout; returns the
/// status, the error and the wall time.
fn run_limited(code: &str) -> (Status, Option<String>, Duration) {
    let pool = RunspacePool::builder().max(1).session(limited()).open().unwrap();
    let started = Instant::now();
    let r = pool.invocation(&Script::new(code).unwrap()).invoke().unwrap();
    (r.status(), r.error().map(str::to_string), started.elapsed())
}

fn assert_times_out(code: &str) {
    let (status, error, took) = run_limited(code);
    assert_eq!(status, Status::TimedOut, "{code}: {error:?}");
    assert!(took < HANG, "{code} took {took:?}");
}

#[test]
fn plain_find_is_linear() {
    // Quadratic, each search took 20 s; linear, all of them take well
    // under a second (the bound is loose for loaded machines).
    let mut rs = Runspace::open(&SessionState::new().memory_limit(64 << 20)).unwrap();
    let script = Script::new(
        r#"local s = string.rep("a", 2^24) local p = string.rep("a", 2^16) .. "b"
           for i = 1, 4 do assert(string.find(s, p, 1, true) == nil) assert(s:find(p) == nil) end
           return true"#,
    )
    .unwrap();
    let started = Instant::now();
    let r = rs.invoke(&script, &[], &[]);
    assert_eq!((r.status(), r.error()), (Status::Completed, None));
    assert!(started.elapsed() < HANG * 2, "took {:?}", started.elapsed());
    assert_times_out(
        r#"local s = string.rep("a", 2^24) local p = string.rep("a", 2^16) .. "b"
           while true do string.find(s, p, 1, true) end"#,
    );
}

#[test]
fn split_is_linear() {
    assert_times_out(
        r#"local s = string.rep("a", 2^24) local p = string.rep("a", 2^16) .. "b"
           while true do string.split(s, p) end"#,
    );
}

#[test]
fn table_move_over_a_huge_empty_range_ends() {
    assert_times_out("while true do table.move({}, -1073741824, 1073741822, -5, {}) end");
    let (status, _, took) = run_limited("return table.move({1, 2}, -1073741824, 1073741822, -5, {})");
    assert!(matches!(status, Status::Completed | Status::Failed), "{status:?}");
    assert!(took < HANG, "took {took:?}");
}

#[test]
fn find_and_split_keep_luau_semantics() {
    let script = Script::new(
        r#"
        local function same(a, b)
            if #a ~= #b then return false end
            for i = 1, #a do if a[i] ~= b[i] then return false end end
            return true
        end
        local function f(...) return { string.find(...) } end
        assert(same(f("hello world", "o"), {5, 5}))
        assert(same(f("hello world", "o", 6), {8, 8}))
        assert(same(f("hello", "l", -2), {4, 4}))
        assert(same(f("hello", "l", -100), {3, 3}))
        assert(same(f("hello", "", 6), {6, 5}))
        assert(same(f("hello", "", 7), {}))
        assert(same(f("hello", "xyz"), {}))
        assert(same(f("a.b", ".", 1, true), {2, 2}))
        assert(same(f("a.b", "%."), {2, 2}))
        assert(same(f("a.b", "(b)"), {3, 3, "b"}))
        assert(same(f(12345, 34), {3, 4}))
        assert(same(f("a\0b", "\0b"), {2, 3}))
        assert(same({("x-y"):find("-", 1, true)}, {2, 2}))
        assert(not pcall(string.find, "x"))
        assert(same(string.split("a,b,,c"), {"a", "b", "", "c"}))
        assert(same(string.split("a--b----c", "--"), {"a", "b", "", "c"}))
        assert(same(string.split("", "--"), {""}))
        assert(same(string.split("abc", "abcd"), {"abc"}))
        assert(same(string.split("--", "--"), {"", ""}))
        assert(same(string.split("a b", " "), {"a", "b"}))
        assert(same(string.split("abc", ""), {"a", "b", "c"}))
        assert(same(("x::y"):split("::"), {"x", "y"}))
        assert(not pcall(string.split))
        return true
        "#,
    )
    .unwrap();
    let mut rs = Runspace::open(&SessionState::new()).unwrap();
    let r = rs.invoke(&script, &[], &[]);
    assert_eq!((r.status(), r.error()), (Status::Completed, None));
    assert_eq!(r.output(), &[json!(true)]);
}

#[test]
fn garbage_is_collected_before_memory_is_refused() {
    let session = SessionState::new().memory_limit(64 << 20);
    let mut rs = Runspace::open(&session).unwrap();
    let churn = Script::new(r#"local s = string.rep("a", 2^23) for i = 1, 300 do local _ = s:upper() end return true"#)
        .unwrap();
    let r = rs.invoke(&churn, &[], &[]);
    assert_eq!((r.status(), r.error()), (Status::Completed, None));

    // A real bomb still fails with the limit's message, and the runspace
    // goes on working (and collecting) afterwards.
    let bomb = Script::new("local t = {} for i = 1, 1e9 do t[i] = {i} end").unwrap();
    let r = rs.invoke(&bomb, &[], &[]);
    assert_eq!(r.status(), Status::Failed);
    assert_eq!(r.error(), Some("memory limit of 64 MB exceeded"));
    let r = rs.invoke(&churn, &[], &[]);
    assert_eq!((r.status(), r.error()), (Status::Completed, None));
}

#[test]
fn an_endless_module_fails_the_open_in_time() {
    let session =
        SessionState::new().module("spin", "while true do end return {}").unwrap().timeout(Duration::from_secs(1));
    let started = Instant::now();
    let error = RunspacePool::builder().max(2).session(session.clone()).open().err().expect("the open must fail");
    assert!(started.elapsed() < HANG, "took {:?}", started.elapsed());
    assert_eq!(error.to_string(), "module 'spin' failed to load: did not finish loading within 1s");
    let error = Runspace::open(&session).err().expect("the open must fail");
    assert!(error.to_string().contains("module 'spin'"), "{error}");
    // A pcall inside the module cannot swallow the timeout.
    let sneaky =
        SessionState::new().module("sneaky", "while true do pcall(function() while true do end end) end").unwrap();
    let started = Instant::now();
    let error = Runspace::open(&sneaky.timeout(Duration::from_millis(200))).err().expect("the open must fail");
    assert!(started.elapsed() < HANG && error.to_string().contains("module 'sneaky'"), "{error}");
}

/// `table.sort` with a C comparator never reaches an interrupt: seconds in
/// one C call for 4 M elements. The watchdog's case. Filling the table is
/// ordinary (interruptible) Luau and takes well under the 2 s the tests
/// wait before they time out or stop the item.
const STUCK_IN_C: &str =
    "local t = table.create(2^22, 1) for i = 1, #t do t[i] = i end table.sort(t, rawequal) return 'sorted'";

#[test]
fn the_watchdog_abandons_a_runspace_stuck_in_c_and_the_throttle_holds() {
    let pool = RunspacePool::builder().max(2).open().unwrap();
    let script = Script::new(&format!("if _ == 0 then {STUCK_IN_C} end sleep(0.01) return _")).unwrap();
    let started = Instant::now();
    let mut results = pool.parallel(&script).timeout(Duration::from_secs(2)).run((0..40).map(|n| json!(n)));
    let mut seen = Vec::new();
    for item in results.by_ref() {
        // A replacement takes the abandoned worker's place; no more.
        assert!(pool.open_runspaces() <= 2, "{} runspaces", pool.open_runspaces());
        seen.push(item);
    }
    assert!(started.elapsed() < Duration::from_secs(2) + HANG, "took {:?}", started.elapsed());
    assert_eq!(seen.len(), 40);
    let stuck = seen.iter().find(|r| r.index == 0).unwrap();
    assert_eq!(stuck.status, Status::TimedOut);
    assert_eq!(stuck.input, json!(0));
    assert!(stuck.errors()[0].contains("runspace was replaced"), "{:?}", stuck.errors());
    assert!(seen.iter().filter(|r| r.index != 0).all(|r| r.status == Status::Completed && r.result == json!(r.index)));
    assert!(pool.abandoned_runspaces() <= 1);
    assert_eq!(pool.open_runspaces(), 2);
}

#[test]
fn the_items_sharing_a_stuck_runspace_start_again_on_a_fresh_one() {
    // One runspace: the stuck item blocks every item waiting beside it.
    let pool = RunspacePool::builder().threads(1).throttle(50).open().unwrap();
    let waiting = Script::new("sleep(0.3) return 'ok'").unwrap();
    let neighbours: Vec<_> = (0..10).map(|_| pool.invocation(&waiting).begin().unwrap()).collect();
    let stuck_script = Script::new(&format!("sleep(0.05) {STUCK_IN_C}")).unwrap();
    let started = Instant::now();
    let stuck = pool.invocation(&stuck_script).timeout(Duration::from_millis(500)).begin().unwrap();
    let r = stuck.end();
    assert!(started.elapsed() < Duration::from_millis(500) + HANG, "took {:?}", started.elapsed());
    assert_eq!(r.status(), Status::TimedOut, "{:?}", r.error());
    // Its neighbours were waiting in the abandoned VM: they run again, from
    // the start, on the fresh one, and each ends once.
    for n in neighbours {
        assert!(n.wait(HANG), "a neighbour of the stuck item never ended");
        let r = n.end();
        assert_eq!((r.status(), r.result()), (Status::Completed, json!("ok")), "{:?}", r.error());
    }
    assert_eq!(pool.open_runspaces(), 1);
}

#[test]
fn a_stop_reaches_an_invocation_stuck_in_c() {
    let pool = RunspacePool::builder().max(1).open().unwrap();
    let handle = pool.invocation(&Script::new(STUCK_IN_C).unwrap()).begin().unwrap();
    assert!(!handle.wait(Duration::from_secs(2)));
    let started = Instant::now();
    handle.stop();
    let r = handle.end();
    assert!(started.elapsed() < HANG, "took {:?}", started.elapsed());
    assert_eq!(r.status(), Status::Stopped);
    assert!(r.error().unwrap().contains("runspace was replaced"), "{:?}", r.error());
    // The pool goes on with a fresh runspace, and closes at once.
    let r = pool.invocation(&Script::new("return 1").unwrap()).invoke().unwrap();
    assert_eq!(r.result(), json!(1));
    let started = Instant::now();
    pool.close();
    assert!(started.elapsed() < HANG);
}

#[test]
fn output_is_capped_per_item() {
    let session = SessionState::new().max_output(1 << 20);
    let mut rs = Runspace::open(&session).unwrap();
    for code in [
        "while true do print(string.rep('x', 1000)) end",
        "while true do emit({ n = 1, s = string.rep('x', 100) }) end",
        "while true do write_warning('careful') end",
        "while true do write_progress('step', 50) end",
        // Catching the error gets nothing more through, and fails anyway.
        "for i = 1, 3000 do pcall(print, string.rep('x', 1000)) end return 'done'",
        "return string.rep('x', 2^21)",
    ] {
        let r = rs.invoke(&Script::new(code).unwrap(), &[], &[]);
        assert_eq!(r.status(), Status::Failed, "{code}");
        assert!(r.error().unwrap().ends_with("output limit of 1 MB exceeded"), "{code}: {:?}", r.error());
        // What ran away is dropped; the record keeps only the error.
        assert!(r.output().is_empty(), "{code}");
        assert_eq!(r.streams().error.len(), 1, "{code}");
        assert!(r.streams().information.is_empty() && r.streams().warning.is_empty(), "{code}");
        // The next item starts with the whole budget again.
        let ok = rs.invoke(&Script::new("print(string.rep('y', 2^19)) return 1").unwrap(), &[], &[]);
        assert_eq!((ok.status(), ok.output()), (Status::Completed, &[json!(1)][..]), "after {code}");
    }
    assert_eq!(SessionState::new().max_output_bytes(), 16 << 20);
}

#[test]
fn g_is_the_items_writable_environment() {
    let mut rs = Runspace::open(&SessionState::new().variable("limit", json!(3)).unwrap()).unwrap();
    let script = Script::new(
        r#"
        assert(_G.foo == nil and foo == nil, "a global leaked from the last item")
        _G.foo = 1
        assert(foo == 1)
        bar = 2
        assert(_G.bar == 2)
        for i = 1, limit do _G[i] = i * 10 end
        assert(_G.string == string and _G.limit == 3 and _G._G == _G)
        local keys = 0
        for k, v in pairs(_G) do keys += 1 end
        assert(keys >= 5)
        assert(not pcall(setmetatable, _G, nil))
        assert(not pcall(function() _G.string.x = 1 end))
        return _G[2], _G._ 
        "#,
    )
    .unwrap();
    for n in 0..3 {
        let r = rs.invoke(&script, &[json!(n)], &[]);
        assert_eq!((r.status(), r.error()), (Status::Completed, None), "item {n}");
        assert_eq!(r.output(), &[json!(20), json!(n)]);
    }
}
