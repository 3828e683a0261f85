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

/// The input is a FIFO whose writer never writes: the feeder is blocked in
/// `read` for good. One Ctrl-C must still end the run.
#[test]
fn ctrl_c_ends_a_run_whose_input_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("f");
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string; mkfifo only creates the node.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    // Opening read-write does not wait for a reader; holding it open keeps
    // rsp's reads blocked instead of seeing the end of the input.
    let _writer = std::fs::OpenOptions::new().read(true).write(true).open(&fifo).unwrap();
    let child = rsp()
        .args(["run", "-e", "return _", "--summary"])
        .stdin(std::fs::File::open(&fifo).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    let out = rx.recv_timeout(HANG).unwrap_or_else(|_| {
        // SAFETY: as above; do not leave a hung rsp behind.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        panic!("rsp did not exit after Ctrl-C");
    });
    assert!(started.elapsed() < HANG);
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
}

/// A script stuck in one C call (`table.sort` with a C comparator) is
/// reported TimedOut soon after its timeout, and the run ends without
/// waiting for the call.
#[test]
fn rsp_reports_an_item_stuck_in_c_and_exits() {
    let code = "if _ == 1 then local t = table.create(2^22, 1) for i = 1, #t do t[i] = i end \
                table.sort(t, rawequal) end return _";
    let (out, took) = run(&["run", "--timeout", "2s", "--throttle", "2", "-e", code, "--range", "1..20"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(took < Duration::from_secs(2) + HANG, "took {took:?}");
    let recs = records(&out);
    assert_eq!(recs.len(), 20);
    let stuck: Vec<_> = recs.iter().filter(|r| r["status"] != "Completed").collect();
    assert_eq!(stuck.len(), 1, "{recs:?}");
    assert_eq!((stuck[0]["input"].as_i64(), stuck[0]["status"].as_str()), (Some(1), Some("TimedOut")));
    assert!(stuck[0]["errors"][0].as_str().unwrap().contains("runspace was replaced"), "{:?}", stuck[0]);
    assert!(stuck[0]["duration_ms"].as_f64().unwrap() >= 2000.0, "{:?}", stuck[0]);
}

/// rsp's peak resident memory in KB, from /proc (0 once it has exited).
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Scripts that print, emit or warn without end: each item fails at the
/// cap, the run goes on, and rsp's own memory stays small (it grew past
/// 1 GB before the cap).
#[test]
fn endless_output_fails_its_item_and_keeps_rsp_small() {
    for code in [
        "while true do print(string.rep('x', 1000)) end",
        "while true do emit(string.rep('x', 1000)) end",
        "while true do write_warning(string.rep('x', 1000)) end",
    ] {
        let child = rsp()
            .args(["run", "--max-output", "1MB", "--memory-limit", "16MB", "-e", code, "--range", "1..6"])
            .args(["--throttle", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
        let mut peak = 0;
        let out = loop {
            peak = peak.max(peak_rss_kb(pid));
            match rx.recv_timeout(Duration::from_millis(5)) {
                Ok(out) => break out,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(out.status.code(), Some(1), "{code}: {}", stderr(&out));
        let recs = records(&out);
        assert_eq!(recs.len(), 6, "{code}");
        for r in &recs {
            assert_eq!(r["status"], "Failed", "{code}");
            let error = r["errors"].as_array().unwrap().last().unwrap().as_str().unwrap();
            assert_eq!(error, "output limit of 1 MB exceeded", "{code}");
        }
        assert!(peak < 300 * 1024, "{code}: rsp peaked at {peak} KB");
    }
}

#[test]
fn g_is_writable_and_does_not_leak_between_items() {
    let code = "assert(_G.seen == nil) _G.seen = true _G[_] = _ * 2 return _G[_]";
    let (out, _) = run(&["run", "--throttle", "1", "-e", code, "--range", "1..5"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let results: Vec<_> = records(&out).iter().map(|r| r["result"].as_i64().unwrap()).collect();
    assert_eq!(results, vec![2, 4, 6, 8, 10]);
}

/// Items run in a Luau thread: `pcall` nests thousands deep (not ~200), and
/// the timeout still ends an endless loop under a thousand nested `pcall`s.
#[test]
fn deep_pcalls_work_and_do_not_escape_the_timeout() {
    let deep = "local function f(n) if n == 0 then return 0 end local ok, v = pcall(f, n - 1) \
                if not ok then error(v, 0) end return v + 1 end return f(5000)";
    let (out, _) = run(&["run", "-e", deep, "--range", "1..1"]);
    let record = &records(&out)[0];
    assert_eq!(record["status"], "Completed", "{record}");
    assert_eq!(record["result"], 5000);

    let endless =
        "local function f(n) if n == 0 then while true do end end pcall(f, n - 1) while true do end end f(1000)";
    let (out, took) = run(&["run", "-e", endless, "--range", "1..2", "--timeout", "1s"]);
    assert!(took < HANG, "took {took:?}");
    let statuses: Vec<_> = records(&out).iter().map(|r| r["status"].clone()).collect();
    assert_eq!(statuses, vec!["TimedOut", "TimedOut"], "{}", stderr(&out));
}

#[test]
fn a_small_table_that_stands_for_a_huge_value_fails_its_item_promptly() {
    // 40 levels, each holding the level below twice: a few KB in the VM,
    // 2^40 nodes as JSON. Converting it used to run (and allocate) forever,
    // after the script had returned and out of the timeout's reach.
    for (how, code) in [
        ("return", "local a = {} for i = 1, 40 do a = {a, a} end return a"),
        ("emit", "local a = {} for i = 1, 40 do a = {k = a, j = a} end emit(a)"),
    ] {
        // The timeout is generous so that a loaded machine cannot turn the
        // output-limit failure into a timeout; the conversion it guards
        // against ran forever, so 5 s still tells the two apart.
        let (out, took) = run(&["run", "-e", code, "--range", "1..2", "--timeout", "5s", "--max-output", "1MB"]);
        let recs = records(&out);
        assert_eq!(recs.len(), 2, "{how}: {}", stderr(&out));
        for r in &recs {
            assert_eq!(r["status"], "Failed", "{how}: {r}");
            assert!(r["errors"][0].as_str().unwrap().contains("output limit of 1 MB exceeded"), "{how}: {r}");
        }
        assert!(took < Duration::from_secs(30), "{how}: took {took:?}");
    }
}
