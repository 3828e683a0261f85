//! The engine as a library user drives it: sessions, runspaces, pools,
//! invocations, parallel runs, and everything that must never hang.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use runspace::{Input, Runspace, RunspacePool, Script, SessionState, Status};
use serde_json::{json, Value};

/// Generous bound for "returns promptly": a hang would take forever, a
/// loaded machine a little longer than usual.
const PROMPT: Duration = Duration::from_secs(5);

fn pool(max: usize) -> RunspacePool {
    RunspacePool::builder().max(max).open().unwrap()
}

fn script(code: &str) -> Script {
    Script::new(code).unwrap()
}

fn run_once(code: &str) -> runspace::InvocationResult {
    Runspace::open(&SessionState::new()).unwrap().invoke(&script(code), &[], &[])
}

#[test]
fn seed_squares_example_throttle_10() {
    let pool = pool(10);
    let mut results: Vec<_> = pool.parallel(&script("return _ * _")).run((1..=100).map(|n| json!(n))).collect();
    assert_eq!(results.len(), 100);
    results.sort_by_key(|r| r.index);
    for (i, r) in results.iter().enumerate() {
        let n = i as i64 + 1;
        assert_eq!(r.input, json!(n));
        assert_eq!(r.result, json!(n * n));
        assert_eq!(r.status, Status::Completed);
        assert!(r.errors().is_empty());
    }
}

#[test]
fn variables_parameters_and_modules_reach_the_script() {
    let session = SessionState::new()
        .variable("config", json!({"factor": 3, "tags": ["a", "b"]}))
        .unwrap()
        .module("mathx", "local M = {} function M.triple(x) return 3 * x end return M")
        .unwrap();
    let pool = RunspacePool::builder().max(2).session(session).open().unwrap();
    let s =
        script("local m = require('mathx') return mathx.triple(_) + config.factor + offset + #config.tags, m == mathx");
    let r = pool.invocation(&s).arg(json!(2)).param("offset", json!(100)).invoke().unwrap();
    assert_eq!(r.status(), Status::Completed, "{:?}", r.error());
    assert_eq!(r.output(), &[json!(6 + 3 + 100 + 2), json!(true)]);
}

#[test]
fn a_module_that_fails_to_load_is_reported_when_the_pool_opens() {
    let session = SessionState::new().module("broken", "error('cannot start')").unwrap();
    let err = RunspacePool::builder().session(session).open().err().expect("open must fail").to_string();
    assert!(err.contains("module 'broken'") && err.contains("cannot start"), "{err}");
}

#[test]
fn streams_are_captured_and_every_final_state_is_reached() {
    let r = run_once(
        "emit('a') write_warning('w') write_verbose('v') write_debug('d') write_information('i') print('p', 1) \
         write_progress('copy', 50, 'half') write_progress({activity = 'x', percent = 100}) return 'b'",
    );
    assert_eq!(r.status(), Status::Completed);
    assert_eq!(r.output(), &[json!("a"), json!("b")]);
    let s = r.streams();
    assert_eq!(
        (s.warning.as_slice(), s.verbose.as_slice(), s.debug.as_slice()),
        (&["w".to_string()][..], &["v".to_string()][..], &["d".to_string()][..])
    );
    assert_eq!(s.information, vec!["i".to_string(), "p\t1".to_string()]);
    assert_eq!(s.progress.len(), 2);
    assert_eq!(s.progress[0].percent, Some(50.0));
    assert_eq!(s.progress[0].status.as_deref(), Some("half"));

    let r = run_once("write_error('soft') return 1");
    assert_eq!(r.status(), Status::CompletedWithErrors);
    assert_eq!(r.streams().error, vec!["soft".to_string()]);

    let r = run_once("local x = 1\nerror('hard failure')");
    assert_eq!(r.status(), Status::Failed);
    assert_eq!(r.error(), Some("script:2: hard failure"));

    let r = run_once("local t = nil\nreturn t.field");
    assert_eq!(r.status(), Status::Failed);
    assert!(r.error().unwrap().starts_with("script:2:"), "{:?}", r.error());

    let pool = pool(1);
    let r = pool.invocation(&script("while true do end")).timeout(Duration::from_millis(50)).invoke().unwrap();
    assert_eq!(r.status(), Status::TimedOut);

    let handle = pool.invocation(&script("sleep(3600)")).begin().unwrap();
    handle.stop();
    assert_eq!(handle.end().status(), Status::Stopped);
}

#[test]
fn items_never_see_each_others_globals() {
    // One runspace, so both items run in the same VM.
    let pool = pool(1);
    let s = script("local seen = leaked; leaked = _; x = (x or 0) + 1; return {seen = seen, x = x}");
    let mut results: Vec<_> = pool.parallel(&s).ordered(true).run((1..=50).map(|n| json!(n))).collect();
    assert_eq!(pool.open_runspaces(), 1);
    for r in results.drain(..) {
        assert_eq!(r.result, json!({"x": 1}), "item {} saw another item's globals", r.index);
    }
}

/// Items set up straight on the thread's stack (a scalar argument) and
/// through mlua (a table, or text under a memory limit) must look the same,
/// and an item that tampers with its globals must not disturb the next
/// item's set-up, in the same VM.
/// An item started with one plain argument (or none) is resumed straight
/// through Luau's C API, and its single nil, boolean or number result read
/// off its stack; with two arguments it goes through mlua. Every way an
/// item can end must come out the same both ways.
#[test]
fn items_end_alike_whichever_way_their_thread_is_resumed() {
    let endings = [
        "return",
        "return nil",
        "return true",
        "return false",
        "return _ * 3",
        "return 0.1 + 0.2",
        "return -0.0",
        "return 2^53 + 2",
        "return -2^63",
        "return 0/0",
        "return math.huge",
        "return -math.huge",
        "return 'text'",
        "return '\\255 not utf-8'",
        "return 1, 2",
        "return nil, nil",
        "return {1, 2, x = 3}",
        "return print",
        "return vector.create(1, 2, 3)",
        "return buffer.fromstring('ab')",
        "emit(1) return 2",
        "emit(nil) return nil",
        "write_error('soft') return 1",
        "write_warning('w') return true",
        "error('boom')",
        "error('boom', 0)",
        "error({code = 7})",
        "error(setmetatable({}, {__tostring = function() return 'described' end}))",
        "error(setmetatable({}, {__tostring = function() error('worse') end}))",
        "error(nil)",
        "error(42)",
        "local t = {} t.x.y = 1",
        "sleep('soon')",
        "sleep(-1) return 'slept'",
        "sleep(0.001) return 5",
        "coroutine.yield(1)",
        "coroutine.yield()",
        "return coroutine.wrap(function() coroutine.yield(4) end)()",
        "local function f() return f() + 1 end return f()",
        "return string.rep('x', 100)",
    ];
    // A table's text names its address, which differs from item to item.
    let unaddressed = |text: &str| {
        let mut out = String::new();
        let mut rest = text;
        while let Some(at) = rest.find("0x") {
            out.push_str(&rest[..at + 2]);
            rest = rest[at + 2..].trim_start_matches(|c: char| c.is_ascii_hexdigit());
        }
        out + rest
    };
    let ended = |r: &runspace::InvocationResult| {
        let mut streams = r.streams().clone();
        streams.error = streams.error.iter().map(|e| unaddressed(e)).collect();
        (r.status(), r.output().to_vec(), r.error().map(unaddressed), streams)
    };
    let mut rs = Runspace::open(&SessionState::new()).unwrap();
    for code in endings {
        let code = format!("local _ignored = ... {code}");
        let script = script(&code);
        // Twice each, so a context left behind by either way is reused.
        for _ in 0..2 {
            let raw = rs.invoke(&script, &[json!(2)], &[]);
            let none = rs.invoke(&script.clone(), &[], &[]);
            let through_mlua = rs.invoke(&script, &[json!(2), json!("second")], &[]);
            assert_eq!(ended(&raw), ended(&through_mlua), "{code}");
            // Without an argument `_` is nil: only the endings that read it differ.
            if !code.contains("_ * 3") {
                assert_eq!(ended(&none), ended(&through_mlua), "{code} (no argument)");
            }
        }
    }
    // Under a memory limit only an item with no argument is resumed raw;
    // a memory bomb must end the same both ways there too.
    let session = SessionState::new().memory_limit(16 << 20);
    let mut rs = Runspace::open(&session).unwrap();
    let bomb = script("local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 1000) .. i end");
    let raw = rs.invoke(&bomb, &[], &[]);
    let through_mlua = rs.invoke(&bomb, &[json!(1), json!(2)], &[]);
    assert_eq!(raw.status(), Status::Failed);
    assert_eq!(ended(&raw), ended(&through_mlua));
    assert!(raw.error().unwrap().contains("memory limit"), "{:?}", raw.error());
    assert_eq!(rs.invoke(&script("return 1"), &[], &[]).output(), &[json!(1)]);
}

#[test]
fn every_argument_arrives_as_itself_after_items_that_tamper_with_their_globals() {
    let inputs = vec![
        json!(1),
        json!("text"),
        json!(null),
        json!(true),
        json!(2.5),
        json!(9007199254740993u64),
        json!(-9007199254740993i64),
        json!([1, 2]),
        json!({"k": "v"}),
        json!(""),
    ];
    let probe = r#"
        local before = rawget(_G, "leak")
        local me = _
        -- Tamper: freeze (refused), grow, overwrite _G and _ themselves.
        pcall(table.freeze, _G)
        for i = 1, 200 do rawset(_G, "k" .. i, i) end
        rawset(_G, "leak", true)
        local g_was_self = _G._ == me and rawget(_G, "_G") == _G
        rawset(_G, "_G", 5)
        _ = "overwritten"
        return {arg = me, kind = type(me), before = before, g = g_was_self}
    "#;
    for session in [SessionState::new(), SessionState::new().memory_limit(32 << 20)] {
        let pool = RunspacePool::builder().max(1).session(session).open().unwrap();
        // Twice over, so every kind of set-up follows every kind of tampering.
        let twice: Vec<Value> = inputs.iter().chain(inputs.iter()).cloned().collect();
        let results: Vec<_> = pool.parallel(&script(probe)).ordered(true).run(twice.clone()).collect();
        assert_eq!(results.len(), twice.len());
        for (r, input) in results.iter().zip(&twice) {
            assert_eq!(r.status, Status::Completed, "{input}: {:?}", r.errors());
            let expected = match input {
                // Beyond 2^53 integers travel as their digits.
                Value::Number(n)
                    if n.as_i64().is_some_and(|i| i.unsigned_abs() > 1 << 53) || n.is_u64() && n.as_i64().is_none() =>
                {
                    json!(n.to_string())
                }
                other => other.clone(),
            };
            assert_eq!(r.result.get("arg").unwrap_or(&Value::Null), &expected, "{input}");
            assert_eq!(r.result["before"], Value::Null, "{input}: saw the last item's global");
            assert_eq!(r.result["g"], json!(true), "{input}: _G was not the item's own table");
        }
    }
}

#[test]
fn sandbox_escapes_are_refused() {
    let session = SessionState::new().variable("shared", json!({"list": [1, 2]})).unwrap();
    let mut rs = Runspace::open(&session).unwrap();
    let attempts = [
        ("io", "return io.open('/etc/passwd')"),
        ("os", "return os.execute('true')"),
        ("debug", "return debug.getinfo(1)"),
        ("loadstring", "return loadstring('return 1')()"),
        ("load", "return load('return 1')()"),
        ("require of a file", "return require('/etc/passwd')"),
        ("getfenv", "return getfenv(0)"),
        ("setfenv", "setfenv(1, {})"),
        ("dofile", "return dofile('/etc/passwd')"),
        ("library write", "string.upper = function() return 'pwned' end"),
        ("string metatable", "getmetatable('').__index.upper = nil"),
        ("_G metatable", "setmetatable(_G, nil)"),
        ("library write through _G", "_G.string.upper = nil"),
        ("rawset on a library", "rawset(math, 'pi', 3)"),
        ("session variable write", "shared.list[1] = 99"),
        ("session variable rawset", "rawset(shared, 'new', 1)"),
    ];
    for (what, code) in attempts {
        let r = rs.invoke(&script(code), &[], &[]);
        assert_eq!(r.status(), Status::Failed, "{what} was not refused: {:?}", r.output());
    }
    // And nothing was changed for the next script.
    let r = rs.invoke(&script("return string.upper('ok'), math.pi > 3.14, shared.list[1], shared.new"), &[], &[]);
    assert_eq!(r.output(), &[json!("OK"), json!(true), json!(1), json!(null)]);
}

#[test]
fn endless_loops_and_long_sleeps_end_promptly_by_timeout() {
    let pool = pool(2);
    let started = Instant::now();
    let results: Vec<_> = pool
        .parallel(&script("if _ == 1 then while true do end else sleep(3600) end"))
        .timeout(Duration::from_millis(100))
        .run(vec![json!(1), json!(2)])
        .collect();
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|r| r.status == Status::TimedOut), "{results:?}");
}

#[test]
fn stop_ends_endless_loops_and_sleeps_and_pcall_cannot_swallow_it() {
    let pool = pool(3);
    let codes = [
        "while true do end",
        "sleep(3600)",
        "while true do pcall(function() while true do end end) end",
        "while true do pcall(sleep, 3600) end",
    ];
    for code in codes {
        let handle = pool.invocation(&script(code)).begin().unwrap();
        assert!(!handle.wait(Duration::from_millis(30)), "{code} ended by itself");
        let started = Instant::now();
        handle.stop();
        assert!(handle.wait(PROMPT), "{code} did not stop");
        assert!(started.elapsed() < PROMPT);
        assert_eq!(handle.end().status(), Status::Stopped, "{code}");
    }
    // The runspaces are usable afterwards.
    let r = pool.invocation(&script("return 42")).invoke().unwrap();
    assert_eq!(r.result(), json!(42));
}

#[test]
fn a_stopped_run_reports_running_items_as_stopped_and_returns() {
    let pool = pool(4);
    let mut results = pool.parallel(&script("sleep(3600)")).run((0..1000).map(|n| json!(n)));
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    results.control().stop();
    let stopped: Vec<_> = results.by_ref().collect();
    assert!(started.elapsed() < PROMPT);
    assert!(!stopped.is_empty() && stopped.len() <= 8, "{} results", stopped.len());
    assert!(stopped.iter().all(|r| r.status == Status::Stopped));
}

#[test]
fn a_memory_bomb_fails_only_its_own_item() {
    let session = SessionState::new().memory_limit(32 << 20);
    let pool = RunspacePool::builder().max(2).session(session).open().unwrap();
    let bomb = "if _ == 3 then local t = {} local s = 'x' for i = 1, 1e9 do s = s .. s t[i] = s end end return _";
    let mut results: Vec<_> = pool.parallel(&script(bomb)).run((1..=6).map(|n| json!(n))).collect();
    results.sort_by_key(|r| r.index);
    for r in &results {
        if r.input == json!(3) {
            assert_eq!(r.status, Status::Failed);
            assert!(r.errors()[0].contains("memory limit of 32 MB exceeded"), "{:?}", r.errors());
        } else {
            assert_eq!(r.status, Status::Completed, "{r:?}");
        }
    }
    // The runspace that hit the limit still works.
    let more: Vec<_> = pool.parallel(&script("return #string.rep('y', 1000)")).run((0..4).map(|n| json!(n))).collect();
    assert!(more.iter().all(|r| r.result == json!(1000)));
}

#[test]
fn syntax_errors_name_the_line_before_anything_runs() {
    let err = Script::named("job.luau", "local a = 1\nlocal b = (\n").unwrap_err().to_string();
    assert!(err.contains("job.luau") && err.contains("line 3"), "{err}");
}

#[test]
fn invalid_inputs_fail_their_item_only() {
    let pool = pool(2);
    let inputs = vec![
        Input::Value(json!(1)),
        Input::Invalid { text: "{nope".into(), error: "malformed JSON: key must be a string".into() },
        Input::Value(json!(3)),
    ];
    let mut results: Vec<_> = pool.parallel(&script("return _")).run(inputs).collect();
    results.sort_by_key(|r| r.index);
    assert_eq!(results[0].status, Status::Completed);
    assert_eq!(results[1].status, Status::Failed);
    assert_eq!(results[1].input, json!("{nope"));
    assert!(results[1].errors()[0].contains("malformed JSON"));
    assert_eq!(results[2].result, json!(3));
}

#[test]
fn ordered_results_come_in_input_order() {
    let pool = pool(8);
    // Later items finish first: unordered output would be reversed-ish.
    let s = script("sleep((200 - _) / 20000) return _");
    let indices: Vec<u64> = pool.parallel(&s).ordered(true).run((0..200).map(|n| json!(n))).map(|r| r.index).collect();
    assert_eq!(indices, (0..200).collect::<Vec<_>>());
}

#[test]
fn no_result_is_lost_or_duplicated_over_100_000_items() {
    let pool = pool(4);
    let mut seen = HashSet::new();
    let mut n = 0;
    let results = pool.parallel(&script("return _ + 1")).run((0..100_000).map(|n| json!(n)));
    for r in results {
        assert_eq!(r.result, json!(r.input.as_i64().unwrap() + 1));
        assert!(seen.insert(r.index), "index {} twice", r.index);
        n += 1;
    }
    assert_eq!(n, 100_000);
    assert_eq!(seen.len(), 100_000);
}

#[test]
fn memory_is_bounded_by_the_window_not_the_input() {
    let pool = pool(2);
    let mut results = pool.parallel(&script("return _")).ordered(true).window(1000).run((0..200_000).map(|n| json!(n)));
    let count = results.by_ref().count();
    assert_eq!(count, 200_000);
    assert!(results.peak_in_memory() <= 1000 + 256, "peak {}", results.peak_in_memory());
    let mut unordered = pool.parallel(&script("return _")).run((0..200_000).map(|n| json!(n)));
    assert_eq!(unordered.by_ref().count(), 200_000);
    assert!(unordered.peak_in_memory() < 20_000, "peak {}", unordered.peak_in_memory());
}

#[test]
fn the_pool_grows_from_min_to_max_on_demand() {
    let pool = RunspacePool::builder().min(1).max(4).open().unwrap();
    assert_eq!(pool.open_runspaces(), 1);
    let handles: Vec<_> = (0..4).map(|_| pool.invocation(&script("sleep(0.2)")).begin().unwrap()).collect();
    for h in handles {
        assert_eq!(h.end().status(), Status::Completed);
    }
    assert_eq!(pool.open_runspaces(), 4);
}

fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().find_map(|l| l.strip_prefix("Threads:")).unwrap().trim().parse().unwrap()
}

#[test]
fn dropping_a_busy_pool_stops_everything_and_joins_every_thread() {
    // Other tests run in parallel threads of this process: compare with a
    // margin large enough for them but far below the 16 workers created.
    let before = threads();
    let pool = RunspacePool::builder().min(16).max(16).open().unwrap();
    let handles: Vec<_> = (0..16).map(|_| pool.invocation(&script("while true do end")).begin().unwrap()).collect();
    let queued = pool.invocation(&script("return 1")).begin().unwrap();
    let started = Instant::now();
    drop(pool);
    assert!(started.elapsed() < PROMPT);
    for h in handles {
        assert_eq!(h.end().status(), Status::Stopped);
    }
    assert!(matches!(queued.end().status(), Status::Stopped | Status::Completed));
    assert!(threads() < before + 8, "threads before {before}, after {}", threads());
}

#[test]
fn json_helpers_round_trip_and_big_integers_survive() {
    let r = run_once("local t = json.decode('{\"a\":[1,2,null],\"b\":\"x\"}') return json.encode(t.a), t.b, #t.a");
    assert_eq!(r.output(), &[json!("[1,2,null]"), json!("x"), json!(3)]);
    let mut rs = Runspace::open(&SessionState::new()).unwrap();
    let r = rs.invoke(&script("return _"), &[json!(12345678901234567890u64)], &[]);
    assert_eq!(r.result(), Value::String("12345678901234567890".into()));
    let r = run_once("local t0 = now() sleep(0.01) return now() - t0 >= 0.009");
    assert_eq!(r.result(), json!(true));
}

#[test]
fn fast_results_are_not_held_back_by_a_slow_item_in_the_same_chunk() {
    // One runspace: fast items make chunks grow, so item 500 shares a chunk
    // with fast items before it, and sleeps for an hour.
    let pool = pool(1);
    let mut results =
        pool.parallel(&script("if _ == 500 then sleep(3600) end return _")).run((0..1000).map(|n| json!(n)));
    // Loose: the failure this catches holds results back for the hour of
    // item 500's sleep, and 500 trivial items can take seconds under load.
    let deadline = Instant::now() + 6 * PROMPT;
    let mut got = HashSet::new();
    while got.len() < 500 && Instant::now() < deadline {
        if let runspace::Next::Item(item) = results.next_timeout(Duration::from_millis(50)) {
            got.insert(item.index);
        }
    }
    assert_eq!(got.len(), 500, "only {} of the 500 finished items arrived", got.len());
    assert!(got.iter().all(|&i| i < 500));
    results.control().stop();
    assert!(results.any(|r| r.status == Status::Stopped));
}

/// Lending results (`next_ref_timeout`) and taking them (`next_timeout`,
/// `next`) may be mixed: every item comes out once, ordered runs in order.
#[test]
fn lent_and_taken_results_each_come_out_once() {
    use runspace::Next;
    let pool = pool(2);
    for ordered in [false, true] {
        let mut results = pool.parallel(&script("return _ * 2")).ordered(ordered).run((0..20_000).map(|n| json!(n)));
        let mut seen = Vec::new();
        let mut turn = 0u32;
        loop {
            turn += 1;
            let index = match turn % 3 {
                0 => match results.next_timeout(PROMPT) {
                    Next::Item(item) => item.index,
                    Next::Idle => panic!("no result within {PROMPT:?}"),
                    Next::Done => break,
                },
                1 => match results.next_ref_timeout(PROMPT) {
                    Next::Item(item) => {
                        assert_eq!(item.result, json!(item.index * 2));
                        item.index
                    }
                    Next::Idle => panic!("no result within {PROMPT:?}"),
                    Next::Done => break,
                },
                _ => match results.next() {
                    Some(item) => item.index,
                    None => break,
                },
            };
            seen.push(index);
        }
        if ordered {
            assert_eq!(seen, (0..20_000).collect::<Vec<u64>>());
        } else {
            seen.sort_unstable();
            assert_eq!(seen, (0..20_000).collect::<Vec<u64>>(), "lost or repeated results");
        }
    }
}
