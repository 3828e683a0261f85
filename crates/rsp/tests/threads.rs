//! `--threads` (runspaces) and `--throttle` (items in flight) through the
//! real binary.

use std::process::Command;
use std::time::{Duration, Instant};

fn rsp(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rsp")).args(args).output().unwrap()
}

#[test]
fn one_thread_runs_a_thousand_waiting_items_at_once() {
    let started = Instant::now();
    let out = rsp(&[
        "run",
        "-e",
        "sleep(0.2) return _",
        "--range",
        "1..1000",
        "--threads",
        "1",
        "--throttle",
        "1000",
        "--format",
        "values",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut got: Vec<u64> = String::from_utf8(out.stdout).unwrap().lines().map(|l| l.trim().parse().unwrap()).collect();
    got.sort();
    assert_eq!(got, (1..=1000).collect::<Vec<u64>>());
    // One item at a time this is 200 s.
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
}

#[test]
fn threads_is_the_number_of_runspaces_the_items_share() {
    // A module's locals are per runspace: its counter sees every item in
    // flight in its VM. One runspace holds all 300 at once; were `--threads`
    // ignored (a runspace per item), each would see only itself.
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("vm.luau");
    std::fs::write(
        &module,
        "local inflight, peak = 0, 0
         return {
           enter = function() inflight += 1; peak = math.max(peak, inflight) end,
           peak = function() return peak end,
         }",
    )
    .unwrap();
    let module = module.display().to_string();
    let peak = |threads: &str| {
        let code = "vm.enter() sleep(0.2) return vm.peak()";
        let args = ["run", "-e", code, "--module", &module, "--range", "1..300", "--throttle", "300"];
        let out = rsp(&[&args[..], &["--threads", threads, "--format", "values"]].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().lines().map(|l| l.trim().parse::<u64>().unwrap()).max().unwrap()
    };
    assert_eq!(peak("1"), 300);
    // At most two runspaces: one of them holds at least half.
    let two = peak("2");
    assert!(two >= 150, "300 items over at most 2 runspaces, yet the busiest held {two}");
}

#[test]
fn cpu_bound_runs_keep_their_results_and_the_throttle_still_times_items_out() {
    let out = rsp(&[
        "run",
        "-e",
        "if _ == 3 then while true do end end return _ * 2",
        "--range",
        "1..200",
        "--throttle",
        "2",
        "--timeout",
        "300ms",
        "--ordered",
        "--format",
        "values",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 199, "the timed-out item prints no value");
    assert_eq!(lines[0], "2");
    assert_eq!(lines[2], "8");
}

#[test]
fn threads_and_throttle_are_checked() {
    for bad in [["--threads", "0"], ["--throttle", "0"], ["--threads", "x"]] {
        let mut args = vec!["run", "-e", "return 1", "--range", "1..2"];
        args.extend(bad);
        let out = rsp(&args);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(bad[0]), "{bad:?}: {err}");
    }
}
