//! `rsp scan` refuses the unreasonable and never panics on its way out:
//! target sets over the `--max-hosts` limit, machines with no source
//! address for a family, closed output streams, bad durations.
//!
//! SAFETY RULE: every scan that could reach beyond loopback (a refused
//! 0.0.0.0/0, should the refusal ever break) runs inside an empty network
//! namespace (`unshare -n`); the others scan only 127.0.0.0/8 and ::1.

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn rsp_path() -> &'static str {
    env!("CARGO_BIN_EXE_rsp")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `rsp ARGS` inside a new, empty network namespace after `setup`
/// (shell commands run in the namespace first). `None` when this machine
/// cannot make one (not root, no unshare): the caller prints SKIP.
fn in_netns(setup: &str, args: &[&str]) -> Option<(Output, Duration)> {
    let probe = Command::new("unshare").args(["-n", "true"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        return None;
    }
    let script = format!("{setup}\nexec \"$0\" \"$@\"");
    let started = Instant::now();
    let out = Command::new("unshare")
        // `timeout` ends a scan that should have been refused but was not.
        .args(["-n", "timeout", "30", "sh", "-c", &script, rsp_path()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Some((out, started.elapsed()))
}

#[test]
fn huge_target_sets_are_refused_before_any_probe() {
    for (target, count) in [("0.0.0.0/0", "4294967296"), ("10.0.0.0/8", "16777216"), ("::/96", "4294967296")] {
        let Some((out, took)) = in_netns("", &["scan", target, "-p", "80", "--format", "jsonl"]) else {
            eprintln!("SKIP: cannot create a network namespace");
            return;
        };
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{target}: {err}");
        assert!(err.contains(count) && err.contains("more than the limit of 65536"), "{target}: {err}");
        assert!(err.contains("--max-hosts"), "{err}");
        assert!(out.stdout.is_empty(), "{target}: something was probed");
        assert!(took < Duration::from_secs(10), "{target} took {took:?}");
    }
    // Several targets add up; an explicit limit lets a set through.
    let out = Command::new(rsp_path())
        .args(["scan", "127.0.0.1-20", "127.0.0.30", "-p", "1", "--max-hosts", "20", "--format", "jsonl"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("cover 21 addresses, more than the limit of 20"), "{}", stderr(&out));
    let out = Command::new(rsp_path())
        .args(["scan", "127.0.0.1-20", "-p", "1", "--max-hosts", "20", "--format", "jsonl"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 20);
}

#[test]
fn no_source_address_fails_fast_with_one_message_per_cause() {
    // Loopback up but without IPv6: ::1 has no source address (EADDRNOTAVAIL).
    let setup = "ip link set lo up && sysctl -qw net.ipv6.conf.lo.disable_ipv6=1";
    let args = ["scan", "::1", "127.0.0.1", "-p", "1-100", "--format", "jsonl", "--timeout", "1s"];
    let Some((out, took)) = in_netns(setup, &args) else {
        eprintln!("SKIP: cannot create a network namespace");
        return;
    };
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}: {err}");
    let messages: Vec<&str> = err.lines().filter(|l| l.starts_with("rsp scan:")).collect();
    assert_eq!(messages.len(), 1, "{err}");
    assert!(messages[0].contains("'::1'") && messages[0].contains("no source address"), "{err}");
    // IPv4 loopback is still scanned: 100 closed ports, no IPv6 record.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 100, "{stdout}");
    assert!(stdout.lines().all(|l| l.contains("\"address\":\"127.0.0.1\"") && l.contains("conn-refused")));

    // Loopback down: no route for IPv4 either; one message per cause, not per host.
    let args = ["scan", "127.0.0.0/24", "::1", "-p", "1-100", "--format", "jsonl"];
    let (out, took) = in_netns("", &args).unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}: {err}");
    let messages: Vec<&str> = err.lines().filter(|l| l.starts_with("rsp scan:")).collect();
    assert_eq!(messages.len(), 2, "{err}");
    assert!(err.contains("'127.0.0.0': not scanned (nor 255 more addresses): this machine has no route"), "{err}");
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(err.contains("Hosts scanned: 0/257"), "{err}");
}

#[test]
fn closed_stdout_and_stderr_end_quietly() {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just created and are owned here.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read); // every write to the pipe now fails with EPIPE
    for format in ["jsonl", "table", "csv", "grepable"] {
        let out = Command::new(rsp_path())
            .args(["scan", "127.0.0.1", "-p", "1-50", "--show", "all", "--format", format])
            .stdout(write.try_clone().unwrap())
            .stderr(write.try_clone().unwrap())
            .status()
            .unwrap();
        assert_eq!(out.code(), Some(0), "--format {format}: {out:?}");
    }
    // Only stderr closed (the summary): still no panic.
    let out = Command::new(rsp_path())
        .args(["scan", "127.0.0.1", "-p", "1-5", "--format", "jsonl"])
        .stdout(Stdio::null())
        .stderr(write.try_clone().unwrap())
        .status()
        .unwrap();
    assert_eq!(out.code(), Some(0), "{out:?}");
}

#[test]
fn durations_are_checked_and_bare_numbers_are_seconds() {
    for bad in ["4e31", "18446744073709551615s", "18446744073709551616", "0", "0ms", "-1", "soon"] {
        let flag = format!("--timeout={bad}");
        let out = Command::new(rsp_path()).args(["scan", "127.0.0.1", "-p", "1", &flag]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "--timeout {bad}: {}", stderr(&out));
        assert!(stderr(&out).contains("--timeout"), "{}", stderr(&out));
    }
    for good in ["500ms", "2", "1.5", "1m"] {
        let out = Command::new(rsp_path()).args(["scan", "127.0.0.1", "-p", "1", "--timeout", good]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "--timeout {good}: {}", stderr(&out));
    }
}

#[test]
fn net_probe_without_a_source_address_answers_at_once() {
    let setup = "ip link set lo up && sysctl -qw net.ipv6.conf.lo.disable_ipv6=1";
    let code = "local r = net.probe('::1', 80, {timeout = 30}) return r.state, r.reason, r.error";
    let args = ["run", "-e", code, "--range", "1..1", "--allow", "net", "--format", "values", "--no-summary"];
    let Some((out, took)) = in_netns(setup, &args) else {
        eprintln!("SKIP: cannot create a network namespace");
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("error") && stdout.contains("local-error") && stdout.contains("os error 99"), "{stdout}");
    assert!(took < Duration::from_secs(5), "took {took:?} (the probe's own timeout is 30 s)");
}
