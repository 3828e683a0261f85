//! `rsp run` keeps its bounds whatever the script does: long library calls
//! end at the timeout, endless modules fail the start, output is capped,
//! and a run fed by a blocked pipe still ends on Ctrl-C. Time bounds are
//! loose hang-catchers; `bench/limits.sh` measures the real latencies.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Something that should take a second or so must end before this.
const HANG: Duration = Duration::from_secs(10);

fn rsp() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rsp"));
    cmd.env("NO_COLOR", "1");
    cmd
}

fn run(args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let out = rsp().args(args).stdin(Stdio::null()).output().unwrap();
    (out, started.elapsed())
}

fn records(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_endless_module_fails_the_run_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("spin.luau");
    std::fs::write(&module, "while true do end\nreturn {}\n").unwrap();
    let (out, took) = run(&["run", "--module", module.to_str().unwrap(), "--timeout", "1s", "-e", "return 1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(took < HANG, "took {took:?}");
    assert!(
        stderr(&out).contains("module 'spin' failed to load: did not finish loading within 1s"),
        "{}",
        stderr(&out)
    );
}

/// Each of these spent 20-45 s inside one C call, beyond the interrupt.
#[test]
fn long_library_calls_end_at_the_timeout() {
    let cases = [
        r#"local s=string.rep("a",2^24) local p=string.rep("a",2^16).."b" while true do string.find(s,p,1,true) end"#,
        r#"local s=string.rep("a",2^24) local p=string.rep("a",2^16).."b" while true do string.split(s,p) end"#,
        "while true do table.move({}, -1073741824, 1073741822, -5, {}) end",
    ];
    for code in cases {
        let (out, took) = run(&["run", "--timeout", "1s", "--memory-limit", "64MB", "-e", code, "--range", "1..2"]);
        assert_eq!(out.status.code(), Some(1), "{code}: {}", stderr(&out));
        let recs = records(&out);
        assert_eq!(recs.len(), 2, "{code}");
        assert!(recs.iter().all(|r| r["status"] == "TimedOut"), "{code}: {recs:?}");
        assert!(took < HANG, "{code} took {took:?}");
    }
}
