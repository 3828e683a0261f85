//! The HTTP edge of the job server: slow clients are cut off, every error
//! is JSON, a body over the limit is named as such, a large output reaches
//! the client whole in bounded pages, and a closed stdout ends quietly.

mod jobs_common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jobs_common::{rsp_with, Server, RSP};
use serde_json::{json, Value};

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn connect(server: &Server) -> TcpStream {
    let stream = TcpStream::connect(server.base.trim_start_matches("http://")).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream
}

#[test]
fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let tmp = tempdir();
    let server = Server::start(tmp.path(), &[]);
    let mut stream = connect(&server);
    stream.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n").unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    // The server closes it (read returns 0, or an error such as a reset).
    let _ = stream.read_to_end(&mut buf);
    assert!(started.elapsed() < Duration::from_secs(25), "held for {:?}", started.elapsed());
    assert!(!String::from_utf8_lossy(&buf).contains("\"ok\""), "answered a half request");
    // And the server still answers whole requests.
    assert_eq!(server.call("GET", "/v1/health", None).0, 200);
}

/// Sends a raw request and returns the status and the JSON body.
fn raw(server: &Server, head: &str, body: &[u8]) -> (u16, Value, String) {
    let mut stream = connect(server);
    let request = format!("{head}Host: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n", server.token);
    stream.write_all(request.as_bytes()).unwrap();
    let _ = stream.write_all(body);
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        headers.push_str(&line);
    }
    let mut rest = String::new();
    let _ = reader.read_to_string(&mut rest);
    (status, serde_json::from_str(&rest).unwrap_or(Value::String(rest)), headers)
}

#[test]
fn every_error_is_json_including_413_405_and_404() {
    let tmp = tempdir();
    let server = Server::start(tmp.path(), &[]);
    let (status, body, _) = raw(&server, "POST /v1/jobs HTTP/1.1\r\nContent-Length: 40000000\r\n", &[b'x'; 65536]);
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("request body too large (limit 32 MB)")), "{body}");
    let (status, body, headers) = raw(&server, "GET /v1/jobs/x/stop HTTP/1.1\r\n", b"");
    assert_eq!(status, 405, "{body}");
    assert!(body["error"].is_string(), "{body}");
    assert!(headers.to_lowercase().contains("allow: post"), "{headers}");
    let (status, body, _) = raw(&server, "GET /v2/nothing HTTP/1.1\r\n", b"");
    assert_eq!(status, 404);
    assert!(body["error"].is_string(), "{body}");
}

#[test]
fn an_input_over_the_body_limit_is_reported_as_such() {
    let tmp = tempdir();
    let _server = Server::start(tmp.path(), &[]);
    let input = tmp.path().join("big.txt");
    let line = "y".repeat(1000);
    std::fs::write(&input, (0..40_000).map(|_| line.as_str()).collect::<Vec<_>>().join("\n")).unwrap();
    let out =
        rsp_with(&["job", "start", "--no-autostart", "-e", "return _", "--input", input.to_str().unwrap()], |c| {
            c.env("RSP_STATE_DIR", tmp.path());
        });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("request body too large") && stderr.contains("limit 32 MB"), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
}

#[test]
fn a_large_output_reaches_the_client_whole_in_pages() {
    let tmp = tempdir();
    let server = Server::start(tmp.path(), &[]);
    // 1,500 records of ~20 KB: 30 MB, far over one page's bytes.
    let body =
        json!({"name": "big", "script": "return string.rep('z', 20000) .. _", "range": {"start": 1, "end": 1500}});
    assert_eq!(server.call("POST", "/v1/jobs", Some(&body)).0, 201);
    assert_eq!(server.until("big", |j| j["state"] != "Running" && j["state"] != "Queued")["state"], "Completed");
    let (status, page) = server.call("GET", "/v1/jobs/big/output?limit=1000", None);
    assert_eq!(status, 200);
    let n = page["records"].as_array().unwrap().len();
    assert!(n > 0 && n < 1000, "a page is bounded by bytes too: {n} records");
    let out = rsp_with(&["job", "output", "big", "--format", "json"], |c| {
        c.env("RSP_STATE_DIR", tmp.path());
    });
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let records: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(records.len(), 1500);
    let mut indexes: Vec<i64> = records.iter().map(|r| r["index"].as_i64().unwrap()).collect();
    indexes.sort_unstable();
    assert_eq!(indexes, (0..1500).collect::<Vec<_>>());
    assert!(records.iter().all(|r| r["result"].as_str().is_some_and(|s| s.len() > 20000)));
    let out = rsp_with(&["job", "get", "big", "--format", "json"], |c| {
        c.env("RSP_STATE_DIR", tmp.path());
    });
    let job: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job["output_count"], 1500);
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let tmp = tempdir();
    let server = Server::start(tmp.path(), &[]);
    let body = json!({"name": "many", "script": "return _", "range": {"start": 1, "end": 20000}});
    assert_eq!(server.call("POST", "/v1/jobs", Some(&body)).0, 201);
    server.until("many", |j| j["state"] == "Completed");
    for format in ["table", "json"] {
        let mut child = Command::new(RSP)
            .args(["job", "output", "many", "--format", format])
            .env("RSP_STATE_DIR", tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        for _ in 0..5 {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
        }
        drop(reader); // `| head -5`
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{format}: {stderr}");
        assert!(!stderr.contains("panicked"), "{format}: {stderr}");
    }
}

#[test]
fn streams_are_stored_per_record_and_served_in_pages_with_a_tail() {
    let tmp = tempdir();
    let server = Server::start(tmp.path(), &[]);
    let body =
        json!({"name": "chatty", "script": "for i = 1, 300 do print('line ' .. i) end write_warning('w') return 1"});
    assert_eq!(server.call("POST", "/v1/jobs", Some(&body)).0, 201);
    let job = server.until("chatty", |j| j["state"] == "Completed");
    assert_eq!(job["stream_counts"], json!({"information": 300, "warning": 1}), "{job}");
    let tail = job["streams"]["information"].as_array().unwrap();
    assert_eq!((tail.len(), &tail[99]), (100, &json!("line 300")), "the description carries the last 100");
    assert_eq!(job["streams"]["warning"], json!(["w"]));
    let (status, page) = server.call("GET", "/v1/jobs/chatty/streams/information?tail=5", None);
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["offset"], 295);
    assert_eq!(page["records"], json!(["line 296", "line 297", "line 298", "line 299", "line 300"]));
    let (_, page) = server.call("GET", "/v1/jobs/chatty/streams/information?offset=0&limit=2", None);
    assert_eq!((page["total"].as_u64(), &page["records"]), (Some(300), &json!(["line 1", "line 2"])));
    for bad in [
        "/v1/jobs/chatty/streams/bogus",
        "/v1/jobs/chatty/streams/error?tail=0",
        "/v1/jobs/chatty/streams/error?tail=1&offset=2",
    ] {
        let (status, body) = server.call("GET", bad, None);
        assert_eq!(status, 400, "{bad}: {body}");
    }
    assert_eq!(server.call("GET", "/v1/jobs/nobody/streams/error", None).0, 404);
}

#[test]
fn big_integers_in_a_raw_request_arrive_as_their_digits() {
    let tmp = tempdir();
    let server = Server::start(tmp.path(), &[]);
    let body =
        br#"{"name": "big", "script": "return type(_), _", "inputs": [18446744073709551616, -9223372036854775809, 7]}"#;
    let head =
        format!("POST /v1/jobs HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n", body.len());
    let (status, answer, _) = raw(&server, &head, body);
    assert_eq!(status, 201, "{answer}");
    server.until("big", |j| j["state"] == "Completed");
    let (_, out) = server.call("GET", "/v1/jobs/big/output", None);
    let results: Vec<Value> = out["records"].as_array().unwrap().iter().map(|r| r["result"].clone()).collect();
    for digits in ["18446744073709551616", "-9223372036854775809"] {
        assert!(results.contains(&json!(["string", digits])), "{digits} was rounded: {out}");
    }
    assert!(results.contains(&json!(["number", 7])), "{out}");
}
