//! End-to-end tests of `rsp scan` inside network namespaces the test
//! creates itself: filtered states with their reasons, fairness between a
//! silent and a fast host, back-off when out of file descriptors, and
//! self-connects on a tiny ephemeral port range.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables); each test prints a SKIP
//! line and passes when it cannot build its namespaces.
//!
//! SAFETY RULE: these tests scan only 127.0.0.0/8 and addresses inside the
//! namespaces they create (and remove on drop). No other address, ever.

use std::io::Write;
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn jsonl(o: &Output) -> Vec<Value> {
    stdout(o).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}"))).collect()
}

/// Two namespaces joined by a veth pair: the scanner runs in `a`
/// (10.231.x.1), the target lives in `b` (10.231.x.2). Removed on drop.
struct Lab {
    a: String,
    b: String,
    target: String,
}

fn sh(args: &[&str]) -> Result<(), String> {
    let o = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{}: {e}", args[0]))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!("{}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr)))
    }
}

impl Lab {
    /// Builds the lab, or says why it cannot (not root, no `ip`, no nft).
    fn new(tag: &str) -> Result<Lab, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root".into());
        }
        let id = std::process::id() % 10000;
        let sub = (id % 200) as u8 + 20;
        let lab = Lab { a: format!("rsp{tag}{id}a"), b: format!("rsp{tag}{id}b"), target: format!("10.231.{sub}.2") };
        let (va, vb) = (format!("v{tag}{id}a"), format!("v{tag}{id}b"));
        let setup = || -> Result<(), String> {
            sh(&["ip", "netns", "add", &lab.a])?;
            sh(&["ip", "netns", "add", &lab.b])?;
            sh(&["ip", "-n", &lab.a, "link", "add", &va, "type", "veth", "peer", "name", &vb, "netns", &lab.b])?;
            sh(&["ip", "-n", &lab.a, "addr", "add", &format!("10.231.{sub}.1/24"), "dev", &va])?;
            sh(&["ip", "-n", &lab.b, "addr", "add", &format!("{}/24", lab.target), "dev", &vb])?;
            for (ns, dev) in [(&lab.a, &va), (&lab.b, &vb)] {
                sh(&["ip", "-n", ns, "link", "set", dev, "up"])?;
                sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            }
            Ok(())
        };
        setup()?;
        Ok(lab)
    }

    /// Adds nft rules in the target namespace (`rules` are rule bodies).
    fn firewall(&self, rules: &[&str]) -> Result<(), String> {
        let mut script =
            String::from("table inet rsptest {\n chain input {\n  type filter hook input priority 0; policy accept;\n");
        for r in rules {
            script.push_str(&format!("  {r}\n"));
        }
        script.push_str(" }\n}\n");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.b, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("nft: {e}"))?;
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        let o = child.wait_with_output().unwrap();
        if o.status.success() {
            Ok(())
        } else {
            Err(format!("nft: {}", String::from_utf8_lossy(&o.stderr)))
        }
    }

    /// A listener on the target address, created inside namespace `b`.
    fn listen(&self, port: u16) -> TcpListener {
        let (ns, addr) = (self.b.clone(), format!("{}:{port}", self.target));
        std::thread::spawn(move || {
            let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("open netns");
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this short-lived thread only; fd is valid.
            let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns");
            TcpListener::bind(addr).expect("bind in namespace")
        })
        .join()
        .unwrap()
    }

    /// `rsp scan` run inside namespace `a`.
    fn rsp(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.a, env!("CARGO_BIN_EXE_rsp"), "scan"]);
        c
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.a]);
        let _ = sh(&["ip", "netns", "del", &self.b]);
    }
}

macro_rules! lab_or_skip {
    ($tag:expr, $name:expr) => {
        match Lab::new($tag) {
            Ok(lab) => lab,
            Err(why) => {
                eprintln!("SKIP {}: cannot create a network namespace ({why})", $name);
                return;
            }
        }
    };
}

fn states(o: &Output) -> std::collections::BTreeMap<u64, (String, String)> {
    jsonl(o)
        .iter()
        .map(|r| {
            (r["port"].as_u64().unwrap(), (r["state"].as_str().unwrap().into(), r["reason"].as_str().unwrap().into()))
        })
        .collect()
}

#[test]
fn filtered_states_with_reasons_in_a_namespace() {
    let lab = lab_or_skip!("f", "filtered_states_with_reasons_in_a_namespace");
    if let Err(why) = lab.firewall(&["tcp dport 8081 drop", "tcp dport 8082 reject with icmpx type host-unreachable"]) {
        eprintln!("SKIP filtered_states_with_reasons_in_a_namespace: no nft ({why})");
        return;
    }
    let _open = lab.listen(8080);
    let started = Instant::now();
    let o = lab
        .rsp()
        .args([&lab.target, "-p", "8080-8083", "--timeout", "300ms", "--retries", "1"])
        .args(["--format", "jsonl"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let s = states(&o);
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(s[&8080], pair("open", "syn-ack"));
    assert_eq!(s[&8081], pair("filtered", "no-response"));
    assert_eq!(s[&8082], pair("filtered", "host-unreach"));
    assert_eq!(s[&8083], pair("closed", "conn-refused"));
    let rec = jsonl(&o).into_iter().find(|r| r["port"] == 8081).unwrap();
    assert!(rec["rtt_ms"].is_null(), "a timeout has no rtt (never the timeout itself)");
    // One retry of one silent port: about 2 x 300 ms, not more.
    assert!(started.elapsed() < Duration::from_secs(5));

    // Routes in the scanner's namespace: unreachable and prohibited.
    sh(&["ip", "-n", &lab.a, "route", "add", "unreachable", "10.232.0.0/24"]).unwrap();
    sh(&["ip", "-n", &lab.a, "route", "add", "prohibit", "10.233.0.0/24"]).unwrap();
    let o = lab.rsp().args(["10.232.0.1", "10.233.0.1", "-p", "80", "--format", "jsonl"]).output().unwrap();
    let recs = jsonl(&o);
    let by: std::collections::HashMap<_, _> = recs
        .iter()
        .map(|r| (r["address"].as_str().unwrap().to_string(), r["reason"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(by["10.232.0.1"], "host-unreach");
    assert_eq!(by["10.233.0.1"], "admin-prohibited");
    assert!(recs.iter().all(|r| r["state"] == "filtered"));
}

#[test]
fn a_silent_host_does_not_starve_a_fast_one() {
    let lab = lab_or_skip!("s", "a_silent_host_does_not_starve_a_fast_one");
    if let Err(why) = lab.firewall(&["tcp dport 1-2000 drop"]) {
        eprintln!("SKIP a_silent_host_does_not_starve_a_fast_one: no nft ({why})");
        return;
    }
    // The silent host first; the fast one (loopback inside the namespace)
    // must still finish long before it.
    let o = lab
        .rsp()
        .args([&lab.target, "127.0.0.1", "-p", "1-200", "--timeout", "200ms"])
        .args(["--retries", "0", "--concurrency", "40", "--format", "grepable", "--show", "all"])
        .output()
        .unwrap();
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("Host: 127.0.0.1"), "fast host finished first: {text}");
    assert!(lines[1].contains("/filtered/"));
}

#[test]
fn out_of_descriptors_is_backed_off_not_reported() {
    let lab = lab_or_skip!("e", "out_of_descriptors_is_backed_off_not_reported");
    if let Err(why) = lab.firewall(&["tcp dport 9000-9199 drop"]) {
        eprintln!("SKIP out_of_descriptors_is_backed_off_not_reported: no nft ({why})");
        return;
    }
    let _open = lab.listen(9300);
    // Hard limit of 48 descriptors, budget of 500 sockets: socket() fails
    // with EMFILE until the scanner backs off to what fits.
    let mut cmd = lab.rsp();
    cmd.args([&lab.target, "-p", "9000-9199,9300", "--timeout", "200ms", "--retries", "0"]).args([
        "--concurrency",
        "500",
        "--format",
        "jsonl",
    ]);
    // SAFETY: setrlimit is async-signal-safe; runs in the child before exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            let rl = libc::rlimit { rlim_cur: 48, rlim_max: 48 };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let s = states(&o);
    assert_eq!(s.len(), 201);
    assert_eq!(s[&9300].0, "open");
    for p in 9000..9200u64 {
        assert_eq!(s[&p], ("filtered".to_string(), "no-response".to_string()), "port {p}");
    }
    assert!(stderr(&o).contains("Errors:         0"));
}

#[test]
fn self_connect_is_never_reported_open() {
    let lab = lab_or_skip!("c", "self_connect_is_never_reported_open");
    // Inside the scanner's namespace, make the ephemeral range tiny and scan
    // exactly it on loopback: every connect() has a good chance to pick its
    // own destination port as source port and connect to itself.
    sh(&["ip", "netns", "exec", &lab.a, "sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40007"])
        .or_else(|_| {
            sh(&[
                "ip",
                "netns",
                "exec",
                &lab.a,
                "sh",
                "-c",
                "echo '40000 40007' > /proc/sys/net/ipv4/ip_local_port_range",
            ])
        })
        .unwrap();
    for _ in 0..3 {
        let o = lab.rsp().args(["127.0.0.1", "-p", "40000-40007", "--format", "jsonl"]).output().unwrap();
        let s = states(&o);
        assert_eq!(s.len(), 8, "{}", stderr(&o));
        for (port, (state, reason)) in &s {
            assert_ne!(state, "open", "self-connect on {port} reported open");
            assert_eq!((state.as_str(), reason.as_str()), ("closed", "conn-refused"), "port {port}");
        }
    }
}
