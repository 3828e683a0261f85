//! The API contract: docs/jobs-openapi.yaml checked against a live server
//! by schemathesis (an OpenAPI fuzzer from PyPI): every status code
//! documented, every body as described, every error JSON, limits enforced,
//! `Allow` right on 405, the token required everywhere.
//!
//! schemathesis is found through `RSP_SCHEMATHESIS` (the path of its `st`
//! program); without it the test says how to install it and skips:
//!
//! ```sh
//! python3 -m venv .venv-test && .venv-test/bin/pip install schemathesis
//! RSP_SCHEMATHESIS=$PWD/.venv-test/bin/st cargo test -p rsp --test jobs_openapi
//! ```
//!
//! Bounded: 25 examples per operation and phase, a fixed seed, waits pinned
//! to 100 ms (tests/openapi/schemathesis.toml), killed after 10 minutes.
//! Left out: `POST /v1/shutdown` (it would end the server under test; its
//! own test is in jobs_verbs.rs) and the `positive_data_acceptance` check,
//! which expects every schema-valid body to be accepted: a `script` is any
//! string by schema, but only a valid Luau program is accepted (a syntax
//! error is a documented 400).

mod jobs_common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jobs_common::Server;

const LIMIT: Duration = Duration::from_secs(600);

#[test]
fn the_openapi_description_matches_the_server() {
    let Some(st) = std::env::var_os("RSP_SCHEMATHESIS") else {
        eprintln!(
            "SKIPPED jobs_openapi: set RSP_SCHEMATHESIS to schemathesis' `st` program to check the API contract \
             (python3 -m venv .venv-test && .venv-test/bin/pip install schemathesis; \
             RSP_SCHEMATHESIS=$PWD/.venv-test/bin/st)"
        );
        return;
    };
    assert!(Path::new(&st).exists(), "RSP_SCHEMATHESIS={} does not exist", Path::new(&st).display());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let spec = root.join("../../docs/jobs-openapi.yaml");
    let config = root.join("tests/openapi/schemathesis.toml");
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let server = Server::start(&state, &["--max-jobs", "2"]);
    let report = tmp.path().join("schemathesis.txt");
    let log = std::fs::File::create(&report).unwrap();
    let mut child = Command::new(&st)
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(&spec)
        .args(["--url", &server.base])
        .args(["--header", &format!("Authorization: Bearer {}", server.token)])
        .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance"])
        .args(["--exclude-path", "/v1/shutdown"])
        .args(["--max-examples", "25", "--seed", "20261126", "--request-timeout", "20", "--no-color"])
        .current_dir(tmp.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("schemathesis ran past {LIMIT:?}:\n{}", std::fs::read_to_string(&report).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&report).unwrap_or_default();
    // Its summary: "Test cases:\n  922 generated, 922 passed, 26 skipped".
    let generated: u64 = output
        .lines()
        .find_map(|l| l.trim().split_once(" generated").and_then(|(n, _)| n.trim().parse().ok()))
        .unwrap_or(0);
    let tail: Vec<&str> = output.lines().rev().take(12).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    eprintln!("schemathesis: {generated} cases generated\n{}", tail.join("\n"));
    assert!(
        status.success(),
        "the API does not match docs/jobs-openapi.yaml:\n{output}\nserver log:\n{}",
        jobs_common::log_of(&state)
    );
    assert!(generated >= 200, "schemathesis ran too few cases to mean anything ({generated}):\n{output}");
}
