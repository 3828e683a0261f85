//! The JSON Lines record is written field by field (for speed), and must
//! stay byte for byte what serde_json writes for `runspace::ItemResult`:
//! every line of real runs — streams, batches, retries, failures, odd
//! strings — is parsed back and serialized again, and must come out equal.

use std::process::Command;

fn lines(args: &[&str]) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_rsp")).args(args).output().expect("run rsp");
    String::from_utf8(out.stdout).unwrap().lines().map(String::from).collect()
}

#[test]
fn every_record_is_exactly_what_serde_json_writes() {
    let script = r#"
        local n = tonumber(_) or 0
        if n % 5 == 0 then error("bad \"" .. n .. "\"\n\ttab") end
        if n % 4 == 0 then write_error("soft \u{1}") end
        write_warning("w" .. n) write_verbose("v") write_debug("d") print("p é 😀")
        write_progress("copy", 50, "file \\ " .. n)
        if n % 3 == 0 then return {a = n, b = {1.5, "x\0y", true}} end
        if n % 7 == 0 then emit(1) emit(2) return nil end
        return n / 4 -- exact in binary: the round trip through the parser is not under test
    "#;
    let runs: [&[&str]; 3] = [
        &["run", "-e", script, "--range", "1..40", "--format", "jsonl"],
        &["run", "-e", script, "--range", "1..40", "--batch-size", "3", "--retries", "1", "--retry-delay", "1ms"],
        &["run", "--format", "jsonl", "--cmd", "echo {}", ":::", "a", "b\"c", "tab\there"],
    ];
    let mut checked = 0;
    for args in runs {
        for line in lines(args) {
            let item: runspace::ItemResult = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert_eq!(serde_json::to_string(&item).unwrap(), line);
            checked += 1;
        }
    }
    assert!(checked >= 83, "only {checked} records");
}

/// Records through a pipe: rsp widens it to 1 MiB, so that at millions of
/// records a second writer and reader do not take turns every 64 KiB.
#[test]
fn a_pipe_on_stdout_is_widened() {
    use std::os::fd::AsRawFd;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_rsp"))
        .args(["run", "-e", "sleep(0.3) return _", "--range", "1..1", "--format", "jsonl"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    // The pipe is one pipe: its size reads the same from either end.
    // SAFETY: F_GETPIPE_SZ only reads the size of the pipe `out` owns.
    let size = || unsafe { libc::fcntl(out.as_raw_fd(), libc::F_GETPIPE_SZ) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while size() < 1 << 20 && std::time::Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let widened = size();
    child.wait().unwrap();
    assert_eq!(widened, 1 << 20);
}
