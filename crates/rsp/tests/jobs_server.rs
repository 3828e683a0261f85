//! `rsp serve` over real HTTP on 127.0.0.1: the token, every route, 1,000
//! concurrent submissions, kill -9 and restart, graceful shutdown, and the
//! original's Test-RunspaceJobManager scenario.

mod jobs_common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use jobs_common::{call, Server};
use serde_json::{json, Value};

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn api_needs_the_token_and_serves_every_route() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &["--max-jobs", "2"]);
    let mode = std::fs::metadata(dir.path().join("token")).unwrap().permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
    assert!(server.base.starts_with("http://127.0.0.1:"));

    // Without or with a wrong token: 401, whatever the route.
    for path in ["/v1/jobs", "/v1/health", "/v1/jobs/x"] {
        assert_eq!(call(&server.base, None, "GET", path, None).0, 401, "{path}");
        assert_eq!(call(&server.base, Some("wrong"), "GET", path, None).0, 401, "{path}");
    }
    let (status, body) = call(&server.base, None, "POST", "/v1/jobs", Some(&json!({"script": "return 1"})));
    assert_eq!(status, 401);
    assert!(body["error"].as_str().unwrap().contains("token"));
    assert_eq!(server.call("GET", "/v1/jobs", None).1["total"], json!(0), "nothing was submitted without the token");

    // Submit: a single run and a run over a range.
    let (status, created) = server.call(
        "POST",
        "/v1/jobs",
        Some(
            &json!({"name": "one", "script": "emit('x') write_warning('w') return a + b", "params": {"a": 1, "b": 2}}),
        ),
    );
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["name"], "one");
    let (status, _) = server.call(
        "POST",
        "/v1/jobs",
        Some(&json!({"name": "many", "script": "return _ * k", "variables": {"k": 3}, "range": {"start": 1, "end": 250}})),
    );
    assert_eq!(status, 201);
    let (_, auto) = server.call("POST", "/v1/jobs", Some(&json!({"script": "sleep(3600)"})));
    let sleeper = auto["name"].as_str().unwrap().to_string();
    assert!(sleeper.starts_with("Job_") && sleeper.len() == 12, "{sleeper}");

    // Errors: syntax (400, with the line), duplicate (409), bad fields (400), unknown job (404).
    let (status, body) = server.call("POST", "/v1/jobs", Some(&json!({"script": "local x = \nreturn )"})));
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("line 2"), "{body}");
    assert_eq!(server.call("POST", "/v1/jobs", Some(&json!({"name": "one", "script": "return 1"}))).0, 409);
    assert_eq!(server.call("POST", "/v1/jobs", Some(&json!({"script": "return 1", "bogus": 1}))).0, 400);
    assert_eq!(server.call("POST", "/v1/jobs", Some(&json!({"name": "../x", "script": "return 1"}))).0, 400);
    assert_eq!(server.call("GET", "/v1/jobs/nope", None).0, 404);
    assert_eq!(server.call("POST", "/v1/jobs/nope/wait?timeout=1s", None).0, 404);

    // Wait: finished jobs come back whole.
    let (status, waited) = server.call("POST", "/v1/jobs/one/wait?timeout=20s", None);
    assert_eq!(status, 200);
    assert_eq!(waited["finished"], json!(true));
    let job = &waited["job"];
    assert_eq!(job["state"], "Completed");
    assert_eq!(job["streams"]["warning"], json!(["w"]));
    let states: Vec<_> = job["history"].as_array().unwrap().iter().map(|h| h["state"].clone()).collect();
    assert_eq!(states, vec![json!("Queued"), json!("Running"), json!("Completed")]);
    let (_, out) = server.call("GET", "/v1/jobs/one/output", None);
    assert_eq!(out["records"], json!([{"seq": 0, "value": "x"}, {"seq": 1, "value": 3}]));

    let (_, waited) = server.call("POST", "/v1/jobs/many/wait?timeout=20s", None);
    assert_eq!(waited["job"]["progress"], json!({"done": 250, "total": 250}));
    // Output is paged.
    let (_, page) = server.call("GET", "/v1/jobs/many/output?offset=100&limit=50", None);
    assert_eq!(page["total"], json!(250));
    let records = page["records"].as_array().unwrap();
    assert_eq!(records.len(), 50);
    assert_eq!(records[0]["seq"], json!(100));
    let mut results: Vec<i64> = Vec::new();
    for offset in (0..250).step_by(100) {
        let (_, p) = server.call("GET", &format!("/v1/jobs/many/output?offset={offset}&limit=100"), None);
        results.extend(p["records"].as_array().unwrap().iter().map(|r| r["result"].as_i64().unwrap()));
    }
    results.sort();
    assert_eq!(results, (1..=250).map(|n| n * 3).collect::<Vec<_>>());

    // Wait with a timeout on a job that does not end: finished false, promptly.
    let t = Instant::now();
    let (status, waited) = server.call("POST", &format!("/v1/jobs/{sleeper}/wait?timeout=200ms"), None);
    assert_eq!((status, waited["finished"].clone()), (200, json!(false)));
    assert!(t.elapsed() < Duration::from_secs(8));

    // List: filtered by state and paginated.
    let (_, running) = server.call("GET", "/v1/jobs?state=Running", None);
    assert_eq!(running["total"], json!(1));
    assert_eq!(running["jobs"][0]["name"], json!(sleeper));
    let (_, first) = server.call("GET", "/v1/jobs?limit=2", None);
    assert_eq!((first["total"].clone(), first["jobs"].as_array().unwrap().len()), (json!(3), 2));
    let (_, rest) = server.call("GET", "/v1/jobs?limit=2&offset=2", None);
    assert_eq!(rest["jobs"][0]["name"], json!(sleeper));
    assert_eq!(server.call("GET", "/v1/jobs?state=Sleeping", None).0, 400);

    // Stop, then remove.
    let t = Instant::now();
    let (status, stopped) = server.call("POST", &format!("/v1/jobs/{sleeper}/stop"), None);
    assert!(t.elapsed() < Duration::from_secs(8));
    assert_eq!((status, stopped["state"].clone()), (200, json!("Stopped")));
    assert_eq!(server.call("DELETE", "/v1/jobs/one", None).0, 204);
    assert_eq!(server.call("GET", "/v1/jobs/one", None).0, 404);
    assert_eq!(server.call("DELETE", "/v1/jobs/one", None).0, 404);
    let (_, all) = server.call("POST", "/v1/wait?timeout=5s", None);
    assert_eq!(all, json!({"finished": true, "pending": []}));
}

#[test]
fn a_thousand_jobs_from_eight_threads_are_all_stored_once() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &["--max-jobs", "5"]);
    let (base, token) = (server.base.clone(), server.token.clone());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (base, token) = (base.clone(), token.clone());
            std::thread::spawn(move || {
                let mut names = Vec::new();
                for i in 0..125 {
                    // Half named by the client, half by the server.
                    let body = if i % 2 == 0 {
                        json!({"name": format!("t{t}-{i}"), "script": "return n", "params": {"n": t * 1000 + i}})
                    } else {
                        json!({"script": "return n", "params": {"n": t * 1000 + i}})
                    };
                    let (status, created) = call(&base, Some(&token), "POST", "/v1/jobs", Some(&body));
                    assert_eq!(status, 201, "{created}");
                    names.push((created["name"].as_str().unwrap().to_string(), t * 1000 + i));
                }
                names
            })
        })
        .collect();
    let submitted: Vec<(String, i64)> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert_eq!(submitted.len(), 1000);
    let (_, all) = server.call("POST", "/v1/wait?timeout=60s", None);
    assert_eq!(all["finished"], json!(true), "{all}");
    let (_, page) = server.call("GET", "/v1/jobs?limit=10000", None);
    assert_eq!(page["total"], json!(1000));
    let jobs = page["jobs"].as_array().unwrap();
    let stored: HashSet<&str> = jobs.iter().map(|j| j["name"].as_str().unwrap()).collect();
    assert_eq!(stored.len(), 1000, "no duplicates");
    assert!(submitted.iter().all(|(n, _)| stored.contains(n.as_str())), "none lost");
    assert!(jobs.iter().all(|j| j["state"] == "Completed"));
    for (name, n) in submitted.iter().step_by(97) {
        let (_, out) = server.call("GET", &format!("/v1/jobs/{name}/output"), None);
        assert_eq!(out["records"][0]["value"], json!(n), "{name}");
    }
}

#[test]
fn kill_9_then_restart_keeps_results_and_interrupts_running_jobs() {
    let dir = tempdir();
    let mut server = Server::start(dir.path(), &["--max-jobs", "3"]);
    server.call("POST", "/v1/jobs", Some(&json!({"name": "done", "script": "write_warning('kept') return 'result'"})));
    server.call("POST", "/v1/jobs/done/wait?timeout=20s", None);
    server.call("POST", "/v1/jobs", Some(&json!({"name": "sleeper", "script": "sleep(3600)"})));
    server.call(
        "POST",
        "/v1/jobs",
        Some(&json!({"name": "partial", "script": "if _ > 3 then sleep(3600) end return _ * 10",
                     "range": {"start": 1, "end": 100}, "throttle": 1})),
    );
    server.until("sleeper", |j| j["state"] == "Running");
    server.until("partial", |j| j["progress"]["done"] == json!(3));
    server.kill9();

    let server = Server::start(dir.path(), &[]);
    let done = server.call("GET", "/v1/jobs/done", None).1;
    assert_eq!(done["state"], "Completed");
    assert_eq!(done["streams"]["warning"], json!(["kept"]));
    assert_eq!(server.call("GET", "/v1/jobs/done/output", None).1["records"][0]["value"], "result");
    let sleeper = server.call("GET", "/v1/jobs/sleeper", None).1;
    assert_eq!(sleeper["state"], "Interrupted");
    assert!(sleeper["error"].as_str().unwrap().contains("server stopped"), "{sleeper}");
    assert_eq!(sleeper["history"].as_array().unwrap().last().unwrap()["state"], "Interrupted");
    let partial = server.call("GET", "/v1/jobs/partial", None).1;
    assert_eq!(partial["state"], "Interrupted");
    assert_eq!(partial["progress"], json!({"done": 3, "total": 100}));
    let out = server.call("GET", "/v1/jobs/partial/output", None).1;
    let results: Vec<Value> = out["records"].as_array().unwrap().iter().map(|r| r["result"].clone()).collect();
    assert_eq!(results, vec![json!(10), json!(20), json!(30)], "what it had produced survives");
    // Waiting on an interrupted job answers at once.
    let (_, waited) = server.call("POST", "/v1/jobs/sleeper/wait?timeout=10s", None);
    assert_eq!(waited["finished"], json!(true));
    // Its name stays taken.
    assert_eq!(server.call("POST", "/v1/jobs", Some(&json!({"name": "sleeper", "script": "return 1"}))).0, 409);
}

#[test]
fn sigterm_stops_jobs_after_the_grace_period_and_flushes() {
    let dir = tempdir();
    let mut server = Server::start(dir.path(), &["--grace", "300ms", "--max-jobs", "1"]);
    server.call("POST", "/v1/jobs", Some(&json!({"name": "short", "script": "sleep(0.1) return 1"})));
    server.call("POST", "/v1/jobs", Some(&json!({"name": "forever", "script": "while true do end"})));
    server.call("POST", "/v1/jobs", Some(&json!({"name": "queued", "script": "sleep(3600)"})));
    server.until("forever", |j| j["state"] == "Running");
    let t = Instant::now();
    assert_eq!(server.terminate(Duration::from_secs(10)), Some(0), "{}", jobs_common::log_of(dir.path()));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(!dir.path().join("server.json").exists());

    let server = Server::start(dir.path(), &[]);
    assert_eq!(server.call("GET", "/v1/jobs/short", None).1["state"], "Completed");
    let forever = server.call("GET", "/v1/jobs/forever", None).1;
    assert_eq!(forever["state"], "Stopped", "{forever}");
    let queued = server.call("GET", "/v1/jobs/queued", None).1;
    assert_eq!(queued["state"], "Stopped", "{queued}");
    assert_eq!(server.call("GET", "/v1/jobs?state=Interrupted", None).1["total"], json!(0));
}

/// The original's Test-RunspaceJobManager through the server, with the
/// process and file-system jobs replaced by pure computation.
#[test]
fn test_runspace_job_manager_scenario_over_http() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &["--max-jobs", "5"]);
    let submit = |name: &str, script: &str, params: Value| {
        let (status, body) =
            server.call("POST", "/v1/jobs", Some(&json!({"name": name, "script": script, "params": params})));
        assert_eq!(status, 201, "{body}");
    };
    submit(
        "LongRunningJob",
        "sleep(Seconds) return 'Job completed after ' .. Seconds .. ' seconds'",
        json!({"Seconds": 0.5}),
    );
    submit(
        "ProcessJob",
        "local out = {} for pid = 1, 400 do local cpu = (pid * 37) % 250 \
         if cpu > 100 then table.insert(out, {Name = 'proc' .. pid, CPU = cpu}) end end return out",
        json!({}),
    );
    submit(
        "FileSystemJob",
        "local sum = 0 for i = 1, Count do sum = sum + i * 512 end return sum",
        json!({"Count": 1000}),
    );
    let (_, running) = server.call("GET", "/v1/jobs?state=Running", None);
    assert!(running["total"].as_u64().unwrap() >= 1, "LongRunningJob is still sleeping");
    let (_, waited) = server.call("POST", "/v1/jobs/ProcessJob/wait?timeout=30s", None);
    assert_eq!(waited["job"]["state"], "Completed");
    let (_, out) = server.call("GET", "/v1/jobs/ProcessJob/output", None);
    assert!(out["records"][0]["value"].as_array().unwrap().len() > 100);
    let (_, all) = server.call("POST", "/v1/wait?timeout=60s", None);
    assert_eq!(all["finished"], json!(true));
    let (_, done) = server.call("GET", "/v1/jobs?state=Completed", None);
    assert_eq!(done["total"], json!(3));
    for job in done["jobs"].as_array().unwrap() {
        assert!(job["duration_s"].as_f64().is_some(), "{job}");
    }
    let (_, long) = server.call("GET", "/v1/jobs/LongRunningJob", None);
    assert!(long["duration_s"].as_f64().unwrap() >= 0.5);
}

#[test]
fn guessing_the_api_token_is_slowed_down_and_shares_the_login_form_s_count() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    // A request without a token is no guess: it never starts the back-off.
    for _ in 0..20 {
        assert_eq!(call(&server.base, None, "GET", "/v1/jobs", None).0, 401);
    }
    assert_eq!(server.call("GET", "/v1/jobs", None).0, 200);
    // Forty guesses at once: five are checked, the rest wait, none slips through.
    let base = server.base.as_str();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let guesses: Vec<_> = (0..40)
            .map(|i| s.spawn(move || call(base, Some(&format!("{i:064x}")), "GET", "/v1/jobs", None).0))
            .collect();
        guesses.into_iter().map(|g| g.join().unwrap()).collect()
    });
    let checked = statuses.iter().filter(|&&s| s == 401).count();
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!((checked, refused), (5, 35), "{statuses:?}");
    // While it runs, the right token is not looked at either, and the
    // answer says how long to wait, in Retry-After too.
    let answer = jobs_common::agent()
        .get(format!("{}/v1/jobs", server.base))
        .header("Authorization", &format!("Bearer {}", server.token))
        .call()
        .unwrap();
    assert_eq!(answer.status().as_u16(), 429);
    let retry: u64 = answer.headers().get("retry-after").unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // The login form counts the same guesses: it waits too.
    let form = jobs_common::agent()
        .post(format!("{}/login", server.base))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(format!("token={}", server.token))
        .unwrap();
    assert_eq!(form.status().as_u16(), 429);
    // After it, the right token answers again; a right token does not
    // clear the count, so the next wrong one starts a longer wait at once.
    std::thread::sleep(Duration::from_secs(retry) + Duration::from_millis(200));
    assert_eq!(server.call("GET", "/v1/jobs", None).0, 200);
    assert_eq!(call(&server.base, Some("wrong"), "GET", "/v1/jobs", None).0, 401);
    assert_eq!(server.call("GET", "/v1/jobs", None).0, 429);
}
