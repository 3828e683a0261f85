//! Ctrl-C during `rsp scan` keeps what was found: every result found so far
//! is printed, in every format, and the exit code is 130.
//!
//! SAFETY RULE: these tests scan only 127.0.0.1.
//!
//! To interrupt a scan at a known moment without timing guesses, the scan
//! covers two ports: one open listener, which tells the test it was probed
//! by accepting the connection, and one listener whose accept queue is full,
//! so Linux drops further SYNs and that probe waits for its (long) timeout.
//! The host is therefore still unfinished when SIGINT arrives: its open port
//! must be printed anyway.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A listener whose accept queue is full: connections to it hang. The
/// returned streams keep the queue full.
fn silent_listener() -> (TcpListener, Vec<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    // The std backlog is 128; Linux queues backlog + 1 before dropping SYNs.
    for _ in 0..1000 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => held.push(s),
            Err(_) => return (listener, held),
        }
    }
    panic!("the accept queue of {addr} never filled");
}

fn interrupted_scan(format: &str) -> (Option<i32>, String, String, u16) {
    let open = TcpListener::bind("127.0.0.1:0").unwrap();
    let open_port = open.local_addr().unwrap().port();
    let (silent, _held) = silent_listener();
    let silent_port = silent.local_addr().unwrap().port();
    let ports = format!("{open_port},{silent_port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rsp"))
        .args(["scan", "127.0.0.1", "-p", &ports, "--timeout", "60s", "--retries", "0", "--format", format])
        .args(["--show", "open"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The scan has found the open port once it connected to it.
    open.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if open.accept().is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the scan never probed the open port");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Give the scanner a moment to receive the answer (it is reported as
    // soon as the connect returns, which the accept above just followed).
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: kill(2) on the child we spawned and still own; no memory is involved.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("rsp scan did not end within 10 s of Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    let mut err = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (status.code(), out, err, open_port)
}

#[test]
fn ctrl_c_prints_what_was_found_in_every_format_and_exits_130() {
    for format in ["table", "jsonl", "csv", "grepable"] {
        let (code, out, err, port) = interrupted_scan(format);
        assert_eq!(code, Some(130), "{format}: {err}");
        let found = match format {
            "table" => format!("{port}/tcp"),
            "jsonl" => format!("\"port\":{port},\"state\":\"open\""),
            "csv" => format!("127.0.0.1,127.0.0.1,{port},open"),
            _ => format!("{port}/open/tcp"),
        };
        assert!(out.contains(&found), "{format}: no {found:?} in the output:\n{out}\nstderr:\n{err}");
        assert!(err.contains("Scan summary (stopped)"), "{format}: {err}");
    }
}
