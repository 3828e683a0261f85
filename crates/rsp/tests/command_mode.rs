//! `rsp run --cmd`: command mode driven the way a user drives it, checked
//! against GNU parallel's documented behaviour (and against `parallel
//! --dry-run` itself where GNU parallel is installed).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn rsp(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rsp"));
    cmd.env("NO_COLOR", "1").current_dir(dir);
    cmd
}

fn run_in(dir: &Path, args: &[&str]) -> Output {
    rsp(dir).args(args).stdin(Stdio::null()).output().unwrap()
}

fn run(args: &[&str]) -> Output {
    run_in(Path::new("."), args)
}

fn run_with_stdin(args: &[&str], stdin: &str) -> Output {
    let mut child = rsp(Path::new("."))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn records(out: &Output) -> Vec<Value> {
    let mut recs: Vec<Value> =
        stdout(out).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"))).collect();
    recs.sort_by_key(|r| r["index"].as_u64().unwrap());
    recs
}

fn dry_run(args: &[&str]) -> String {
    let mut full = vec!["run", "--dry-run"];
    full.extend_from_slice(args);
    let out = run(&full);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    stdout(&out)
}

/// `parallel --dry-run` for the same arguments, or None (with a message) when it is not installed.
fn gnu_dry_run(args: &[&str]) -> Option<String> {
    let out =
        Command::new("parallel").args(["--will-cite", "-k", "--dry-run"]).args(args).stdin(Stdio::null()).output();
    match out {
        Ok(out) if out.status.success() => Some(String::from_utf8_lossy(&out.stdout).into_owned()),
        _ => {
            eprintln!("GNU parallel is not installed: comparison with parallel --dry-run skipped");
            None
        }
    }
}

/// Each case: the template and argument lists as rsp takes them, and what
/// GNU parallel 20221122 prints for them with --dry-run.
const CASES: &[(&[&str], &str)] = &[
    (&["echo {}", ":::", "a.txt", "b"], "echo a.txt\necho b\n"),
    (&["echo {.}", ":::", "a.txt", "/x/b.c.txt", "a."], "echo a\necho /x/b.c\necho a\n"),
    (&["echo {/}", ":::", "a.txt", "/x/b.c.txt"], "echo a.txt\necho b.c.txt\n"),
    (&["echo {//}", ":::", "a.txt", "/x/b.c.txt", "/a"], "echo .\necho /x\necho /\n"),
    (&["echo {/.}", ":::", "a.txt", "/x/b.c.txt"], "echo a\necho b.c\n"),
    (&["echo {#}", ":::", "a", "b", "c"], "echo 1\necho 2\necho 3\n"),
    (&["echo", ":::", "a", "b", ":::", "1", "2"], "echo a 1\necho a 2\necho b 1\necho b 2\n"),
    (&["echo {2}-{1}", ":::", "a", "b", ":::", "1"], "echo 1-a\necho 1-b\n"),
    (&["echo {1.} {2/}", ":::", "a.b/c.d", ":::", "e/f.g"], "echo a.b/c f.g\n"),
    (&["echo {} x{}y", ":::", "a", ":::", "1"], "echo a 1 xa 1y\n"),
    (&["gzip -k", ":::", "a b.txt"], "gzip -k 'a b.txt'\n"),
    (&["echo {}", ":::", "it's"], "echo 'it'\"'\"'s'\n"),
];

#[test]
fn replacement_strings_and_sources_match_gnu_parallel() {
    for (args, want) in CASES {
        let mut rsp_args = vec!["--cmd", args[0]];
        rsp_args.extend_from_slice(&args[1..]);
        assert_eq!(dry_run(&rsp_args), *want, "rsp for {args:?}");
        if let Some(gnu) = gnu_dry_run(args) {
            assert_eq!(gnu, *want, "GNU parallel for {args:?}");
        }
    }
}

#[test]
fn argument_files_and_colsep_match_gnu_parallel() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f1"), "x\ny\n").unwrap();
    std::fs::write(dir.path().join("f2"), "1\n2\n").unwrap();
    let f1 = dir.path().join("f1").display().to_string();
    let f2 = dir.path().join("f2").display().to_string();
    let want = "echo x 1\necho x 2\necho y 1\necho y 2\n";
    assert_eq!(dry_run(&["--cmd", "echo {}", "::::", &f1, &f2]), want);
    if let Some(gnu) = gnu_dry_run(&["echo {}", "::::", &f1, &f2]) {
        assert_eq!(gnu, want);
    }
    let want = "echo q-p\necho s-r\n";
    assert_eq!(dry_run(&["--colsep", ",", "--cmd", "echo {2}-{1}", ":::", "p,q", "r,s"]), want);
    if let Some(gnu) = gnu_dry_run(&["--colsep", ",", "echo {2}-{1}", ":::", "p,q", "r,s"]) {
        assert_eq!(gnu, want);
    }
    // Lines on standard input, with a tab separator.
    let out = run_with_stdin(&["run", "--dry-run", "--colsep", "\\t", "--cmd", "cp {1} {2}"], "a\tb\nc d\te\n");
    assert_eq!(stdout(&out), "cp a b\ncp 'c d' e\n");
}

#[test]
fn commands_run_per_input_without_a_shell() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a.txt", "b c.txt"] {
        std::fs::write(dir.path().join(name), "hello\n").unwrap();
    }
    let out = run_in(dir.path(), &["run", "-j", "2", "--cmd", "gzip -k {}", ":::", "a.txt", "b c.txt"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(dir.path().join("a.txt.gz").exists() && dir.path().join("b c.txt.gz").exists());

    // Input order with -k, the command's own output printed as it is.
    let out = run_with_stdin(&["run", "-k", "-j", "4", "--cmd", "echo {#}:{}"], "x\ny\nz\n");
    assert_eq!(stdout(&out), "1:x\n2:y\n3:z\n", "{}", stderr(&out));
    let out = run(&["run", "-k", "--tag", "--cmd", "printf 'l1\\nl2\\n'", ":::", "a", "b"]);
    assert_eq!(stdout(&out), "a\tl1\na\tl2\nb\tl1\nb\tl2\n");

    // JSON Lines: the user's input, the command, its code, signal and output.
    let out = run(&["run", "-f", "jsonl", "--cmd", "echo", ":::", "a b"]);
    let recs = records(&out);
    assert_eq!(recs[0]["input"], "a b");
    assert_eq!(
        recs[0]["result"],
        json!({"command": "echo 'a b'", "exit_code": 0, "signal": null, "stdout": "a b\n", "stderr": ""})
    );
    let out = run(&["run", "-f", "jsonl", "--cmd", "echo", ":::", "a", ":::", "1"]);
    assert_eq!(records(&out)[0]["input"], json!(["a", "1"]));

    // A malformed JSON Lines input is a failed item, never a command.
    let out =
        run_with_stdin(&["run", "-f", "jsonl", "--input-format", "jsonl", "--cmd", "echo"], "[\"a\", 1]\n{oops\n");
    let recs = records(&out);
    assert_eq!(recs[0]["result"]["stdout"], "a 1\n");
    assert_eq!((recs[1]["input"].as_str(), recs[1]["status"].as_str()), (Some("{oops"), Some("Failed")));
}

#[test]
fn failing_and_signalled_commands_fail_their_item() {
    let out = run(&[
        "run",
        "-f",
        "jsonl",
        "--cmd",
        "sh -c",
        ":::",
        "echo first >&2; echo last >&2; exit 3",
        "kill -9 $$",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let recs = records(&out);
    assert_eq!((recs[0]["status"].as_str(), &recs[0]["result"]["exit_code"]), (Some("Failed"), &json!(3)));
    assert_eq!(recs[0]["errors"], json!(["exit code 3: first | last"]));
    assert_eq!(recs[0]["result"]["stderr"], "first\nlast\n");
    assert_eq!((recs[1]["status"].as_str(), &recs[1]["result"]["signal"]), (Some("Failed"), &json!(9)));
    assert_eq!(recs[1]["result"]["exit_code"], Value::Null);
    assert_eq!(recs[1]["errors"], json!(["killed by signal 9"]));
    assert_eq!(recs[2]["status"], "Completed");

    // In values format the error goes to stderr, naming the item and the command.
    let out = run(&["run", "--cmd", "sh -c 'exit 3'", ":::", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("rsp: item 0 (sh -c 'exit 3' x): exit code 3"), "{}", stderr(&out));

    let out = run(&["run", "-f", "jsonl", "--cmd", "no-such-program-rsp", ":::", "x"]);
    let recs = records(&out);
    assert_eq!(recs[0]["status"], "Failed");
    let error = recs[0]["errors"][0].as_str().unwrap();
    assert!(error.starts_with("no-such-program-rsp: No such file"), "{error}");
}

#[test]
fn output_of_concurrent_commands_never_interleaves() {
    let inputs: Vec<String> = (0..100).map(|i| format!("c{i}")).collect();
    let mut args = vec!["run", "-j", "8", "--cmd", "seq -f '{} %g' 10000", ":::"];
    args.extend(inputs.iter().map(String::as_str));
    let out = run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut current = "";
    for line in text.lines() {
        let (tag, _) = line.split_once(' ').unwrap_or_else(|| panic!("torn line {line:?}"));
        if tag != current {
            assert!(!counts.contains_key(tag), "the lines of {tag} are not contiguous");
            current = tag;
        }
        *counts.entry(tag).or_default() += 1;
    }
    assert_eq!(counts.len(), 100);
    assert!(counts.values().all(|&n| n == 10_000), "every command printed all of its lines");
}

#[test]
fn a_timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = run_in(
        dir.path(),
        &["run", "-f", "jsonl", "--timeout", "1s", "--shell", "--cmd", "sleep 300 & echo $! > {}; wait", ":::", "pid"],
    );
    assert!(started.elapsed() < Duration::from_secs(30), "the run did not end at its timeout");
    assert_eq!(records(&out)[0]["status"], "TimedOut", "{}", stderr(&out));
    let pid = std::fs::read_to_string(dir.path().join("pid")).unwrap();
    let proc = format!("/proc/{}/stat", pid.trim());
    // Killed means gone, or a zombie waiting for init to reap it.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::read_to_string(&proc) {
            Err(_) => break,
            Ok(stat) if stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')) => break,
            Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(stat) => panic!("the grandchild sleep outlived the timeout: {stat}"),
        }
    }
}

#[test]
fn hostile_inputs_are_never_executed() {
    let dir = tempfile::tempdir().unwrap();
    let hostile = ["$(touch pwned1)", "'; touch pwned2; '", "`touch pwned3`", "a;touch pwned4", "\"$(touch pwned5)\""];
    for mode in [&["--shell"][..], &[][..]] {
        let mut args = vec!["run", "-k"];
        args.extend_from_slice(mode);
        args.extend(["--cmd", "echo {}", ":::"]);
        args.extend(hostile);
        let out = run_in(dir.path(), &args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(stdout(&out), hostile.map(|h| format!("{h}\n")).concat(), "{mode:?}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "an input ran as a command: {left:?}");
}

#[test]
fn output_past_the_cap_fails_the_item() {
    let out = run(&["run", "-f", "jsonl", "--cmd", "head -c 16777300 /dev/zero", ":::", "x"]);
    let recs = records(&out);
    assert_eq!(recs[0]["status"], "Failed");
    assert!(recs[0]["errors"][0].as_str().unwrap().contains("output exceeds 16777216 bytes"), "{:?}", recs[0]);
    assert_eq!(recs[0]["result"]["stdout"].as_str().unwrap().len(), 16 << 20);
}

#[test]
fn the_job_log_resume_and_retries_work_for_commands() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("run.log").display().to_string();
    let first = run_in(dir.path(), &["run", "--joblog", &log, "--cmd", "echo", ":::", "a", "b", "c"]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 4, "a header and three items");
    let again = run_in(dir.path(), &["run", "--joblog", &log, "--resume", "--cmd", "echo", ":::", "a", "b", "c"]);
    assert_eq!((again.status.code(), stdout(&again)), (Some(0), String::new()), "{}", stderr(&again));

    // A command that fails once and then succeeds: the retry runs it again.
    let out = run_in(
        dir.path(),
        &[
            "run",
            "-f",
            "jsonl",
            "--retries",
            "2",
            "--retry-delay",
            "10ms",
            "--shell",
            "--cmd",
            "test -e {} || { touch {}; exit 1; }",
            ":::",
            "flag",
        ],
    );
    let recs = records(&out);
    assert_eq!((recs[0]["status"].as_str(), recs[0]["attempts"].as_u64()), (Some("Completed"), Some(2)));
}

#[test]
fn usage_errors_and_capabilities() {
    for (args, message) in [
        (&["run", "script.luau", ":::", "a"][..], "need --cmd"),
        (&["run", "-e", "return 1", ":::", "a"][..], "cannot be used with"),
        (&["run", "--cmd", "echo 'oops", ":::", "a"][..], "unclosed '"),
        (&["run", "--cmd", "echo", "-e", "return 1", ":::", "a"][..], "cannot be used with"),
        (&["run", "--cmd", "echo", "stray", ":::", "a"][..], "start with :::"),
        (&["run", "--allow", "fs", "--cmd", "echo", ":::", "a"][..], "--allow is for scripts"),
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
    }
    // --cmd grants exec to its own runner only: a script still needs --allow exec.
    let out = run(&["run", "-f", "jsonl", "--range", "1..1", "-e", "return exec('true').ok"]);
    let recs = records(&out);
    assert_eq!(recs[0]["status"], "Failed");
    assert!(recs[0]["errors"][0].as_str().unwrap().contains("needs the 'exec' capability"), "{:?}", recs[0]);
}

#[test]
fn without_inputs_on_a_terminal_nothing_runs() {
    // `script` gives rsp a terminal on stdin; skip where util-linux's script is missing.
    let line = format!("{} run --cmd 'touch ran-{{}}'", env!("CARGO_BIN_EXE_rsp"));
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("script").args(["-qec", &line, "/dev/null"]).current_dir(dir.path()).output();
    let Ok(out) = out else {
        eprintln!("script(1) is not installed: terminal test skipped");
        return;
    };
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(stdout(&out).contains("--cmd needs inputs"), "{}", stdout(&out));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "a command ran");
}
