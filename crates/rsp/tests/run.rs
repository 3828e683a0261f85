//! `rsp run` driven the way a user drives it: the real binary, real pipes.

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn rsp() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rsp"));
    cmd.env("NO_COLOR", "1");
    cmd
}

fn run(args: &[&str]) -> Output {
    rsp().args(args).stdin(Stdio::null()).output().unwrap()
}

fn run_with_stdin(args: &[&str], stdin: &str) -> Output {
    let mut child =
        rsp().args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn records(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

fn by_index(mut recs: Vec<Value>) -> Vec<Value> {
    recs.sort_by_key(|r| r["index"].as_u64().unwrap());
    recs
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn seed_squares_example() {
    let out = run(&["run", "-e", "return _ * _", "--range", "1..100", "--throttle", "10"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let recs = by_index(records(&out));
    assert_eq!(recs.len(), 100);
    for (i, r) in recs.iter().enumerate() {
        let n = i as i64 + 1;
        assert_eq!(r["input"], json!(n));
        assert_eq!(r["result"], json!(n * n));
        assert_eq!(r["status"], "Completed");
        assert_eq!(r["errors"], json!([]));
        assert!(r["duration_ms"].as_f64().unwrap() >= 0.0);
    }
}

#[test]
fn script_file_variables_parameters_and_modules() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("geo.luau");
    std::fs::write(&module, "return { area = function(w, h) return w * h end }").unwrap();
    let script = dir.path().join("job.luau");
    std::fs::write(&script, "return { area = geo.area(_.w, _.h) * scale, label = label, tag = tag }").unwrap();
    let out = run_with_stdin(
        &[
            "run",
            script.to_str().unwrap(),
            "--input-format",
            "jsonl",
            "--module",
            module.to_str().unwrap(),
            "--var",
            "scale=2",
            "--var",
            "label=box",
            "--param",
            "tag={\"k\":[1]}",
        ],
        "{\"w\": 2, \"h\": 3}\n",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(records(&out)[0]["result"], json!({"area": 12, "label": "box", "tag": {"k": [1]}}));
}

#[test]
fn streams_and_statuses_in_records_and_exit_code_1() {
    let code = "if _ == 1 then write_warning('careful') print('info') return 'ok' \
                elseif _ == 2 then write_error('soft') return 'meh' \
                else error('hard') end";
    let out = run(&["run", "-e", code, "--range", "1..3", "--ordered"]);
    assert_eq!(out.status.code(), Some(1));
    let recs = records(&out);
    assert_eq!(recs[0]["status"], "Completed");
    assert_eq!(recs[0]["warning"], json!(["careful"]));
    assert_eq!(recs[0]["information"], json!(["info"]));
    assert!(recs[0].get("verbose").is_none(), "empty streams are left out");
    assert_eq!(recs[1]["status"], "CompletedWithErrors");
    assert_eq!(recs[1]["errors"], json!(["soft"]));
    assert_eq!(recs[2]["status"], "Failed");
    assert_eq!(recs[2]["errors"], json!(["script:1: hard"]));
}

#[test]
fn malformed_jsonl_lines_fail_only_their_item() {
    let out = run_with_stdin(
        &["run", "-e", "return _.n", "--input-format", "jsonl", "--ordered"],
        "{\"n\":1}\n{oops\n{\"n\":3}\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let recs = records(&out);
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[0]["result"], json!(1));
    assert_eq!(recs[1]["status"], "Failed");
    assert_eq!(recs[1]["input"], json!("{oops"));
    assert!(recs[1]["errors"][0].as_str().unwrap().contains("malformed JSON"));
    assert_eq!(recs[2]["result"], json!(3));
}

#[test]
fn lines_from_stdin_and_from_a_file() {
    let out = run_with_stdin(&["run", "-e", "return #_", "--format", "values", "--ordered"], "a\nbb\nccc\n");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n2\n3\n");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.json");
    std::fs::write(&input, "[10, 20]").unwrap();
    let out = run(&[
        "run",
        "-e",
        "return _ / 10",
        "--input",
        input.to_str().unwrap(),
        "--input-format",
        "json",
        "-f",
        "values",
        "--ordered",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n2\n");
}

#[test]
fn syntax_error_exits_2_with_the_line_before_anything_runs() {
    let out = run(&["run", "-e", "local x = 1\nreturn x +", "--range", "1..10"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    assert!(err.contains("syntax error") && err.contains("line 2"), "{err}");
}

#[test]
fn usage_errors_exit_2_and_say_what_is_wrong() {
    let cases: &[(&[&str], &str)] = &[
        (&["run", "-e", "return 1", "--range", "1..x"], "'x' is not an integer"),
        (&["run", "-e", "return 1", "--range", "5"], "no '..'"),
        (&["run", "-e", "return 1", "--var", "novalue"], "expected NAME=VALUE"),
        (&["run", "-e", "return 1", "--var", "for=1"], "not a valid identifier"),
        (&["run", "-e", "return 1", "--timeout", "soon"], "invalid duration"),
        (&["run", "-e", "return 1", "--memory-limit", "lots"], "invalid size"),
        (&["run", "/nonexistent/script.luau"], "cannot read script /nonexistent/script.luau"),
        (&["run", "-e", "return 1", "--input", "/nonexistent/in.txt"], "cannot read input /nonexistent/in.txt"),
        (&["run", "-e", "return 1", "--module", "/nonexistent/m.luau"], "/nonexistent/m.luau"),
        (&["run", "-e", "return 1", "--allow", "teleport"], "unknown capability 'teleport'"),
        (&["run", "-e", "return 1", "--throttle", "0"], "throttle"),
    ];
    for (args, expected) in cases {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(expected), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn a_bad_json_document_is_a_usage_error() {
    let out = run_with_stdin(&["run", "-e", "return _", "--input-format", "json"], "[1, 2");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("stdin is not valid JSON"), "{}", stderr(&out));
}

#[test]
fn timeouts_end_endless_loops_and_long_sleeps_promptly() {
    let started = Instant::now();
    let out = run(&[
        "run",
        "-e",
        "if _ == 1 then while true do end elseif _ == 2 then sleep(3600) end return _",
        "--range",
        "1..3",
        "--timeout",
        "200ms",
        "--ordered",
    ]);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1));
    let recs = records(&out);
    assert_eq!(recs[0]["status"], "TimedOut");
    assert_eq!(recs[1]["status"], "TimedOut");
    assert_eq!(recs[2]["status"], "Completed");
}

#[test]
fn a_memory_bomb_fails_only_its_item() {
    let bomb = "if _ == 2 then local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 1000) .. i end end return _";
    let out = run(&["run", "-e", bomb, "--range", "1..3", "--memory-limit", "16MB", "--ordered"]);
    assert_eq!(out.status.code(), Some(1));
    let recs = records(&out);
    assert_eq!(recs[1]["status"], "Failed");
    assert!(recs[1]["errors"][0].as_str().unwrap().contains("memory limit of 16 MB exceeded"));
    assert_eq!((recs[0]["result"].clone(), recs[2]["result"].clone()), (json!(1), json!(3)));
}

#[test]
fn ordered_output_is_in_input_order() {
    let out =
        run(&["run", "-e", "sleep((50 - _) / 5000) return _", "--range", "1..50", "--throttle", "8", "--ordered"]);
    let inputs: Vec<i64> = records(&out).iter().map(|r| r["input"].as_i64().unwrap()).collect();
    assert_eq!(inputs, (1..=50).collect::<Vec<_>>());
}

#[test]
fn no_result_lost_or_duplicated_over_100_000_items() {
    let out = run(&["run", "-e", "return _ * 2", "--range", "1..100000", "--throttle", "4"]);
    assert_eq!(out.status.code(), Some(0));
    let mut seen = HashSet::new();
    for r in records(&out) {
        assert_eq!(r["result"], json!(r["input"].as_i64().unwrap() * 2));
        assert!(seen.insert(r["index"].as_u64().unwrap()));
    }
    assert_eq!(seen.len(), 100_000);
}

#[test]
fn formats_json_csv_and_table() {
    let out = run(&["run", "-e", "return {n = _}", "--range", "1..3", "-f", "json"]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc.as_array().unwrap().len(), 3);
    let out = run(&["run", "-e", "return _", "--range", "1..2", "-f", "csv", "--ordered"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("index,input,result,status,errors,duration_ms"));
    assert!(lines.next().unwrap().starts_with("0,1,1,Completed,,"));
    let out = run(&["run", "-e", "return 'hello'", "--range", "1..1", "-f", "table"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("INDEX") && text.contains("Completed") && text.contains("hello"), "{text}");
}

#[test]
fn summary_goes_to_stderr_when_asked() {
    let out = run(&["run", "-e", "if _ == 2 then error('x') end", "--range", "1..3", "--summary"]);
    let err = stderr(&out);
    assert!(err.contains("Summary: 3 items"), "{err}");
    assert!(err.contains("2 completed, 0 with errors, 1 failed, 0 timed out, 0 stopped"), "{err}");
    assert!(!err.contains('\u{1b}'), "no colour when NO_COLOR is set or stderr is not a terminal");
    let quiet = run(&["run", "-e", "return 1", "--range", "1..3"]);
    assert!(stderr(&quiet).is_empty(), "no summary by default off a terminal");
}

#[test]
fn no_input_on_a_terminal_or_empty_stdin() {
    // Empty piped stdin: nothing to do, success.
    let out = run_with_stdin(&["run", "-e", "return 1"], "");
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
}

#[test]
fn ctrl_c_prints_finished_results_and_the_summary_and_exits_130() {
    let child = rsp()
        .args([
            "run",
            "-e",
            "if _ <= 3 then return _ end sleep(3600)",
            "--range",
            "1..20",
            "--throttle",
            "4",
            "--summary",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let pid = child.id() as libc::pid_t;
    // First Ctrl-C drains (the sleepers would run an hour), the second stops them.
    unsafe { libc::kill(pid, libc::SIGINT) };
    std::thread::sleep(Duration::from_millis(200));
    unsafe { libc::kill(pid, libc::SIGINT) };
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    let recs = records(&out);
    let completed = recs.iter().filter(|r| r["status"] == "Completed").count();
    assert_eq!(completed, 3, "{recs:?}");
    assert!(recs.iter().all(|r| r["status"] == "Completed" || r["status"] == "Stopped"));
    let err = stderr(&out);
    assert!(err.contains("Summary:") && err.contains("interrupted"), "{err}");
}

#[test]
fn a_closed_pipe_stops_the_run_quietly() {
    let mut child = rsp()
        .args(["run", "-e", "return _", "--range", "1..100000000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = [0u8; 4096];
    std::io::Read::read(&mut stdout, &mut buf).unwrap();
    drop(stdout);
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}
