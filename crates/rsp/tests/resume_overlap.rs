//! Resume repeats only what was in flight (GNU parallel's guarantee): after
//! a `kill -9`, the records that appear in the output of both the killed
//! and the resumed run are at most the items the run had in flight — here
//! 8 batches of 50. Before, stdout ran up to 100 ms ahead of the job log
//! and 516 records appeared twice.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const ITEMS: u64 = 20_000;
const IN_FLIGHT: usize = 8 * 50;

fn indices(path: &Path) -> Vec<u64> {
    let text = fs::read_to_string(path).unwrap();
    // The killed run's last line may be cut in the middle: only whole records count.
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|r| r["index"].as_u64().expect("a record has an index"))
        .collect()
}

fn logged_lines(log: &Path) -> usize {
    fs::read_to_string(log).map_or(0, |t| t.lines().count())
}

fn run(log: &Path, out: &Path, resume: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rsp"));
    c.args(["run", "-e", "sleep(0.0001) return _", "--range", &format!("1..{ITEMS}")])
        .args(["--batch-size", "50", "--max-concurrent-batches", "8", "--joblog"])
        .arg(log)
        .stdin(Stdio::null())
        .stdout(fs::File::create(out).unwrap())
        .stderr(Stdio::null());
    if resume {
        c.arg("--resume");
    }
    c
}

#[test]
fn after_kill_9_only_items_in_flight_are_repeated() {
    // Killed at moments unrelated to the run's flushes: some time after the
    // first job-log line appeared (polling the log and killing as soon as it
    // grows would always strike just after a flush, when all is in step).
    for kill_after in [Duration::from_millis(37), Duration::from_millis(150), Duration::from_millis(420)] {
        let dir = tempfile::tempdir().unwrap();
        let (log, out1, out2) = (dir.path().join("run.log"), dir.path().join("1.jsonl"), dir.path().join("2.jsonl"));
        let mut child = run(&log, &out1, false).spawn().unwrap();
        let started = Instant::now();
        while logged_lines(&log) < 2 {
            assert!(started.elapsed() < Duration::from_secs(60), "the run made no progress");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(kill_after);
        // SAFETY: kill(2) on the child we spawned and have not reaped; no memory is involved.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
        child.wait().unwrap();
        let first = indices(&out1);
        assert!((first.len() as u64) < ITEMS, "the run ended before it was killed");

        let status = run(&log, &out2, true).status().unwrap();
        assert_eq!(status.code(), Some(0));
        let second = indices(&out2);

        let a: BTreeSet<u64> = first.iter().copied().collect();
        let b: BTreeSet<u64> = second.iter().copied().collect();
        assert_eq!(a.len(), first.len(), "the killed run printed an item twice");
        assert_eq!(b.len(), second.len(), "the resumed run printed an item twice");
        let all: BTreeSet<u64> = a.union(&b).copied().collect();
        assert_eq!(all.len() as u64, ITEMS, "a record was lost");
        let overlap = a.intersection(&b).count();
        assert!(overlap <= IN_FLIGHT, "killed after {kill_after:?}: {overlap} records printed by both runs");
    }
}
