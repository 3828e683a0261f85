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

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// An `rsp worker` process, killed when dropped.
struct Worker(Child);

impl Worker {
    fn start(url: &str, name: &str, extra: &[&str]) -> Worker {
        let child = Command::new(jobs_common::RSP)
            .args(["worker", "--store", url, "--name", name, "--slots", "2", "--poll", "200ms"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Worker(child)
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill on the pid of a child we own and have not reaped.
        unsafe { libc::kill(self.0.id() as i32, signal) };
    }

    /// SIGTERM, then its exit code and standard error (within 20 s).
    fn terminate(mut self) -> (Option<i32>, String) {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                let mut err = String::new();
                use std::io::Read;
                let _ = self.0.stderr.take().unwrap().read_to_string(&mut err);
                return (status.code(), err);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (None, String::new())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `rsp run ARGS` (with `--cluster URL` when given), bounded at 120 s.
fn rsp_run(args: &[&str], cluster: Option<&str>) -> std::process::Output {
    let mut c = Command::new(jobs_common::RSP);
    c.arg("run").args(args).args(["--format", "jsonl", "--summary"]);
    if let Some(url) = cluster {
        c.args(["--cluster", url]);
    }
    let child = c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(out) => out,
        Err(_) => {
            // Not reaped yet (wait_with_output has not returned), so the pid is still this child's.
            // SAFETY: kill on the pid of our unreaped child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("rsp run did not finish within 120 s");
        }
    }
}

/// `(index, input, result, status)` of every record, sorted by index.
fn records(stdout: &[u8]) -> Vec<(u64, Value, Value, String)> {
    let mut all: Vec<_> = String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|r| (r["index"].as_u64().unwrap(), r["input"].clone(), r["result"].clone(), r["status"].to_string()))
        .collect();
    all.sort_by_key(|r| r.0);
    all
}

/// A fresh database with the store's schema in place, so a test can query it at once.
fn fresh_store(prefix: &str) -> Option<String> {
    let url = pg::fresh_database(prefix)?;
    drop(runspace_server::store::PgStore::open(&url).unwrap());
    Some(url)
}

fn db_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

#[test]
fn two_and_three_workers_share_20000_items_exactly_once_like_a_local_run() {
    let Some(url) = pg::fresh_database("share") else { return };
    let server = pg::shared().unwrap();
    let script = ["-e", "return { n = _, sq = _ * _, s = tostring(_) .. '!' }", "--range", "1..20000"];
    let local = rsp_run(&script, None);
    assert_eq!(local.status.code(), Some(0));
    let expected = records(&local.stdout);
    assert_eq!(expected.len(), 20000);
    let mut workers = vec![Worker::start(&url, "w1", &[]), Worker::start(&url, "w2", &[])];
    for round in [2, 3] {
        if round == 3 {
            workers.push(Worker::start(&url, "w3", &[]));
        }
        let out = rsp_run(&script, Some(&url));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert!(stderr.contains("20,000 items"), "{stderr}");
        assert_eq!(records(&out.stdout), expected, "{round} workers: the same records as a local run");
    }
    // In the store: every item once per run, and the workers' counts add up.
    let counts = server.psql(db_name(&url), "SELECT count(*), count(DISTINCT (job_id, seq)) FROM outputs");
    assert_eq!(counts, "40000|40000");
    let done = server.psql(db_name(&url), "SELECT sum(items_done), sum(rejected) FROM workers");
    assert_eq!(done, "40000|0");
    let busy = server.psql(db_name(&url), "SELECT count(*) FROM workers WHERE items_done > 0");
    assert!(busy.parse::<u32>().unwrap() >= 2, "the work was shared: {busy} busy workers");
    // SIGTERM: each worker stops cleanly and says what it did.
    for w in workers {
        let (code, err) = w.terminate();
        assert_eq!(code, Some(0), "{err}");
        assert!(err.contains("stopped:") && err.contains("item(s) recorded"), "{err}");
    }
    let listed = Command::new(jobs_common::RSP).args(["worker", "list", "--store", &url]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(["w1", "w2", "w3"].iter().all(|w| listed.contains(w)) && listed.contains("stopped"), "{listed}");
}

#[test]
fn a_killed_worker_s_leases_expire_and_a_paused_worker_s_late_completion_is_fenced_off() {
    let Some(url) = fresh_store("kill") else { return };
    let server = pg::shared().unwrap();
    let lease = ["--lease", "2s", "--heartbeat", "300ms"];
    let paused = Worker::start(&url, "paused", &lease);
    let killed = Worker::start(&url, "killed", &lease);
    let script = "local x = 0 for i = 1, 300000 do x = x + i end return _";
    let url2 = url.clone();
    let run =
        std::thread::spawn(move || rsp_run(&["-e", script, "--range", "0..1999", "--chunk-size", "20"], Some(&url2)));
    let db = db_name(&url);
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.psql(db, "SELECT coalesce(sum(items_done), 0) FROM workers").parse::<u64>().unwrap() < 100 {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    // One dies; the other is paused, past its lease, while it holds a chunk.
    killed.signal(libc::SIGKILL);
    let holding = "SELECT count(*) FROM chunks WHERE lease_owner LIKE 'paused:%' AND NOT done";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        paused.signal(libc::SIGSTOP);
        std::thread::sleep(Duration::from_millis(100));
        if server.psql(db, holding) != "0" {
            break;
        }
        paused.signal(libc::SIGCONT);
        assert!(Instant::now() < deadline, "the paused worker never held a chunk");
        std::thread::sleep(Duration::from_millis(30));
    }
    let _finisher = Worker::start(&url, "finisher", &lease);
    let deadline = Instant::now() + Duration::from_secs(60);
    // Its chunk is taken over once its lease expires.
    while server.psql(db, holding) != "0" {
        assert!(Instant::now() < deadline, "the paused worker's lease never expired");
        std::thread::sleep(Duration::from_millis(100));
    }
    paused.signal(libc::SIGCONT);
    let out = run.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let got = records(&out.stdout);
    assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), (0..2000).collect::<Vec<_>>(), "every item once");
    assert_eq!(server.psql(db, "SELECT count(*), count(DISTINCT seq) FROM outputs"), "2000|2000");
    // The paused worker, resumed, found its lease gone: its completion was fenced off and counted.
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.psql(db, "SELECT rejected FROM workers WHERE name = 'paused'") == "0" {
        assert!(Instant::now() < deadline, "the late completion was not counted");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_ne!(server.psql(db, "SELECT rejected FROM jobs"), "0");
}

#[test]
fn a_worker_with_allow_max_fs_refuses_a_job_that_asks_for_exec_and_says_why() {
    let Some(url) = fresh_store("refuse") else { return };
    let server = pg::shared().unwrap();
    let _w = Worker::start(&url, "fsonly", &["--allow-max", "fs"]);
    let mut client = Command::new(jobs_common::RSP)
        .args(["run", "-e", "return _", "--range", "1..10", "--allow", "exec", "--cluster", &url, "--no-progress"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let db = db_name(&url);
    let deadline = Instant::now() + Duration::from_secs(30);
    let refusals = loop {
        let r = server.psql(db, "SELECT coalesce(refusals, '') FROM jobs");
        if !r.is_empty() {
            break r;
        }
        assert!(Instant::now() < deadline, "never refused");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        refusals.contains("worker fsonly") && refusals.contains("'exec'") && refusals.contains("(fs)"),
        "{refusals}"
    );
    assert_eq!(server.psql(db, "SELECT state, progress_done FROM jobs"), "Queued|0", "never granted, never run");
    let listed = server.psql(db, "SELECT name, items_done FROM workers");
    assert_eq!(listed, "fsonly|0");
    // Ctrl-C on the submitter stops the job everywhere.
    // SAFETY: kill on a child we own.
    unsafe { libc::kill(client.id() as i32, libc::SIGINT) };
    let status = client.wait().unwrap();
    let mut err = String::new();
    use std::io::Read;
    client.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("worker fsonly: the job asks for the 'exec' capability"), "{err}");
    assert_eq!(server.psql(db, "SELECT state FROM jobs"), "Stopped");
}

#[test]
fn workers_and_the_submitter_ride_out_a_database_restart() {
    let Some(server) = pg::PgServer::start() else { return };
    let url = server.new_database("restart");
    drop(runspace_server::store::PgStore::open(&url).unwrap());
    let _workers = [Worker::start(&url, "r1", &[]), Worker::start(&url, "r2", &[])];
    let script = "local x = 0 for i = 1, 200000 do x = x + i end return _ * 2";
    let url2 = url.clone();
    let run =
        std::thread::spawn(move || rsp_run(&["-e", script, "--range", "0..2999", "--chunk-size", "25"], Some(&url2)));
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.psql("restart", "SELECT coalesce(sum(items_done), 0) FROM workers").parse::<u64>().unwrap() < 200 {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.stop();
    std::thread::sleep(Duration::from_secs(2));
    server.start_again();
    let out = run.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("retrying"), "the submitter saw the database go: {stderr}");
    let got: BTreeSet<u64> = records(&out.stdout).iter().map(|r| r.0).collect();
    assert_eq!(got.len(), 3000);
    assert_eq!(server.psql("restart", "SELECT count(*), count(DISTINCT seq) FROM outputs"), "3000|3000");
}

/// Hosts as network namespaces, each joined to the database's namespace
/// (this one) by a veth pair; deleted when dropped.
struct Hosts {
    names: Vec<String>,
    links: Vec<String>,
    addresses: Vec<(String, String)>,
}

fn sh(args: &[&str]) -> Result<(), String> {
    let o = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{}: {e}", args[0]))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!("{}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr)))
    }
}

impl Hosts {
    /// `n` hosts; host `i` reaches the database at `addresses[i].0` and is `addresses[i].1`.
    fn new(n: usize) -> Result<Hosts, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root".into());
        }
        let id = std::process::id() % 10000;
        let sub = (id % 200) as u8 + 20;
        let mut hosts = Hosts { names: Vec::new(), links: Vec::new(), addresses: Vec::new() };
        for i in 0..n {
            let (ns, here, there) = (format!("rspc{id}h{i}"), format!("rspc{id}d{i}"), format!("rspc{id}w{i}"));
            sh(&["ip", "netns", "add", &ns])?;
            hosts.names.push(ns.clone());
            sh(&["ip", "link", "add", &here, "type", "veth", "peer", "name", &there, "netns", &ns])?;
            hosts.links.push(here.clone());
            let (db, host) = (format!("10.{}.{sub}.1", 234 + i), format!("10.{}.{sub}.2", 234 + i));
            sh(&["ip", "addr", "add", &format!("{db}/24"), "dev", &here])?;
            sh(&["ip", "-n", &ns, "addr", "add", &format!("{host}/24"), "dev", &there])?;
            sh(&["ip", "link", "set", &here, "up"])?;
            sh(&["ip", "-n", &ns, "link", "set", &there, "up"])?;
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            hosts.addresses.push((db, host));
        }
        Ok(hosts)
    }

    /// `rsp worker` on host `i`.
    fn worker(&self, i: usize, url: &str, name: &str, extra: &[&str]) -> Worker {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.names[i], jobs_common::RSP, "worker", "--store", url, "--name", name])
            .args(["--slots", "2", "--poll", "200ms"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Worker(child)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for link in &self.links {
            let _ = sh(&["ip", "link", "del", link]);
        }
        for ns in &self.names {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
    }
}

#[test]
fn a_host_cut_off_mid_run_loses_its_chunks_to_the_others_and_the_run_completes_exactly_once() {
    let hosts = match Hosts::new(2) {
        Ok(h) => h,
        Err(why) => {
            eprintln!("SKIP a_host_cut_off_mid_run…: cannot create network namespaces ({why})");
            return;
        }
    };
    let listen = format!("127.0.0.1,{},{}", hosts.addresses[0].0, hosts.addresses[1].0);
    let Some(server) = pg::PgServer::start_listening(&listen, &["10.0.0.0/8"]) else { return };
    let url = server.new_database("hosts");
    drop(runspace_server::store::PgStore::open(&url).unwrap());
    let lease = ["--lease", "2s", "--heartbeat", "300ms"];
    let _cut = hosts.worker(0, &server.url_at(&hosts.addresses[0].0, "hosts"), "cut", &lease);
    let _kept = hosts.worker(1, &server.url_at(&hosts.addresses[1].0, "hosts"), "kept", &lease);
    let script = "local x = 0 for i = 1, 200000 do x = x + i end return _";
    let url2 = url.clone();
    let run =
        std::thread::spawn(move || rsp_run(&["-e", script, "--range", "0..1999", "--chunk-size", "20"], Some(&url2)));
    let db = "hosts";
    let deadline = Instant::now() + Duration::from_secs(60);
    // Both hosts work; then the first is cut off while it holds a chunk.
    let holding = "SELECT count(*) FROM chunks WHERE lease_owner LIKE 'cut:%' AND NOT done";
    loop {
        let done: Vec<u64> = server
            .psql(db, "SELECT items_done FROM workers ORDER BY name")
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        if done.len() == 2 && done.iter().all(|&d| d > 0) && server.psql(db, holding) != "0" {
            break;
        }
        assert!(Instant::now() < deadline, "both hosts never worked: {done:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    sh(&["ip", "link", "set", &hosts.links[0], "down"]).unwrap();
    let out = run.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let got: Vec<u64> = records(&out.stdout).iter().map(|r| r.0).collect();
    assert_eq!(got, (0..2000).collect::<Vec<_>>(), "every item once");
    assert_eq!(server.psql(db, "SELECT count(*), count(DISTINCT seq) FROM outputs"), "2000|2000");
    let retaken = server.psql(db, "SELECT count(*) FROM chunks WHERE attempt > 1");
    assert_ne!(retaken, "0", "the cut-off host's chunk was taken over");
}

#[test]
fn rsp_job_start_with_a_store_submits_to_the_workers_and_a_server_on_that_store_shows_it() {
    let Some(url) = fresh_store("jobstart") else { return };
    let _w = Worker::start(&url, "jw", &[]);
    let out = Command::new(jobs_common::RSP)
        .args(["job", "start", "--name", "viapg", "-e", "return _ + 1", "--range", "1..100", "--store", &url, "--wait"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("viapg: Completed (100/100 items)"), "{stdout}");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--store", &url]);
    let (status, job) = server.call("GET", "/v1/jobs/viapg", None);
    assert_eq!((status, job["state"].as_str(), job["output_count"].as_u64()), (200, Some("Completed"), Some(100)));
    let (_, page) = server.call("GET", "/v1/jobs/viapg/output?limit=1", None);
    assert_eq!(page["records"][0]["result"], 2);
}
