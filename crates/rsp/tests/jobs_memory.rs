//! Bounded memory: a million-item job streams its records to the store, so
//! the server's peak RSS stays far below what holding them took (868 MB).

mod jobs_common;

use std::time::{Duration, Instant};

use jobs_common::Server;
use serde_json::json;

fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

#[test]
fn a_million_item_job_keeps_the_server_small() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), &[]);
    let body = json!({"name": "million", "script": "return _", "range": {"start": 1, "end": 1_000_000}});
    assert_eq!(server.call("POST", "/v1/jobs", Some(&body)).0, 201);
    let deadline = Instant::now() + Duration::from_secs(600);
    let job = loop {
        let (status, waited) = server.call("POST", "/v1/jobs/million/wait?timeout=20s", None);
        assert_eq!(status, 200, "{waited}");
        if waited["finished"] == true {
            break waited["job"].clone();
        }
        assert!(Instant::now() < deadline, "not finished after 10 minutes: {waited}");
    };
    assert_eq!(job["state"], "Completed", "{job}");
    assert_eq!(job["output_count"], 1_000_000, "{job}");
    let peak = peak_rss_mib(server.pid());
    assert!(peak < 150, "server peak RSS {peak} MiB for a million items");
    // Every record is there, in pages.
    let (_, page) = server.call("GET", "/v1/jobs/million/output?offset=999990&limit=100", None);
    assert_eq!(page["records"].as_array().unwrap().len(), 10);
    assert_eq!(page["total"], 1_000_000);
}
