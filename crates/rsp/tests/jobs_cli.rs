//! `rsp job` end to end: autostart, every verb, formats, exit codes, and
//! the errors for an unknown job, a server that is down and a bad token.

mod jobs_common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use jobs_common::RSP;
use serde_json::{json, Value};

fn rsp(dir: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(RSP)
        .args(args)
        .env("RSP_STATE_DIR", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Never hang: every command here must end within 30 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("rsp {args:?} did not finish");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().unwrap()
}

fn json_out(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", String::from_utf8_lossy(&out.stdout), stderr(out)))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Kills the server a test started through autostart.
struct KillOnDrop(std::path::PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let info: Option<Value> =
            std::fs::read_to_string(self.0.join("server.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
        if let Some(pid) = info.and_then(|i| i["pid"].as_i64()) {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

#[test]
fn start_wait_list_get_output_stop_remove_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let _guard = KillOnDrop(dir.clone());

    // No server yet: a clear error, and start launches one.
    let out = rsp(&dir, &["job", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no job server is running"), "{}", stderr(&out));
    let out = rsp(
        &dir,
        &[
            "job",
            "start",
            "--name",
            "hello",
            "-e",
            "sleep(0.05) return greeting .. ', ' .. who",
            "--param",
            "who=world",
            "--var",
            "greeting=hi",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("started a job server in the background"), "{}", stderr(&out));
    assert_eq!(json_out(&out)["name"], "hello");

    // A parallel job from a file of inputs, with a module.
    let module = tmp.path().join("util.luau");
    std::fs::write(&module, "return { twice = function(x) return 2 * x end }").unwrap();
    let input = tmp.path().join("items.jsonl");
    std::fs::write(&input, "1\n2\n3\n").unwrap();
    let out = rsp(
        &dir,
        &[
            "job",
            "start",
            "--name",
            "each",
            "-e",
            "return util.twice(_)",
            "--module",
            module.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--input-format",
            "jsonl",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("started a job server"), "reuses the running server");

    let out = rsp(&dir, &["job", "wait", "hello", "each", "--timeout", "20s"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let waited = json_out(&out);
    assert_eq!(waited[0]["state"], "Completed");
    assert_eq!(waited[1]["progress"], json!({"done": 3, "total": 3}));

    // Piped: JSON Lines, like `rsp run`; --format json: one array.
    let out = rsp(&dir, &["job", "output", "hello"]);
    let line: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(line["value"], "hi, world");
    let out = rsp(&dir, &["job", "output", "hello", "--format", "json"]);
    assert_eq!(json_out(&out)[0]["value"], "hi, world");
    let out = rsp(&dir, &["job", "output", "each", "--format", "table"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    assert_eq!(lines, vec!["0\tCompleted\t2", "1\tCompleted\t4", "2\tCompleted\t6"]);

    let out = rsp(&dir, &["job", "get", "each", "--format", "table"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("State      Completed") && text.contains("Progress   3/3"), "{text}");
    let out = rsp(&dir, &["job", "list", "--state", "Completed"]);
    assert_eq!(json_out(&out)["total"], json!(2));
    let out = rsp(&dir, &["job", "list", "--format", "table"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.starts_with("NAME") && text.contains("hello") && text.contains("each"), "{text}");

    // A job that does not end: wait times out (exit 3), stop ends it, remove forgets it.
    rsp(&dir, &["job", "start", "--name", "spin", "-e", "while true do end"]);
    let t = Instant::now();
    let out = rsp(&dir, &["job", "wait", "spin", "--timeout", "300ms"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("timed out"), "{}", stderr(&out));
    assert!(t.elapsed() < Duration::from_secs(5));
    let out = rsp(&dir, &["job", "wait", "--all", "--timeout", "200ms"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("spin"));
    let out = rsp(&dir, &["job", "stop", "spin"]);
    assert_eq!(json_out(&out)["state"], "Stopped");
    let out = rsp(&dir, &["job", "wait", "spin"]);
    assert_eq!(out.status.code(), Some(1), "a stopped job is not a success");
    let out = rsp(&dir, &["job", "remove", "spin"]);
    assert_eq!(out.status.code(), Some(0));
    let out = rsp(&dir, &["job", "wait", "--all", "--timeout", "5s"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // Errors: unknown job, syntax error, duplicate name, bad option.
    let out = rsp(&dir, &["job", "get", "spin"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("job 'spin' not found"), "{}", stderr(&out));
    let out = rsp(&dir, &["job", "start", "-e", "return )"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("syntax error") && stderr(&out).contains("line 1"), "{}", stderr(&out));
    let out = rsp(&dir, &["job", "start", "--name", "hello", "-e", "return 1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    let out = rsp(&dir, &["job", "list", "--state", "Sleeping"]);
    assert_eq!(out.status.code(), Some(2));

    // A start that waits, with failure exit code.
    let out = rsp(&dir, &["job", "start", "--wait", "-e", "error('boom')"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json_out(&out)["state"], "Failed");

    // Bad token.
    let token = std::fs::read_to_string(dir.join("token")).unwrap();
    std::fs::write(dir.join("token"), "not-the-token\n").unwrap();
    let out = rsp(&dir, &["job", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("refused our token"), "{}", stderr(&out));
    std::fs::write(dir.join("token"), token).unwrap();

    // Server down (killed): a clear error; --no-autostart keeps it down.
    drop(_guard);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = rsp(&dir, &["job", "list"]);
        if out.status.code() == Some(1) && stderr(&out).contains("no job server is running") {
            break;
        }
        assert!(Instant::now() < deadline, "{}", stderr(&out));
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = rsp(&dir, &["job", "start", "--no-autostart", "-e", "return 1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("rsp serve --detach"), "{}", stderr(&out));
}

#[test]
fn serve_detach_and_a_second_server_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let _guard = KillOnDrop(dir.clone());
    let out = rsp(&dir, &["serve", "--detach", "--port", "0"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("started in the background"));
    let out = rsp(&dir, &["serve", "--port", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already running"), "{}", stderr(&out));
    let out = rsp(&dir, &["job", "start", "--wait", "--range", "1..3", "-e", "return _ + 1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json_out(&out)["progress"], json!({"done": 3, "total": 3}));
}
