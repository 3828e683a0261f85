//! The caller's context and pueue's everyday verbs, through the real `rsp`:
//! a job runs in its submitter's directory and environment, never the
//! server's; follow, restart, rerun-failed, clean, serve stop, wait --all's
//! exit codes, JSON Lines output, the body limit, and JSON errors.

mod jobs_common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use jobs_common::{call, rsp_with, KillServerOf, Server, RSP};
use serde_json::{json, Value};

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// `rsp ARGS` run from `cwd` against the state directory `state`.
fn rsp_in(cwd: &Path, state: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    rsp_with(args, |c| {
        c.current_dir(cwd).env("RSP_STATE_DIR", state);
        for (k, v) in env {
            c.env(k, v);
        }
    })
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn err(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn lines(out: &Output) -> Vec<Value> {
    text(out).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

fn value(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", text(out), err(out)))
}

#[test]
fn a_job_runs_in_its_callers_directory_and_environment_not_the_servers() {
    let tmp = tempdir();
    let (a, b, state) = (tmp.path().join("A"), tmp.path().join("B"), tmp.path().join("state"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(a.join("b.txt"), "A's file").unwrap();
    std::fs::write(b.join("b.txt"), "B's file").unwrap();
    let _guard = KillServerOf(state.clone());
    // The server is auto-started from A, with X set to the server's value.
    let out = rsp_in(&a, &state, &["job", "start", "--name", "first", "-e", "return 1", "--wait"], &[("X", "server")]);
    assert_eq!(out.status.code(), Some(0), "{}", err(&out));
    assert!(err(&out).contains("started a job server"), "{}", err(&out));

    let script = "return {fs.read('b.txt'), exec('/bin/sh', {'-c', 'pwd -P'}).stdout, env.get('X')}";
    let args = ["job", "start", "--name", "ctx", "--allow", "fs:.,exec,env", "-e", script, "--wait"];
    let out = rsp_in(&b, &state, &args, &[("X", "caller")]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), err(&out));
    let out = rsp_in(&b, &state, &["job", "output", "ctx"], &[]);
    let real_b = b.canonicalize().unwrap();
    assert_eq!(lines(&out)[0]["value"], json!(["B's file", format!("{}\n", real_b.display()), "caller"]));

    // `fs:.` is B: A's file is outside the grant.
    let read_a = format!("return fs.read('{}')", a.join("b.txt").display());
    let out =
        rsp_in(&b, &state, &["job", "start", "--name", "outside", "--allow", "fs:.", "-e", &read_a, "--wait"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let job = rsp_in(&b, &state, &["job", "get", "outside"], &[]);
    assert!(value(&job)["error"].as_str().unwrap().contains("outside the paths granted"), "{}", text(&job));

    // --env restricts, --no-env sends nothing: never the server's X.
    let count =
        "local n = 0 for _ in env.vars() do n += 1 end return {tostring(env.get('X')), tostring(env.get('Y')), n}";
    let out = rsp_in(
        &b,
        &state,
        &["job", "start", "--name", "only", "--allow", "env", "--env", "Y=given", "-e", count, "--wait"],
        &[("X", "caller")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", err(&out));
    assert_eq!(lines(&rsp_in(&b, &state, &["job", "output", "only"], &[]))[0]["value"], json!(["nil", "given", 1]));
    let out = rsp_in(
        &b,
        &state,
        &["job", "start", "--name", "none", "--allow", "env,exec", "--no-env", "-e", count, "--wait"],
        &[("X", "caller")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", err(&out));
    assert_eq!(lines(&rsp_in(&b, &state, &["job", "output", "none"], &[]))[0]["value"], json!(["nil", "nil", 0]));

    // A script file and an input file named relative to B are read from B.
    std::fs::write(b.join("job.luau"), "return _ .. '!'").unwrap();
    std::fs::write(b.join("items.txt"), "x\ny\n").unwrap();
    let out =
        rsp_in(&b, &state, &["job", "start", "job.luau", "--input", "items.txt", "--name", "files", "--wait"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", err(&out));
    let mut results: Vec<Value> =
        lines(&rsp_in(&b, &state, &["job", "output", "files"], &[])).iter().map(|r| r["result"].clone()).collect();
    results.sort_by_key(|v| v.to_string());
    assert_eq!(results, [json!("x!"), json!("y!")]);
}

#[test]
fn the_api_without_a_context_runs_in_root_with_no_environment() {
    let tmp = tempdir();
    let server = Server::start(tmp.path(), &[]);
    let body = json!({"name": "bare", "allow": ["exec", "env"], "script": "return {exec('/bin/sh', {'-c', 'pwd'}).stdout, tostring(env.get('PATH'))}"});
    assert_eq!(server.call("POST", "/v1/jobs", Some(&body)).0, 201);
    let job = server.until("bare", |j| j["state"] != "Queued" && j["state"] != "Running");
    assert_eq!(job["state"], "Completed", "{job}");
    let (_, out) = server.call("GET", "/v1/jobs/bare/output", None);
    assert_eq!(out["records"][0]["value"], json!(["/\n", "nil"]));
    for (field, bad) in [("cwd", json!("relative/dir")), ("env", json!({"A=B": "x"}))] {
        let body = json!({"allow": ["exec"], "script": "return 1", field: bad});
        let (status, answer) = server.call("POST", "/v1/jobs", Some(&body));
        assert_eq!(status, 400, "{answer}");
        assert!(answer["error"].as_str().unwrap().starts_with(&format!("{field}:")), "{answer}");
    }
}

#[test]
fn a_jobs_refusals_name_the_field_of_the_job_that_fixes_them() {
    let tmp = tempdir();
    let server = Server::start(tmp.path(), &[]);
    // One job with no session of its own (the server's default one), one
    // with its own (it asks for a capability): both word the fix by the
    // job's fields, not by a flag of `rsp run` or the library's API.
    let cases = [
        ("plain", json!({"name": "plain", "script": "return exec('true')"}), "(add \"exec\" to the job's allow list)"),
        (
            "module",
            json!({"name": "module", "allow": ["env"], "script": "return require('helpers')"}),
            "(add a module named \"helpers\" to the job's modules)",
        ),
    ];
    for (name, body, hint) in cases {
        assert_eq!(server.call("POST", "/v1/jobs", Some(&body)).0, 201);
        finished(&server, name);
        let (_, out) = server.call("GET", &format!("/v1/jobs/{name}/streams/error"), None);
        let text = out.to_string();
        assert!(text.contains(&hint.replace('"', "\\\"")), "{name}: {text}");
        assert!(!text.contains("--allow") && !text.contains("SessionState"), "{name}: {text}");
    }
}

/// Starts `rsp job NAME…` against `server` and returns what it printed.
fn job(server: &Server, args: &[&str]) -> Output {
    rsp_with(args, |c| {
        c.env("RSP_STATE_DIR", &server.dir);
    })
}

fn finished(server: &Server, name: &str) -> Value {
    server.until(name, |j| !matches!(j["state"].as_str(), Some("Queued" | "Running")))
}

#[test]
fn restart_and_rerun_failed_make_new_jobs_from_the_stored_request() {
    let tmp = tempdir();
    let server = Server::start(tmp.path(), &[]);
    // Multiples of 3 fail, 4 writes an error but completes, the rest complete.
    let script = "if _ % 3 == 0 then error('bad') end if _ == 4 then write_error('meh') end return _";
    let out = job(&server, &["job", "start", "--name", "par", "-e", script, "--range", "1..10", "--wait"]);
    assert_eq!(out.status.code(), Some(1), "{}", err(&out));

    let out = job(&server, &["job", "rerun-failed", "par", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", err(&out));
    assert_eq!(value(&out)["name"], "par-2");
    finished(&server, "par-2");
    let (_, page) = server.call("GET", "/v1/jobs/par-2/output", None);
    let mut inputs: Vec<i64> =
        page["records"].as_array().unwrap().iter().map(|r| r["input"].as_i64().unwrap()).collect();
    inputs.sort();
    assert_eq!(inputs, [3, 6, 9], "only the failed items, not the one that completed with errors");

    // Restart: every item again, named after the origin with the next number.
    let out = job(&server, &["job", "restart", "par", "--format", "table"]);
    assert_eq!(text(&out).trim(), "par-3", "{}", err(&out));
    let out = job(&server, &["job", "restart", "par-2", "--format", "table"]);
    assert_eq!(text(&out).trim(), "par-4", "a restart of a restart counts on from the origin: {}", err(&out));
    assert_eq!(finished(&server, "par-3")["progress"]["total"], json!(10));
    assert_eq!(finished(&server, "par-4")["progress"]["total"], json!(3));
    let out = job(&server, &["job", "restart", "par", "--as", "again", "--format", "table"]);
    assert_eq!(text(&out).trim(), "again");
    assert_eq!(job(&server, &["job", "restart", "par", "--as", "again"]).status.code(), Some(2), "duplicate name");

    // Explicit inputs are kept and replayed.
    let input = tmp.path().join("in.txt");
    std::fs::write(&input, "a\nb\nc\n").unwrap();
    let out = job(
        &server,
        &["job", "start", "--name", "words", "-e", "return _:upper()", "--input", input.to_str().unwrap(), "--wait"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", err(&out));
    std::fs::remove_file(&input).unwrap();
    assert_eq!(text(&job(&server, &["job", "restart", "words", "--format", "table"])).trim(), "words-2");
    finished(&server, "words-2");
    let (_, page) = server.call("GET", "/v1/jobs/words-2/output", None);
    let mut results: Vec<String> =
        page["records"].as_array().unwrap().iter().map(|r| r["result"].as_str().unwrap().to_string()).collect();
    results.sort();
    assert_eq!(results, ["A", "B", "C"]);

    // Nothing to rerun when every item completed; a running job is refused.
    let out = job(&server, &["job", "rerun-failed", "words", "--format", "table"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(err(&out).contains("nothing to rerun"), "{}", err(&out));
    server.call(
        "POST",
        "/v1/jobs",
        Some(&json!({"name": "spin", "script": "while true do end", "range": {"start": 1, "end": 50}, "throttle": 1})),
    );
    let (status, answer) = server.call("POST", "/v1/jobs/spin/rerun-failed", None);
    assert_eq!(status, 409, "{answer}");
    // Stopped: the items that never ran and the stopped one are rerun.
    server.call("POST", "/v1/jobs/spin/stop", None);
    finished(&server, "spin");
    let (status, answer) = server.call("POST", "/v1/jobs/spin/rerun-failed", Some(&json!({"name": "spin-rest"})));
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["progress"]["total"], json!(50), "{answer}");
    server.call("POST", "/v1/jobs/spin-rest/stop", None);
    assert_eq!(server.call("POST", "/v1/jobs/nope/restart", None).0, 404);
}

#[test]
fn follow_prints_records_as_they_come_and_exits_with_the_jobs_state() {
    let tmp = tempdir();
    let server = Server::start(tmp.path(), &[]);
    let script = "if _ == 5 then sleep(0.3) end return _ * 10";
    server.call(
        "POST",
        "/v1/jobs",
        Some(&json!({"name": "slow", "script": script, "range": {"start": 1, "end": 5}, "throttle": 1})),
    );
    let out = job(&server, &["job", "follow", "slow"]);
    assert_eq!(out.status.code(), Some(0), "{}", err(&out));
    let results: Vec<Value> = lines(&out).iter().map(|r| r["result"].clone()).collect();
    assert_eq!(results, [json!(10), json!(20), json!(30), json!(40), json!(50)]);
    assert!(err(&out).contains("'slow' Completed"), "{}", err(&out));

    server.call("POST", "/v1/jobs", Some(&json!({"name": "bad", "script": "write_warning('careful') error('boom')"})));
    let out = job(&server, &["job", "follow", "bad", "--format", "table"]);
    assert_eq!(out.status.code(), Some(1), "a Failed job: {}", err(&out));
    assert!(err(&out).contains("[warning] careful") && err(&out).contains("boom"), "{}", err(&out));

    // Every stream record, not only the last 100 the job's description
    // carries: follow reads them from the paged streams route.
    let script = "for i = 1, 250 do print('line ' .. i) end return 1";
    server.call("POST", "/v1/jobs", Some(&json!({"name": "talker", "script": script})));
    let out = job(&server, &["job", "follow", "talker", "--format", "table"]);
    assert_eq!(out.status.code(), Some(0), "{}", err(&out));
    let info: Vec<String> = err(&out).lines().filter(|l| l.starts_with("[information] ")).map(String::from).collect();
    let want: Vec<String> = (1..=250).map(|i| format!("[information] line {i}")).collect();
    assert_eq!(info, want);

    // Following a job that never ends: --timeout gives up with 3.
    server.call("POST", "/v1/jobs", Some(&json!({"name": "spin", "script": "while true do end"})));
    let out = job(&server, &["job", "follow", "spin", "--timeout", "300ms"]);
    assert_eq!(out.status.code(), Some(3), "{}", err(&out));
    // A reader that goes away ends the follower quietly, even while the job is silent.
    server.call("POST", "/v1/jobs", Some(&json!({"name": "chatty", "script": "if _ > 1 then sleep(3600) end return _", "range": {"start": 1, "end": 2}})));
    let mut child = Command::new(RSP)
        .args(["job", "follow", "chatty"])
        .env("RSP_STATE_DIR", &server.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.contains("\"result\":1"), "{first}");
    // The reader is dropped here: the pipe closes.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("follow kept running after its reader went away");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(0), "{}", err(&out));
    assert!(!err(&out).contains("panicked"), "{}", err(&out));
    server.call("POST", "/v1/jobs/chatty/stop", None);
    server.call("POST", "/v1/jobs/spin/stop", None);
}

#[test]
fn clean_removes_finished_jobs_only_and_wait_all_exit_codes_reflect_states() {
    let tmp = tempdir();
    let server = Server::start(tmp.path(), &[]);
    for (name, script) in [("ok1", "return 1"), ("ok2", "return 2")] {
        server.call("POST", "/v1/jobs", Some(&json!({"name": name, "script": script})));
    }
    let out = job(&server, &["job", "wait", "--all", "--timeout", "20s"]);
    assert_eq!(out.status.code(), Some(0), "all Completed: {}", err(&out));
    server.call("POST", "/v1/jobs", Some(&json!({"name": "bad", "script": "error('x')"})));
    let out = job(&server, &["job", "wait", "--all", "--timeout", "20s"]);
    assert_eq!(out.status.code(), Some(1), "one Failed: {}", err(&out));
    assert_eq!(value(&out).as_array().unwrap().len(), 3);
    server.call("POST", "/v1/jobs", Some(&json!({"name": "spin", "script": "while true do end"})));
    let out = job(&server, &["job", "wait", "--all", "--timeout", "200ms"]);
    assert_eq!(out.status.code(), Some(3), "timeout: {}", err(&out));

    let out = job(&server, &["job", "clean", "--state", "Failed", "--format", "json"]);
    assert_eq!(value(&out)["names"], json!(["bad"]), "{}", err(&out));
    let (status, answer) = server.call("DELETE", "/v1/jobs?state=Running", None);
    assert_eq!(status, 400, "{answer}");
    let out = job(&server, &["job", "clean", "--format", "table"]);
    assert_eq!(out.status.code(), Some(0), "{}", err(&out));
    assert!(err(&out).contains("removed 2"), "{}", err(&out));
    let (_, list) = server.call("GET", "/v1/jobs", None);
    assert_eq!(list["jobs"].as_array().unwrap().iter().map(|j| j["name"].clone()).collect::<Vec<_>>(), [json!("spin")]);
    server.call("POST", "/v1/jobs/spin/stop", None);
}

#[test]
fn serve_stop_shuts_the_server_down_gracefully_and_needs_the_token() {
    let tmp = tempdir();
    let state = tmp.path().join("state");
    let _guard = KillServerOf(state.clone());
    let out = rsp_in(tmp.path(), &state, &["serve", "--detach", "--grace", "5s"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", err(&out));
    let info: Value = serde_json::from_str(&std::fs::read_to_string(state.join("server.json")).unwrap()).unwrap();
    let base = format!("http://{}", info["addr"].as_str().unwrap());
    let pid = info["pid"].as_i64().unwrap() as i32;
    assert_eq!(call(&base, Some("wrong"), "POST", "/v1/shutdown", None).0, 401);
    // A job that ends within the grace period finishes.
    let token = std::fs::read_to_string(state.join("token")).unwrap();
    let (status, _) = call(
        &base,
        Some(token.trim()),
        "POST",
        "/v1/jobs",
        Some(&json!({"name": "short", "script": "sleep(0.5) return 'done'"})),
    );
    assert_eq!(status, 201);
    let t = Instant::now();
    let out = rsp_in(tmp.path(), &state, &["serve", "stop"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", err(&out));
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    // Gone, or a zombie nobody has reaped yet (the detached server's parent exited).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(stat.is_empty() || stat.contains(") Z "), "the server process is still running: {stat}");
    assert!(!state.join("server.json").exists());
    let out = rsp_in(tmp.path(), &state, &["serve", "stop"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(err(&out).contains("no job server is running"), "{}", err(&out));
    // The job finished and was kept.
    let server = Server::start(&state, &[]);
    assert_eq!(server.call("GET", "/v1/jobs/short", None).1["state"], "Completed");
}

#[test]
fn errors_are_json_with_allow_on_405_and_the_body_limit_is_reported() {
    let tmp = tempdir();
    let server = Server::start(tmp.path(), &[]);
    let (status, body) = server.call("GET", "/v1/nothing-here", None);
    assert_eq!(status, 404);
    assert_eq!(body["status"], 404);
    assert!(body["error"].as_str().unwrap().contains("/v1/nothing-here"), "{body}");
    let response = jobs_common::agent()
        .put(format!("{}/v1/jobs", server.base))
        .header("Authorization", format!("Bearer {}", server.token))
        .send_empty()
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    let allow = response.headers().get("allow").unwrap().to_str().unwrap().to_string();
    let mut allowed: Vec<&str> = allow.split(',').map(str::trim).collect();
    allowed.sort();
    assert_eq!(allowed, ["DELETE", "GET", "HEAD", "POST"]);
    let mut response = response;
    let body: Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(body["status"], 405);
    let (status, body) = server.call("GET", "/v1/jobs?limit=10001", None);
    assert_eq!((status, body["status"].clone()), (400, json!(400)), "{body}");
    let (status, _) = server.call("GET", "/v1/jobs?offset=9223372036854775808", None);
    assert_eq!(status, 400);

    // Over the limit: the client says what it is before sending. (The
    // server's own 413, answered from Content-Length before the body is
    // read, is tested over a raw socket in jobs_http.)
    let input = tmp.path().join("big.txt");
    // Lines of 100 bytes: over the body limit, well under the item limit.
    let line = format!("{}\n", "y".repeat(99));
    std::fs::write(&input, line.repeat(runspace_server_limit() as usize / 100 + 10)).unwrap();
    let out = job(&server, &["job", "start", "-e", "return _", "--input", input.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", err(&out));
    assert!(err(&out).contains("request body too large") && err(&out).contains("(limit 32 MB)"), "{}", err(&out));
}

/// The body limit docs/jobs.md documents (32 MB).
fn runspace_server_limit() -> u64 {
    runspace_server::limits::MAX_REQUEST_BODY
}
