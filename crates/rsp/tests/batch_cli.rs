//! `rsp run` for large runs: batch mode, retries, halt rules, progress
//! lines, the job log, resume after `kill -9`, resume-failed, --results.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn rsp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rsp")).args(args).stdin(Stdio::null()).output().unwrap()
}

fn records(stdout: &[u8]) -> Vec<Value> {
    // A run killed mid-write may leave a truncated last line: skip it.
    String::from_utf8_lossy(stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Index → status of every complete line of a job log.
fn joblog(path: &Path) -> Vec<(u64, String, u32)> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 7).then(|| (f[1].parse().unwrap(), f[4].to_string(), f[5].parse().unwrap()))
        })
        .collect()
}

#[test]
fn batch_mode_tags_records_and_the_summary_counts_batches() {
    let out =
        rsp(&["run", "-e", "return _", "--range", "1..25", "--batch-size", "10", "--max-concurrent-batches", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let recs = records(&out.stdout);
    assert_eq!(recs.len(), 25);
    for r in &recs {
        let index = r["index"].as_u64().unwrap();
        assert_eq!(r["batch"].as_u64(), Some(index / 10));
        assert_eq!(r["batch_index"].as_u64(), Some(index % 10));
    }
    let out = rsp(&["run", "-e", "return _", "--range", "1..25", "--batch-size", "10", "--summary"]);
    let err = stderr(&out);
    assert!(err.contains("batches 3, batch size 10"), "{err}");
    assert!(err.contains("total 25, processed 25, successful 25, success rate 100.0%, retried 0"), "{err}");
    // --max-concurrent-batches is the throttle of batch mode only.
    let out = rsp(&["run", "-e", "return _", "--range", "1..2", "--max-concurrent-batches", "2"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn retries_are_recorded_and_summarised() {
    let out = rsp(&[
        "run",
        "-e",
        "if _ % 2 == 0 then error('even') end return _",
        "--range",
        "1..6",
        "--retries",
        "2",
        "--retry-delay",
        "1ms",
        "--summary",
    ]);
    assert_eq!(out.status.code(), Some(1));
    for r in records(&out.stdout) {
        let even = r["index"].as_u64().unwrap() % 2 == 1; // inputs 2, 4, 6
        assert_eq!(r["attempts"].as_u64().unwrap_or(1), if even { 3 } else { 1 }, "{r}");
    }
    assert!(stderr(&out).contains("retried 3"), "{}", stderr(&out));
}

#[test]
fn halt_rules_end_the_run_early_with_the_right_exit_code() {
    let out = rsp(&[
        "run",
        "-e",
        "if _ == 3 then error('bad') end sleep(0.01)",
        "--range",
        "1..500",
        "-t",
        "2",
        "--halt",
        "soon,fail=1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(records(&out.stdout).len() < 500);
    assert!(stderr(&out).contains("halted by --halt soon,fail=1"), "{}", stderr(&out));
    let out =
        rsp(&["run", "-e", "if _ > 1 then sleep(30) end", "--range", "1..50", "-t", "2", "--halt", "now,success=1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = rsp(&["run", "-e", "return _", "--range", "1..5", "--halt", "later"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn progress_on_a_non_terminal_prints_plain_lines() {
    let out = rsp(&["run", "-e", "write_progress('crunch', 50, 'n') return _", "--range", "1..40", "--progress"]);
    let err = stderr(&out);
    let last = err.lines().rfind(|l| l.starts_with("rsp: progress: ")).unwrap_or_default();
    assert!(last.starts_with("rsp: progress: 40/40 (100.0%)"), "{err}");
    assert!(last.contains("| crunch: n 50%"), "{err}");
    assert_eq!(records(&out.stdout).len(), 40, "progress must not reach stdout");
}

#[test]
fn resume_after_kill_9_runs_every_item_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("run.log");
    let results = dir.path().join("results");
    let out1 = dir.path().join("out1.jsonl");
    let n = 3000u64;
    let range = format!("1..{n}");
    let args = |out: &Path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rsp"));
        c.args(["run", "-e", "sleep(0.001) return _ * 2", "--range", &range, "-t", "2", "--joblog"])
            .arg(&log)
            .arg("--results")
            .arg(&results)
            .stdin(Stdio::null())
            .stdout(fs::File::create(out).unwrap())
            .stderr(Stdio::piped());
        c
    };
    let mut child = args(&out1).spawn().unwrap();
    // Kill it once a few hundred items are logged: well partway.
    let started = Instant::now();
    while joblog(&log).len() < 300 {
        assert!(started.elapsed() < Duration::from_secs(20), "the run made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    let first: Vec<(u64, String, u32)> = joblog(&log);
    assert!((first.len() as u64) < n, "the run ended before it was killed");

    let out2 = dir.path().join("out2.jsonl");
    let mut resume = args(&out2);
    resume.arg("--resume");
    let status = resume.status().unwrap();
    assert_eq!(status.code(), Some(0));

    // The job log: every input exactly once across the two runs.
    let all = joblog(&log);
    let mut seen = BTreeMap::new();
    for (index, status, _) in &all {
        assert_eq!(status, "Completed");
        *seen.entry(*index).or_insert(0) += 1;
    }
    assert_eq!(seen.len() as u64, n, "an input is missing");
    assert!(seen.values().all(|&c| c == 1), "an input ran twice");
    // The second run ran exactly what the first did not log.
    let logged: BTreeSet<u64> = first.iter().map(|e| e.0).collect();
    let second: Vec<u64> = records(&fs::read(&out2).unwrap()).iter().map(|r| r["index"].as_u64().unwrap()).collect();
    assert_eq!(second.len() as u64 + logged.len() as u64, n);
    assert!(second.iter().all(|i| !logged.contains(i)));
    // Stdout of the killed run: every logged item was printed first.
    let printed: BTreeSet<u64> =
        records(&fs::read(&out1).unwrap()).iter().map(|r| r["index"].as_u64().unwrap()).collect();
    assert!(logged.is_subset(&printed), "an item was logged before its record was written");
    // --results: one file per input.
    assert_eq!(fs::read_dir(&results).unwrap().count() as u64, n);
    let rec: Value = serde_json::from_slice(&fs::read(results.join("41.json")).unwrap()).unwrap();
    assert_eq!((rec["input"].as_u64(), rec["result"].as_u64()), (Some(42), Some(84)));
}

#[test]
fn resume_failed_reruns_only_the_failed_items() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("run.log");
    let log = log.to_str().unwrap();
    let out = rsp(&["run", "-e", "if _ % 3 == 0 then error('x') end return _", "--range", "1..30", "--joblog", log]);
    assert_eq!(out.status.code(), Some(1));
    let failed: BTreeSet<u64> = joblog(Path::new(log)).iter().filter(|e| e.1 == "Failed").map(|e| e.0).collect();
    assert_eq!(failed.len(), 10);
    // A plain --resume runs nothing: every item is logged.
    let out = rsp(&["run", "-e", "return _", "--range", "1..30", "--joblog", log, "--resume", "--summary"]);
    assert_eq!(records(&out.stdout).len(), 0);
    assert!(stderr(&out).contains("skipped 30 already in the job log"), "{}", stderr(&out));
    let out = rsp(&["run", "-e", "return _", "--range", "1..30", "--joblog", log, "--resume-failed"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rerun: BTreeSet<u64> = records(&out.stdout).iter().map(|r| r["index"].as_u64().unwrap()).collect();
    assert_eq!(rerun, failed);
    // Now the latest line of every item is Completed.
    let out = rsp(&["run", "-e", "return _", "--range", "1..30", "--joblog", log, "--resume-failed"]);
    assert_eq!(records(&out.stdout).len(), 0);
}

#[test]
fn a_truncated_last_joblog_line_is_tolerated_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("run.log");
    let logs = log.to_str().unwrap();
    let out = rsp(&["run", "-e", "return _", "--range", "1..5", "--joblog", logs]);
    assert_eq!(out.status.code(), Some(0));
    // Drop the last line's second half, as a crash in the middle of a write would.
    let text = fs::read_to_string(&log).unwrap();
    let last = text.trim_end().rsplit('\n').next().unwrap().to_string();
    let cut = &text[..text.len() - last.len() / 2 - 1];
    fs::write(&log, cut).unwrap();
    let out = rsp(&["run", "-e", "return _", "--range", "1..5", "--joblog", logs, "--resume"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("warning") && stderr(&out).contains("truncated"), "{}", stderr(&out));
    assert_eq!(records(&out.stdout).len(), 1, "only the item of the cut line runs again");
    let entries = joblog(&log);
    assert_eq!(entries.iter().map(|e| e.0).collect::<BTreeSet<_>>().len(), 5);
    assert_eq!(entries.len(), 5, "{:?}", fs::read_to_string(&log));
}

#[test]
fn resume_refuses_changed_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("run.log");
    let log = log.to_str().unwrap();
    rsp(&["run", "-e", "return _", "--range", "1..10", "--joblog", log]);
    let out = rsp(&["run", "-e", "return _", "--range", "2..11", "--joblog", log, "--resume"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("differs from the one in the job log"), "{}", stderr(&out));
    assert_eq!(records(&out.stdout).len(), 0);
}
