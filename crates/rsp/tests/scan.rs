//! End-to-end tests of `rsp scan`, running the real binary.
//!
//! The network-namespace tests (filtered states, fairness, EMFILE back-off,
//! self-connect) are in `scan_netns.rs`.
//!
//! SAFETY RULE: these tests scan only 127.0.0.0/8 and ::1.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn rsp() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rsp"));
    c.arg("scan").env_remove("NO_COLOR");
    c
}

fn run(args: &[&str]) -> Output {
    rsp().args(args).output().expect("run rsp")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn jsonl(o: &Output) -> Vec<Value> {
    stdout(o).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}"))).collect()
}

fn plant(addr: &str) -> (TcpListener, u16) {
    let l = TcpListener::bind((addr, 0)).expect("bind a loopback listener");
    let port = l.local_addr().unwrap().port();
    (l, port)
}

#[test]
fn jsonl_schema_one_record_per_port() {
    let (_l, port) = plant("127.0.0.1");
    let spec = format!("20-23,{port}");
    let o = run(&["127.0.0.1", "-p", &spec, "--format", "jsonl"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let recs = jsonl(&o);
    assert_eq!(recs.len(), 5);
    // Fields in the documented order.
    assert!(stdout(&o).lines().all(|l| l.starts_with("{\"host\":\"127.0.0.1\",\"address\":")));
    for r in &recs {
        let keys: BTreeSet<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, BTreeSet::from(["host", "address", "port", "state", "reason", "rtt_ms", "service"]));
        assert_eq!(r["host"], "127.0.0.1");
        assert_eq!(r["address"], "127.0.0.1");
        assert!(r["port"].is_u64());
        assert!(r["rtt_ms"].is_f64(), "answered probes carry a measured rtt");
        assert!(r["service"].is_string() || r["service"].is_null());
        let (state, reason) = (r["state"].as_str().unwrap(), r["reason"].as_str().unwrap());
        if r["port"] == port {
            assert_eq!((state, reason), ("open", "syn-ack"));
        } else {
            assert_eq!((state, reason), ("closed", "conn-refused"));
        }
    }
    // The summary goes to stderr, never into the data stream.
    assert!(stderr(&o).contains("Hosts scanned: 1/1"));
    assert!(stderr(&o).contains("Open ports:     1"));
}

#[test]
fn full_scan_table_shows_exactly_the_planted_ports() {
    let planted: Vec<_> = (0..3).map(|_| plant("127.0.0.1")).collect();
    let o = run(&["127.0.0.1", "-p-", "--format", "jsonl", "--show", "open"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let open: BTreeSet<u64> = jsonl(&o).iter().map(|r| r["port"].as_u64().unwrap()).collect();
    for (_, p) in &planted {
        assert!(open.contains(&u64::from(*p)), "planted {p} missing");
    }
    let closed = 65535 - open.len();
    let closed = format!("{},{:03}", closed / 1000, closed % 1000);
    assert!(stderr(&o).contains(&format!("Closed ports:   {closed}")), "{}", stderr(&o));
    // Table format, not a terminal: no colour codes.
    let t = run(&["127.0.0.1", "-p", &planted[0].1.to_string(), "--format", "table"]);
    let text = stdout(&t);
    assert!(text.contains("Scan report for 127.0.0.1"), "{text}");
    assert!(text.contains(&format!("{}/tcp", planted[0].1)));
    assert!(text.contains("open") && !text.contains('\x1b'));
}

#[test]
fn several_hosts_csv_and_grepable() {
    let (_a, pa) = plant("127.0.0.2");
    let (_b, pb) = plant("127.0.0.3");
    let spec = format!("{pa},{pb}");
    let o = run(&["127.0.0.2-3", "-p", &spec, "--format", "csv"]);
    let text = stdout(&o);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("host,address,port,state,reason,rtt_ms,service"));
    let rows: BTreeSet<String> = lines.map(|l| l.split(',').take(5).collect::<Vec<_>>().join(",")).collect();
    assert!(rows.contains(&format!("127.0.0.2,127.0.0.2,{pa},open,syn-ack")));
    assert!(rows.contains(&format!("127.0.0.3,127.0.0.3,{pb},open,syn-ack")));
    assert_eq!(rows.len(), 4);

    let o = run(&["127.0.0.2", "127.0.0.3", "-p", &spec, "--format", "grepable"]);
    let text = stdout(&o);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains(&format!("Host: 127.0.0.2 ()\tPorts: {pa}/open/tcp//")));
    assert!(text.contains("Ignored State: 1 closed"));
}

#[test]
fn bad_port_specs_are_usage_errors_naming_the_problem() {
    for (spec, needle) in [
        ("0", "port 0"),
        ("70000", "out of range"),
        ("10-5", "reversed"),
        ("abc", "not a port number"),
        ("22,,80", "empty item"),
    ] {
        let o = run(&["127.0.0.1", "-p", spec]);
        assert_eq!(o.status.code(), Some(2), "-p {spec}");
        assert!(stderr(&o).contains(needle), "-p {spec}: {}", stderr(&o));
        assert!(o.stdout.is_empty());
    }
    let o = run(&["127.0.0.1", "--top-ports", "10", "-p", "80"]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&["127.0.0.1", "-p", "80", "--exclude-ports", "80"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no ports left"));
    let o = run(&["127.0.0.1", "--timeout", "soon"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("soon"));
    let o = run(&["127.0.0.1", "--show", "opne"]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no targets"));
}

#[test]
fn bad_targets_are_named_and_the_rest_is_scanned() {
    let (_l, port) = plant("127.0.0.1");
    let p = port.to_string();
    let o = run(&["127.0.0.300", "127.0.0.1", "127.0.0.9/33", "-p", &p, "--format", "jsonl"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("'127.0.0.300'") && err.contains("out of range"), "{err}");
    assert!(err.contains("'127.0.0.9/33'"), "{err}");
    let recs = jsonl(&o);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["state"], "open");

    let o = run(&["no-such-host.invalid", "localhost", "-p", &p, "--format", "jsonl"]);
    assert_eq!(o.status.code(), Some(1), "unresolvable host: exit 1");
    assert!(stderr(&o).contains("'no-such-host.invalid'"));
    let recs = jsonl(&o);
    assert_eq!(recs[0]["host"], "localhost");
    assert_eq!(recs[0]["address"], "127.0.0.1");

    // A bad exclusion must never widen a scan: refuse to start.
    let o = run(&["127.0.0.1", "--exclude", "127.0.0.x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("127.0.0.x"));
    let o = run(&["127.0.0.1", "--exclude", "127.0.0.300"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty());
}

#[test]
fn target_lists_and_exclusions() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("targets.txt");
    std::fs::write(&file, "# lab\n127.0.0.1 127.0.0.2\n127.0.0.3-5 # more\n").unwrap();
    let o = run(&["-iL", file.to_str().unwrap(), "--exclude", "127.0.0.2,127.0.0.5", "-p", "1", "--format", "jsonl"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let hosts: BTreeSet<String> = jsonl(&o).iter().map(|r| r["address"].as_str().unwrap().to_string()).collect();
    assert_eq!(hosts, BTreeSet::from(["127.0.0.1".into(), "127.0.0.3".into(), "127.0.0.4".into()]));

    let mut child = rsp()
        .args(["-iL", "-", "-p", "1", "--format", "jsonl"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"127.0.0.7\n::1\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(jsonl(&o).len(), 2, "{}", stderr(&o));
}

#[test]
fn ipv6_loopback_target() {
    let Ok(l) = TcpListener::bind("[::1]:0") else {
        eprintln!("SKIP ipv6_loopback_target: ::1 is not available");
        return;
    };
    let p = l.local_addr().unwrap().port().to_string();
    let o = run(&["::1", "-p", &p, "--format", "jsonl"]);
    let recs = jsonl(&o);
    assert_eq!((recs[0]["address"].as_str(), recs[0]["state"].as_str()), (Some("::1"), Some("open")));
}
