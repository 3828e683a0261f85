//! Attacks on `rsp worker`'s trust: a job row written by another user of
//! the store is hostile input. It must not get more than the worker's
//! `--allow-max`, crash or hang the worker, or lose its items silently.
//! Every test writes its jobs straight into a real PostgreSQL (no
//! `rsp run --cluster` to tidy them up first) and runs the real `rsp worker`.

mod jobs_common;
#[path = "../../runspace-server/tests/support/pg.rs"]
mod pg;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// An `rsp worker` process, killed when dropped.
struct Worker(Child);

impl Worker {
    fn start(url: &str, name: &str, extra: &[&str]) -> Worker {
        let child = Command::new(jobs_common::RSP)
            .args(["worker", "--store", url, "--name", name, "--slots", "2", "--poll", "100ms"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Worker(child)
    }

    fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fresh database with the store's schema in place.
fn fresh_store(prefix: &str) -> Option<(String, &'static pg::PgServer)> {
    let url = pg::fresh_database(prefix)?;
    drop(runspace_server::store::PgStore::open(&url).unwrap());
    Some((url, pg::shared()?))
}

fn db_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

/// Writes a cluster job as a hostile store user would: `request` as the
/// text of its request column, `chunks` as `(first, inputs text)`.
fn insert_job(server: &pg::PgServer, db: &str, name: &str, request: &str, chunks: &[(i64, &str)]) {
    let total: usize = chunks.len();
    let mut sql = format!(
        "INSERT INTO jobs (name, state, parallel, request, submitted_at, progress_total, cluster) \
         VALUES ('{name}', 'Queued', true, $q${request}$q$, 0, {total}, true);"
    );
    for (n, (first, inputs)) in chunks.iter().enumerate() {
        sql.push_str(&format!(
            "INSERT INTO chunks (job_id, chunk, first, inputs) \
             SELECT id, {n}, {first}, $q${inputs}$q$ FROM jobs WHERE name = '{name}';"
        ));
    }
    server.psql(db, &sql);
}

/// A request as `rsp run --cluster` writes it, with `overrides` on top.
fn request(script: &str, overrides: Value) -> String {
    let mut r = json!({
        "script": script, "script_name": "attack", "params": {}, "variables": {}, "modules": [],
        "allow": [], "cwd": "/", "env": {}, "memory_limit": null, "timeout_ms": null,
    });
    for (k, v) in overrides.as_object().unwrap() {
        r[k] = v.clone();
    }
    r.to_string()
}

/// Waits (up to 60 s) until `sql` answers something `done` accepts; the answer.
fn until(server: &pg::PgServer, db: &str, sql: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = server.psql(db, sql);
        if done(&answer) {
            return answer;
        }
        assert!(Instant::now() < deadline, "gave up waiting: {sql} still answers {answer:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn fs_roots_that_resolve_outside_the_workers_maximum_are_refused() {
    let Some((url, server)) = fresh_store("fsroots") else { return };
    let db = db_name(&url);
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().canonicalize().unwrap();
    let (granted, secret) = (base.join("granted"), base.join("secret"));
    std::fs::create_dir_all(&granted).unwrap();
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(granted.join("ok.txt"), "fine").unwrap();
    std::fs::write(secret.join("key.txt"), "SECRET").unwrap();
    std::os::unix::fs::symlink(&secret, granted.join("link")).unwrap();
    let (g, s) = (granted.display().to_string(), secret.display().to_string());
    let read = |path: &str| format!("return fs.read({})", json!(path));
    let secret_file = format!("{s}/key.txt");
    // Each asks for a root that, written, lies under the maximum, and
    // resolves outside it.
    let escapes = [
        ("dotdot", format!("fs:{g}/../secret")),
        ("link", format!("fs:{g}/link")),
        ("relative", "fs:../secret".to_string()),
        ("missing_dotdot", format!("fs:{g}/not-yet/../../secret")),
    ];
    for (name, allow) in &escapes {
        let req = request(&read(&secret_file), json!({"allow": [allow], "cwd": g}));
        insert_job(server, db, name, &req, &[(0, "[1]")]);
    }
    // And one that is honestly inside, as a control.
    insert_job(
        server,
        db,
        "inside",
        &request(&read(&format!("{g}/ok.txt")), json!({"allow": [format!("fs:{g}")]})),
        &[(0, "[1]")],
    );
    let _w = Worker::start(&url, "fsjail", &["--allow-max", &format!("fs:{g}")]);
    until(server, db, "SELECT state FROM jobs WHERE name = 'inside'", |s| s == "Completed");
    let refused = until(server, db, "SELECT count(*) FROM jobs WHERE name <> 'inside' AND refusals IS NOT NULL", |n| {
        n == escapes.len().to_string()
    });
    assert_eq!(refused, escapes.len().to_string());
    let outputs = server.psql(db, "SELECT string_agg(record, E'\\n') FROM outputs");
    assert!(!outputs.contains("SECRET"), "a job read outside the worker's maximum: {outputs}");
    assert!(outputs.contains("fine"), "{outputs}");
    let escaped = server.psql(db, "SELECT count(*) FROM jobs WHERE name <> 'inside' AND state <> 'Queued'");
    assert_eq!(escaped, "0", "an escaping job ran");
}

#[test]
fn capabilities_in_odd_spellings_are_never_granted_beyond_the_maximum() {
    let Some((url, server)) = fresh_store("oddcaps") else { return };
    let db = db_name(&url);
    let odd = ["EXEC", " exec ", "exec\t", "Exec", "fs,exec", "exec:/", "e\u{0445}ec", "env", "fs-write", "FS"];
    for (n, cap) in odd.iter().enumerate() {
        let req = request("return exec('true')", json!({"allow": [cap]}));
        insert_job(server, db, &format!("odd{n}"), &req, &[(0, "[1]")]);
    }
    let _w = Worker::start(&url, "fsonly", &["--allow-max", "fs"]);
    until(server, db, "SELECT count(*) FROM jobs WHERE refusals IS NOT NULL", |n| n == odd.len().to_string());
    assert_eq!(server.psql(db, "SELECT count(*) FROM outputs"), "0", "a job was granted more than fs");
}

#[test]
fn malformed_and_extreme_job_rows_neither_crash_the_worker_nor_lose_items_silently() {
    let Some((url, server)) = fresh_store("hostile") else { return };
    let db = db_name(&url);
    let ok = request("return _", json!({}));
    // Broken requests: each must be refused (with a reason), not crash.
    let broken = [
        ("notjson", "{not json".to_string()),
        ("array", "[1,2,3]".to_string()),
        ("noscript", request("return 1", json!({"script": null}))),
        ("badsyntax", request("return (", json!({}))),
        ("badmodule", request("return 1", json!({"modules": [{"name": "", "source": 5}, 7]}))),
        ("badcwd", request("return 1", json!({"cwd": "relative/dir"}))),
        ("badenv", request("return 1", json!({"env": {"A=B": "x", "": "y"}, "allow": []}))),
        ("badparams", request("return 1", json!({"params": {"_": 1, "bad name": 2}}))),
    ];
    for (name, req) in &broken {
        insert_job(server, db, name, req, &[(0, "[1]")]);
    }
    // Extreme numbers: a timeout of u64::MAX ms, a memory limit of u64::MAX,
    // a negative first index. They run (or are refused), never crash.
    let extreme = [
        ("hugetimeout", request("sleep(0.01) return _", json!({"timeout_ms": u64::MAX}))),
        ("hugememory", request("return _", json!({"memory_limit": u64::MAX}))),
        ("negtimeout", request("return _", json!({"timeout_ms": -5, "memory_limit": -1}))),
    ];
    for (name, req) in &extreme {
        insert_job(server, db, name, req, &[(0, "[1, 2]")]);
    }
    insert_job(server, db, "negfirst", &ok, &[(-100, "[1, 2]")]);
    // Chunk inputs that are not a JSON array of items.
    insert_job(server, db, "badinputs", &ok, &[(0, "{oops")]);
    insert_job(server, db, "objinputs", &ok, &[(0, "{\"a\": 1}")]);
    // A control job after all of them: the worker must still be alive to run it.
    insert_job(server, db, "control", &ok, &[(0, "[1, 2, 3]")]);
    let mut w = Worker::start(&url, "target", &["--allow-max", "fs"]);
    until(server, db, "SELECT state FROM jobs WHERE name = 'control'", |s| s == "Completed");
    assert!(w.alive(), "the worker died");
    for (name, _) in &broken {
        let row = server.psql(db, &format!("SELECT state, coalesce(refusals, '') FROM jobs WHERE name = '{name}'"));
        assert!(row.starts_with("Queued|") && row.len() > "Queued|".len(), "{name}: {row}");
    }
    for name in ["hugetimeout", "hugememory", "negtimeout"] {
        let state = until(server, db, &format!("SELECT state FROM jobs WHERE name = '{name}'"), |s| {
            s != "Queued" && s != "Running"
        });
        let count = server.psql(
            db,
            &format!("SELECT count(*) FROM outputs o JOIN jobs j ON j.id = o.job_id WHERE j.name = '{name}'"),
        );
        assert_eq!((state.as_str(), count.as_str()), ("Completed", "2"), "{name}");
    }
    // Chunks whose inputs are not an array must not complete as "no items":
    // the job's items would be gone with the job Completed.
    for name in ["badinputs", "objinputs"] {
        let row = server.psql(
            db,
            &format!(
                "SELECT j.state, (SELECT count(*) FROM outputs o WHERE o.job_id = j.id), coalesce(j.refusals, '') \
                 FROM jobs j WHERE j.name = '{name}'"
            ),
        );
        assert!(!row.starts_with("Completed|0"), "{name}: its chunk was completed with no items: {row}");
    }
}

#[test]
fn sigterm_gives_back_a_chunk_of_endless_items_within_the_grace() {
    let Some((url, server)) = fresh_store("sigterm") else { return };
    let db = db_name(&url);
    insert_job(server, db, "endless", &request("sleep(3600) return _", json!({})), &[(0, "[1, 2, 3]")]);
    let mut w = Worker::start(&url, "leaving", &["--grace", "500ms", "--lease", "60s"]);
    until(server, db, "SELECT count(*) FROM chunks WHERE lease_owner IS NOT NULL", |n| n == "1");
    // SAFETY: kill on a child we own and have not reaped.
    unsafe { libc::kill(w.0.id() as i32, libc::SIGTERM) };
    let signalled = Instant::now();
    while w.alive() {
        assert!(signalled.elapsed() < Duration::from_secs(10), "the worker did not leave within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Given back at once, not left to expire with its 60 s lease.
    let row = server.psql(db, "SELECT coalesce(lease_owner, 'free'), done FROM chunks");
    assert_eq!(row, "free|f");
    assert_eq!(server.psql(db, "SELECT state FROM workers"), "stopped");
}

#[test]
fn a_worker_refuses_a_database_of_a_newer_schema_clearly_instead_of_retrying_for_ever() {
    let Some((url, server)) = fresh_store("newer") else { return };
    server.psql(db_name(&url), "UPDATE rsp_schema SET version = 99");
    let mut child = Command::new(jobs_common::RSP)
        .args(["worker", "--store", &url, "--name", "old"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            panic!("the worker still runs after 20 s against a newer schema: {err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_ne!(status.code(), Some(0), "{err}");
    assert!(err.contains("newer version") && err.contains("99"), "{err}");
}
