//! One command line: every subcommand reads `--timeout` the same way,
//! decides colour the same way (`--color`, `NO_COLOR`), and reports errors
//! the same way (`rsp: error: …`, exit 2 for usage, 1 for failures).
//!
//! SAFETY RULE: the scans here touch only 127.0.0.1.

use std::net::TcpListener;
use std::process::{Command, Output};

fn rsp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rsp")).args(args).env_remove("NO_COLOR").output().expect("run rsp")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A state directory with no server in it.
fn empty_state() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn timeout_zero_is_refused_by_every_subcommand() {
    let state = empty_state();
    let dir = state.path().to_str().unwrap();
    let commands: [&[&str]; 6] = [
        &["run", "-e", "return 1", "--range", "1..1"],
        &["scan", "127.0.0.1", "-p", "1"],
        &["job", "start", "-e", "return 1", "--no-autostart", "--state-dir", dir],
        &["job", "wait", "x", "--state-dir", dir],
        &["job", "follow", "x", "--state-dir", dir],
        &["serve", "stop", "--state-dir", dir],
    ];
    for command in commands {
        for zero in ["0", "0s", "0ms"] {
            let o = rsp(&[command, &["--timeout", zero]].concat());
            assert_eq!(o.status.code(), Some(2), "{command:?} --timeout {zero}: {}", stderr(&o));
            assert!(stderr(&o).contains("must be longer than zero"), "{command:?}: {}", stderr(&o));
        }
    }
}

#[test]
fn a_bare_timeout_is_seconds_and_units_are_accepted() {
    // 1 means one second: an item sleeping 0.3 s completes (1 ms would time it out).
    let o = rsp(&["run", "-e", "sleep(0.3) return 'done'", "--range", "1..1", "--timeout", "1", "--format", "values"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "done\n");
    let o = rsp(&["run", "-e", "sleep(5)", "--range", "1..1", "--timeout", "200ms", "--format", "jsonl"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stdout(&o).contains("\"status\":\"TimedOut\""), "{}", stdout(&o));
    // job start accepts both spellings: parsing passes, then there is no server (exit 1, not 2).
    let state = empty_state();
    for t in ["1", "1.5", "500ms", "1m30s"] {
        let o = rsp(&[
            "job",
            "start",
            "-e",
            "return 1",
            "--no-autostart",
            "--timeout",
            t,
            "--state-dir",
            state.path().to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(1), "--timeout {t}: {}", stderr(&o));
    }
    for bad in ["soon", "5x", "-1"] {
        let o = rsp(&["scan", "127.0.0.1", "-p", "1", "--timeout", bad]);
        assert_eq!(o.status.code(), Some(2), "--timeout {bad}: {}", stderr(&o));
    }
}

#[test]
fn color_is_one_decision_for_every_subcommand() {
    let table = ["run", "-e", "return 1", "--range", "1..2", "--format", "table", "--summary"];
    let always = rsp(&[&["--color", "always"][..], &table].concat());
    assert!(stdout(&always).contains('\u{1b}'), "--color always colours stdout: {}", stdout(&always));
    assert!(stderr(&always).contains('\u{1b}'), "and the summary on stderr: {}", stderr(&always));
    // The flag is global: after the subcommand too, and spelled colour.
    let after = rsp(&[&table[..], &["--colour", "always"]].concat());
    assert!(stdout(&after).contains('\u{1b}'));
    for never in [rsp(&[&table[..], &["--color", "never"]].concat()), rsp(&table)] {
        assert!(!stdout(&never).contains('\u{1b}') && !stderr(&never).contains('\u{1b}'), "{}", stdout(&never));
    }
    // NO_COLOR wins over auto, but not over an explicit always.
    let o = Command::new(env!("CARGO_BIN_EXE_rsp")).args(table).env("NO_COLOR", "1").output().unwrap();
    assert!(!stdout(&o).contains('\u{1b}'));

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let scan = ["scan", "127.0.0.1", "-p", &port, "--format", "table"];
    let o = rsp(&[&scan[..], &["--color", "always"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("\u{1b}[32m"), "open in green: {}", stdout(&o));
    assert!(stderr(&o).contains('\u{1b}'), "the scan summary too: {}", stderr(&o));
    let o = rsp(&scan);
    assert!(!stdout(&o).contains('\u{1b}') && !stderr(&o).contains('\u{1b}'));
    let o = rsp(&["--color", "sometimes", "run", "-e", "return 1"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn scan_no_summary_prints_no_summary() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let o = rsp(&["scan", "127.0.0.1", "-p", &port, "--format", "jsonl"]);
    assert!(stderr(&o).contains("Scan summary"), "{}", stderr(&o));
    let o = rsp(&["scan", "127.0.0.1", "-p", &port, "--format", "jsonl", "--no-summary"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stderr(&o), "", "nothing on stderr");
    assert!(stdout(&o).contains("\"state\":\"open\""));
}

#[test]
fn every_subcommand_reports_errors_the_same_way() {
    let state = empty_state();
    let dir = state.path().to_str().unwrap();
    let cases: [(&[&str], i32, &str); 5] = [
        (&["run", "no-such-script.luau"], 2, "no-such-script.luau"),
        (&["scan", "127.0.0.1", "-p", "99999"], 2, "99999"),
        (&["serve", "--max-jobs", "0", "--state-dir", dir], 2, "--max-jobs"),
        (&["job", "list", "--state-dir", dir], 1, "rsp serve --detach"),
        (&["job", "list", "--limit", "0", "--state-dir", dir], 2, "--limit"),
    ];
    for (args, code, needle) in cases {
        let o = rsp(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.starts_with("rsp: error: "), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
