//! `rsp run` never panics on what a user can throw at it: overflowing
//! durations and sizes exit 2 with a message naming the flag, and a closed
//! stdout or stderr ends the run quietly instead of with exit 101.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};

fn rsp() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rsp"));
    cmd.env("NO_COLOR", "1").stdin(Stdio::null());
    cmd
}

fn run(args: &[&str]) -> Output {
    rsp().args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn overflowing_durations_and_sizes_exit_2_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["--timeout", "18446744073709551615s"], "--timeout"),
        (&["--timeout=4e31"], "--timeout"),
        (&["--timeout", "1e309"], "--timeout"),
        (&["--timeout", "99999999999999999999h"], "--timeout"),
        (&["--retry-delay=18446744073709551616"], "--retry-delay"),
        (&["--retry-delay=-1"], "--retry-delay"),
        (&["--memory-limit", "18446744073709551616"], "--memory-limit"),
        (&["--memory-limit", "1e300GB"], "--memory-limit"),
        (&["--halt", "now,fail=99999999999999999999999"], "--halt"),
        (&["--halt", "soon,fail=NaN%"], "--halt"),
        (&["--range", "-9223372036854775808..9223372036854775807"], "--range"),
    ];
    for (flags, flag) in cases {
        let mut args = vec!["run", "-e", "return 1", "--range", "1..2"];
        if flags[0] == "--range" {
            args.truncate(3);
        }
        args.extend_from_slice(flags);
        let out = run(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
        assert!(err.contains(flag) && !err.contains("panicked"), "{flags:?}: {err}");
        assert!(out.stdout.is_empty(), "{flags:?}");
    }
}

#[test]
fn a_zero_timeout_is_refused_with_a_reason() {
    for zero in ["0", "0s", "0ms", "0.0"] {
        let out = run(&["run", "-e", "return 1", "--range", "1..2", "--timeout", zero]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{zero}: {err}");
        assert!(err.contains("--timeout") && err.contains("longer than zero"), "{zero}: {err}");
    }
}

/// Reads the first line of stdout, then hangs up, as `| head -1` does.
fn first_line_then_hang_up(args: &[&str]) -> (String, Output) {
    let mut child = rsp().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    (first, child.wait_with_output().unwrap())
}

#[test]
fn a_reader_that_leaves_stdout_ends_the_run_quietly_with_success() {
    for format in ["values", "jsonl", "csv", "json"] {
        let (first, out) = first_line_then_hang_up(&["run", "-e", "return _", "--range", "1..2000000", "-f", format]);
        assert!(!first.is_empty(), "{format}");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{format}: {err}");
        assert!(!err.contains("panicked") && !err.contains("error"), "{format}: {err}");
    }
}

/// Runs with stderr a pipe whose reader is already gone.
fn with_stderr_hung_up(args: &[&str]) -> (std::process::ExitStatus, Vec<u8>) {
    let mut child = rsp().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stderr.take());
    let mut stdout = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut stdout).unwrap();
    (child.wait().unwrap(), stdout)
}

/// Runs with file descriptor 2 closed, as `2>&-` does.
fn with_stderr_closed(args: &[&str]) -> Output {
    let mut cmd = rsp();
    cmd.args(args);
    // SAFETY: between fork and exec only the async-signal-safe close(2) runs,
    // touching nothing of the parent's state.
    unsafe {
        cmd.pre_exec(|| {
            libc::close(2);
            Ok(())
        });
    }
    cmd.output().unwrap()
}

#[test]
fn write_error_in_values_format_survives_a_gone_or_closed_stderr() {
    let args = ["run", "-e", "write_error('bad ' .. _) return _", "--range", "1..20000", "-f", "values"];
    let (status, stdout) = with_stderr_hung_up(&args);
    // Every item ran (CompletedWithErrors: exit 1), and every value arrived.
    assert_eq!(status.code(), Some(1), "{status:?}");
    assert_eq!(stdout.iter().filter(|b| **b == b'\n').count(), 20000);
    let out = with_stderr_closed(&args);
    assert_eq!(out.status.code(), Some(1), "{:?}", out.status);
    assert_eq!(out.stdout.iter().filter(|b| **b == b'\n').count(), 20000);
}

#[test]
fn halt_message_and_summary_survive_a_gone_or_closed_stderr() {
    let args = ["run", "-e", "error('x')", "--range", "1..100", "--halt", "now", "--summary", "--progress"];
    let (status, _) = with_stderr_hung_up(&args);
    assert_eq!(status.code(), Some(1), "{status:?}");
    let out = with_stderr_closed(&args);
    assert_eq!(out.status.code(), Some(1), "{:?}", out.status);
    // A usage error with nowhere to say it still exits 2.
    let (status, _) = with_stderr_hung_up(&["run", "/nonexistent/script.luau"]);
    assert_eq!(status.code(), Some(2), "{status:?}");
}
