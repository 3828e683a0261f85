//! Attacks on `rsp run` with thousands of waiting items in flight: a reader
//! that goes away must end the run promptly and leave nothing behind.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RSP: &str = env!("CARGO_BIN_EXE_rsp");

/// The pids of `parent`'s children (started by any of its threads).
fn children(parent: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) else { return Vec::new() };
    let lists: Vec<String> =
        tasks.flatten().map(|task| std::fs::read_to_string(task.path().join("children")).unwrap_or_default()).collect();
    lists.iter().flat_map(|list| list.split_whitespace()).filter_map(|p| p.parse().ok()).collect()
}

/// Whether `pid` is still a process (a zombie counts: it was not reaped).
fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Runs `rsp run ARGS`, reads its first record, closes the pipe as `head -1`
/// does, and returns how long rsp took to exit afterwards, its exit code,
/// and the children it had just before.
fn first_line_then_close(args: &[&str], want_children: usize) -> (Duration, Option<i32>, Vec<u32>) {
    let mut child =
        Command::new(RSP).arg("run").args(args).stdin(Stdio::null()).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.contains("\"index\""), "{line}");
    let until = Instant::now() + Duration::from_secs(30);
    let mut kids = children(child.id());
    while kids.len() < want_children && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
        kids = children(child.id());
    }
    assert!(kids.len() >= want_children, "only {} children started", kids.len());
    drop(out);
    let closed = Instant::now();
    let deadline = closed + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (closed.elapsed(), status.code(), kids);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            for &kid in &kids {
                // SAFETY: kill on pids rsp started; a failed test must not
                // leave its hour-long sleeps behind.
                unsafe { libc::kill(kid as i32, libc::SIGKILL) };
            }
            panic!("rsp ran on for 20 s after its reader went away");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_reader_that_goes_away_ends_a_run_whose_other_items_wait_for_an_hour() {
    // `rsp run … | head -1`: one record, then 9,999 items sleeping for an
    // hour. rsp wrote nothing more, so it never met EPIPE and ran the hour.
    let (took, code, _) = first_line_then_close(
        &[
            "-e",
            "if _ == 1 then return 1 end sleep(3600)",
            "--range",
            "1..10000",
            "--throttle",
            "10000",
            "--threads",
            "1",
        ],
        0,
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_ne!(code, None);
}

#[test]
fn a_reader_that_goes_away_leaves_no_exec_child_behind() {
    let (took, _, kids) = first_line_then_close(
        &[
            "-e",
            "if _ == 1 then return 1 end return exec('sleep', {'3600'})",
            "--allow",
            "exec",
            "--range",
            "1..200",
            "--throttle",
            "200",
            "--threads",
            "1",
        ],
        20,
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let until = Instant::now() + Duration::from_secs(10);
    while kids.iter().any(|&k| alive(k)) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<_> = kids.iter().filter(|&&k| alive(k)).collect();
    assert!(left.is_empty(), "children outlived rsp: {left:?}");
}
