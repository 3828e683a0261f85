//! `exec`, `proc` and `env`: grants, refusals, timeouts and stops that kill the child.

mod host_common;

use std::time::{Duration, Instant};

use host_common::{err, ok, refused, session};
use runspace::{RunspacePool, Script, Status};
use serde_json::json;

#[test]
fn exec_proc_and_env_are_refused_without_their_grants() {
    refused(&[], "return exec('true')", "exec");
    refused(&["proc", "env"], "return exec.run('true')", "exec");
    refused(&["exec"], "return proc.list()", "proc");
    refused(&["exec"], "return env.get('HOME')", "env");
    refused(&[], "return env.vars()", "env");
}

#[test]
fn exec_runs_a_program_without_a_shell() {
    let r = ok(&["exec"], "local r = exec('echo', {'a  b', '$HOME', 42}) return r.code, r.stdout, r.ok, r.timed_out");
    assert_eq!(r, json!([0, "a  b $HOME 42\n", true, false]));
    let r = ok(
        &["exec"],
        "local r = exec('sh', {'-c', 'echo out; echo err >&2; exit 3'}) return r.code, r.stdout, r.stderr, r.ok",
    );
    assert_eq!(r, json!([3, "out\n", "err\n", false]));
    let r = ok(&["exec"], "return exec('cat', nil, {stdin = 'fed in'}).stdout");
    assert_eq!(r, json!("fed in"));
    let r = ok(&["exec"], "return exec('echo $0-$1', {'x'}, {shell = true}).stdout");
    assert_eq!(r, json!("sh-x\n"));
    let r = ok(&["exec"], "return exec.run('pwd', {}, {cwd = '/'}).stdout");
    assert_eq!(r, json!("/\n"));
    let r = ok(&["exec"], "return exec('sh', {'-c', 'echo $RSP_TEST'}, {env = {RSP_TEST = 'yes'}}).stdout");
    assert_eq!(r, json!("yes\n"));
    let e = err(&["exec"], "return exec('definitely-not-a-program-here')");
    assert!(e.contains("definitely-not-a-program-here"), "{e}");
    let e = err(&["exec"], "return exec('echo', {'x'}, {shel = true})");
    assert!(e.contains("unknown field `shel`"), "{e}");
}

#[test]
fn exec_timeout_kills_a_sleeping_child() {
    let started = Instant::now();
    let r =
        ok(&["exec"], "local r = exec('sleep', {'60'}, {timeout = 0.3}) return r.timed_out, r.code, r.signal, r.ok");
    assert_eq!(r, json!([true, null, 9, false]));
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());

    // With a shell, its children are killed too, so their pipe does not keep us waiting.
    let started = Instant::now();
    let r = ok(&["exec"], "return exec('sleep 60; echo never', nil, {shell = true, timeout = 0.3}).timed_out");
    assert_eq!(r, json!(true));
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

/// The pids of running `sleep <arg>` processes.
fn sleepers(arg: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let zombie = std::fs::read_to_string(entry.path().join("stat")).is_ok_and(|s| s.contains(") Z"));
        if args.len() >= 2 && args[0].ends_with(b"sleep") && args[1] == arg.as_bytes() && !zombie {
            pids.push(pid);
        }
    }
    pids
}

/// Whether the `sleep` children carrying `arg` are gone within a few
/// seconds. The kill is sent when the stopped call is dropped, which the
/// worker's loop may do a moment after the item's result is out, and a
/// killed process lingers until the signal lands; the child itself sleeps
/// for a minute, so a missed kill still fails.
fn gone_soon(arg: &str) -> bool {
    let until = Instant::now() + Duration::from_secs(5);
    while !sleepers(arg).is_empty() {
        if Instant::now() > until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

#[test]
fn stop_during_exec_kills_the_child_and_returns_promptly() {
    // A distinctive duration, so the test finds its own child.
    let marker = "61.2345";
    let pool = RunspacePool::builder().max(1).session(session(&["exec"])).open().unwrap();
    let script = Script::new(&format!("return exec('sleep', {{'{marker}'}})")).unwrap();
    let handle = pool.invocation(&script).begin().unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while sleepers(marker).is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!sleepers(marker).is_empty(), "the child did not start");
    let stopped_at = Instant::now();
    handle.stop();
    let r = handle.end();
    assert_eq!(r.status(), Status::Stopped, "{:?}", r.error());
    assert!(stopped_at.elapsed() < Duration::from_secs(8), "end() took {:?}", stopped_at.elapsed());
    assert!(gone_soon(marker), "the child outlived the stop");
}

#[test]
fn item_timeout_during_exec_is_timed_out_and_kills_the_child() {
    let marker = "62.3456";
    let pool = RunspacePool::builder().max(1).session(session(&["exec"])).open().unwrap();
    let script = Script::new(&format!("return exec('sleep', {{'{marker}'}})")).unwrap();
    let started = Instant::now();
    let r = pool.invocation(&script).timeout(Duration::from_millis(300)).invoke().unwrap();
    assert_eq!(r.status(), Status::TimedOut, "{:?}", r.error());
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(gone_soon(marker), "the child outlived the timeout");
}

#[test]
fn proc_lists_processes_including_this_one() {
    let me = std::process::id();
    let code = format!(
        "for _, p in proc.list() do if p.pid == {me} then
            return p.name ~= '', p.memory_bytes > 0, p.cpu_seconds >= 0, type(p.command) end end"
    );
    assert_eq!(ok(&["proc"], &code), json!([true, true, true, "string"]));
    // Get-Process | Where-Object CPU -gt N, the shape the examples use.
    let code = "local busy = {} for _, p in proc.list() do if p.cpu_seconds >= 0 then table.insert(busy, p.name) end end return #busy > 0";
    assert_eq!(ok(&["proc"], code), json!(true));
}

#[test]
fn env_reads_variables() {
    // PATH is set for every test run; a name nobody sets reads as nil.
    let path = std::env::var("PATH").unwrap();
    assert_eq!(ok(&["env"], "return env.get('PATH')"), json!(path));
    assert_eq!(ok(&["env"], "return env.get('RSP_SURELY_UNSET_VARIABLE')"), json!(null));
    assert_eq!(ok(&["env"], "return env.vars().PATH"), json!(path));
}

#[test]
fn exec_metatable_is_locked() {
    let e = err(&["exec"], "setmetatable(exec, nil)");
    assert!(!e.is_empty());
    assert_eq!(ok(&["exec"], "return getmetatable(exec)"), json!(false));
}

#[test]
fn exec_reads_both_pipes_at_once_and_caps_what_it_keeps() {
    // 2 MB on each stream at once: reading one pipe only would deadlock the child.
    let r = ok(
        &["exec"],
        "local r = exec('sh', {'-c', 'head -c 2000000 /dev/zero & head -c 2000000 /dev/zero >&2; wait'}) \
         return #r.stdout, #r.stderr, r.code",
    );
    assert_eq!(r, json!([2_000_000, 2_000_000, 0]));
    // Past max_output the rest is read and dropped: the child still ends normally.
    let r = ok(
        &["exec"],
        "local r = exec('head', {'-c', '5000000', '/dev/zero'}, {max_output = 1000}) return #r.stdout, r.code",
    );
    assert_eq!(r, json!([1000, 0]));
}

#[test]
fn exec_returns_when_a_detached_grandchild_keeps_the_pipe_open() {
    // setsid puts the sleep outside the child's process group, holding stdout open.
    let started = Instant::now();
    let r = ok(
        &["exec"],
        "local r = exec('sh', {'-c', 'echo early; setsid sleep 31.4159 & exit 0'}) return r.stdout, r.code",
    );
    assert_eq!(r, json!(["early\n", 0]));
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    for pid in sleepers("31.4159") {
        // SAFETY: plain kill(2) of the sleep this test started (its odd duration is the mark).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

/// With the `live` option, each line reaches the session's handler while
/// the command runs: the command waits for a file the handler creates only
/// when it has seen the first line, so a handler called at the end would
/// leave it waiting until its timeout. The result keeps the whole output.
#[test]
fn live_lines_reach_the_handler_while_the_command_runs() {
    use runspace::{Capability, LineEnd, LineStream, LiveOutput, SessionState};
    use std::sync::{Arc, Mutex};
    let dir = std::env::temp_dir().join(format!("rsp-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let go = dir.join("go");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (lines, touch) = (seen.clone(), go.clone());
    let live = LiveOutput::new(move |line| {
        let text = String::from_utf8_lossy(line.text).into_owned();
        if text == "first" {
            std::fs::write(&touch, "").unwrap();
        }
        lines.lock().unwrap().push((line.name.clone(), line.stream, text, line.end));
    });
    let session = SessionState::new().allow(Capability::Exec).live_output(live);
    let pool = RunspacePool::builder().max(1).session(session).open().unwrap();
    let script = Script::new(
        "local r = exec('sh', {'-c', 'echo first; echo oops >&2; while [ ! -e \"$0\" ]; do sleep 0.01; done; \
         printf \"last\"', _}, {live = {n = 7}, timeout = 30}) return r.timed_out, r.stdout, r.stderr",
    )
    .unwrap();
    let item = pool.parallel(&script).run(vec![json!(go.to_str().unwrap())]).next().unwrap();
    assert_eq!(item.result, json!([false, "first\nlast", "oops\n"]), "{item:?}");
    let seen = seen.lock().unwrap();
    let name = json!({"n": 7});
    assert!(seen.contains(&(name.clone(), LineStream::Stdout, "first".into(), LineEnd::Newline)), "{seen:?}");
    assert!(seen.contains(&(name.clone(), LineStream::Stderr, "oops".into(), LineEnd::Newline)), "{seen:?}");
    assert_eq!(seen.last().unwrap(), &(name, LineStream::Stdout, "last".into(), LineEnd::End));
    let _ = std::fs::remove_dir_all(&dir);
}
