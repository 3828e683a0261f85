//! Servers sharing a PostgreSQL store, on leases: a server killed with
//! kill -9 leaves its jobs to be marked Interrupted by another server (or
//! by itself started again) once its lease has run out; a live server's
//! jobs are never touched, however long it runs beside others. Against a
//! real PostgreSQL server this binary starts.

mod jobs_common;
#[path = "../../runspace-server/tests/support/pg.rs"]
mod pg;

use std::time::{Duration, Instant};

use jobs_common::Server;
use serde_json::{json, Value};

/// A job that runs until stopped (a sleep per item, one at a time).
fn long_job(server: &Server, name: &str) {
    let body = json!({"name": name, "script": "sleep(0.05) return _", "range": {"start": 1, "end": 1000000},
                      "throttle": 1});
    let (status, answer) = server.call("POST", "/v1/jobs", Some(&body));
    assert_eq!(status, 201, "{answer}");
}

fn state(server: &Server, name: &str) -> Value {
    server.call("GET", &format!("/v1/jobs/{name}"), None).1
}

#[test]
fn a_killed_server_s_jobs_are_interrupted_by_another_and_a_live_one_s_never() {
    let Some(url) = pg::fresh_database("servers") else { return };
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let lease = ["--store", &url, "--lease", "2s", "--max-jobs", "1"];
    let mut a = Server::start(a_dir.path(), &lease);
    let b = Server::start(b_dir.path(), &lease);
    long_job(&a, "a-running");
    long_job(&a, "a-queued"); // --max-jobs 1: it waits
    long_job(&b, "b-running");
    a.until("a-running", |j| j["state"] == "Running");
    b.until("b-running", |j| j["state"] == "Running");
    // Three leases side by side: neither server touches the other's jobs.
    std::thread::sleep(Duration::from_secs(6));
    for (name, expected) in [("a-running", "Running"), ("a-queued", "Queued"), ("b-running", "Running")] {
        assert_eq!(state(&b, name)["state"], expected, "{name} while both servers live");
    }
    a.kill9();
    let killed = Instant::now();
    let a_running = b.until("a-running", |j| j["state"] == "Interrupted");
    let waited = killed.elapsed();
    assert!(waited < Duration::from_secs(20), "interrupted {waited:?} after the kill (lease 2 s)");
    assert!(a_running["error"].as_str().unwrap().contains("stopped answering"), "{a_running}");
    let history: Vec<&str> =
        a_running["history"].as_array().unwrap().iter().map(|h| h["state"].as_str().unwrap()).collect();
    assert_eq!(history, ["Queued", "Running", "Interrupted"]);
    let a_queued = b.until("a-queued", |j| j["state"] == "Interrupted");
    assert!(a_queued["error"].as_str().unwrap().contains("before it started"), "{a_queued}");
    // B's own job runs on, untouched.
    std::thread::sleep(Duration::from_secs(3));
    let b_running = state(&b, "b-running");
    assert_eq!(b_running["state"], "Running", "{b_running}");
    let (status, _) = b.call("POST", "/v1/jobs/b-running/stop", None);
    assert!(status < 300, "stop: {status}");
    b.until("b-running", |j| j["state"] == "Stopped");
}

#[test]
fn a_server_started_again_interrupts_what_it_left_and_its_late_self_cannot_undo_it() {
    let Some(url) = pg::fresh_database("restart") else { return };
    let dir = tempfile::tempdir().unwrap();
    let args = ["--store", &url, "--lease", "1s"];
    let mut first = Server::start(dir.path(), &args);
    long_job(&first, "left");
    first.until("left", |j| j["state"] == "Running");
    // Paused past its lease, as a kill -9 would look, then gone for good.
    unsafe { libc::kill(first.pid() as i32, libc::SIGSTOP) };
    let second_dir = tempfile::tempdir().unwrap();
    let second = Server::start(second_dir.path(), &args);
    let left = second.until("left", |j| j["state"] == "Interrupted");
    assert!(left["end"].is_string(), "{left}");
    let recorded = left["output_count"].as_u64().unwrap();
    // The paused server wakes and goes on running the job, then stops it:
    // the job stays Interrupted, and what it records is dropped.
    unsafe { libc::kill(first.pid() as i32, libc::SIGCONT) };
    std::thread::sleep(Duration::from_secs(2));
    let (status, _) = first.call("POST", "/v1/jobs/left/stop", None);
    assert!(status < 300, "stop: {status}");
    std::thread::sleep(Duration::from_secs(1));
    let left = state(&second, "left");
    assert_eq!(left["state"], "Interrupted", "{left}");
    // The writer's one transaction in flight at the pause may still land
    // (its statements ran before the interruption); nothing written after
    // it does, though the late server ran the job for two more seconds
    // (some forty items).
    let after = left["output_count"].as_u64().unwrap();
    assert!(after <= recorded + 5, "{after} records after the interruption, {recorded} at it");
    first.kill9();
}
