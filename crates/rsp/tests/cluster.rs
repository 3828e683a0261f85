//! Past one machine: the job service on PostgreSQL, `rsp worker`s leasing
//! work from it, and `rsp run --cluster`. Every test runs against a real
//! PostgreSQL server this binary starts (initdb + pg_ctl in a temporary
//! folder): no mock of the database.

mod jobs_common;
#[path = "../../runspace-server/tests/support/pg.rs"]
mod pg;

use jobs_common::Server;
use serde_json::json;

#[test]
fn two_servers_on_one_postgres_store_share_their_jobs() {
    let Some(url) = pg::fresh_database("serve") else { return };
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Server::start(a_dir.path(), &["--store", &url]);
    let b = Server::start(b_dir.path(), &["--store", &url]);
    let body = json!({"name": "shared", "script": "return _ * 2", "range": {"start": 1, "end": 50}});
    let (status, _) = a.call("POST", "/v1/jobs", Some(&body));
    assert_eq!(status, 201);
    let job = a.until("shared", |j| j["state"] == "Completed");
    assert_eq!(job["output_count"], 50);
    // The other server reads the same store: the job, its output, its history.
    let (status, seen) = b.call("GET", "/v1/jobs/shared", None);
    assert_eq!((status, seen["state"].as_str()), (200, Some("Completed")), "{seen}");
    let (_, page) = b.call("GET", "/v1/jobs/shared/output?limit=100", None);
    let mut results: Vec<i64> =
        page["records"].as_array().unwrap().iter().map(|r| r["result"].as_i64().unwrap()).collect();
    results.sort();
    assert_eq!(results, (1..=50).map(|n| n * 2).collect::<Vec<_>>());
    // A name is unique across the servers.
    let (status, _) = b.call("POST", "/v1/jobs", Some(&body));
    assert_eq!(status, 409);
}

#[test]
fn a_store_url_that_answers_nothing_fails_the_server_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(jobs_common::RSP)
        .args(["serve", "--port", "0", "--state-dir"])
        .arg(dir.path())
        .env("RSP_STORE", "postgres://rsp@127.0.0.1:1/none")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("postgres://127.0.0.1:1/none") && stderr.contains("connect"), "{stderr}");
}
