//! `rsp run --cmd … --line-buffer`: each command's lines printed as they
//! come, each line whole, against the default of each command's output
//! whole when it ends. The commands here wait for files the test creates,
//! so what is checked is the order of events, not timing.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// How long anything here may take before the test calls it a hang.
const HANG: Duration = Duration::from_secs(30);

/// Waits (at most 30 s) for the file `$1`: for the commands' scripts.
const WAIT_FOR: &str = "wait_for() { n=0; while [ ! -e \"$1\" ]; do sleep 0.01; n=$((n+1)); \
                        [ $n -gt 3000 ] && exit 9; done; }\n";

fn rsp(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rsp"));
    cmd.env("NO_COLOR", "1").current_dir(dir).args(args).stdin(Stdio::null());
    cmd
}

/// Starts `rsp`, its stdout's lines arriving on the receiver as they are written.
fn spawn(dir: &Path, args: &[&str]) -> (Child, Receiver<String>) {
    let mut child = rsp(dir, args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn wait_for(path: &Path) {
    let started = Instant::now();
    while !path.exists() {
        assert!(started.elapsed() < HANG, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `step.sh NAME` prints `NAME 1`..`NAME 3`, each once `NAME.go.I` exists,
/// and marks each line printed with `NAME.done.I`.
fn step_script(dir: &Path) {
    let body = "for i in 1 2 3; do wait_for \"$1.go.$i\"; echo \"$1 $i\"; touch \"$1.done.$i\"; done\n";
    fs::write(dir.join("step.sh"), format!("{WAIT_FOR}{body}")).unwrap();
}

#[test]
fn lines_come_as_they_are_written_in_arrival_order() {
    let dir = tempfile::tempdir().unwrap();
    step_script(dir.path());
    let (child, lines) =
        spawn(dir.path(), &["run", "-j", "2", "--line-buffer", "--cmd", "sh step.sh {}", ":::", "a", "b"]);
    // Each line is released only once the previous one was read from rsp's
    // stdout: a run printing at the end would never get past the first.
    for i in 1..=3 {
        for name in ["a", "b"] {
            fs::write(dir.path().join(format!("{name}.go.{i}")), "").unwrap();
            let line = lines.recv_timeout(HANG).unwrap_or_else(|_| panic!("`{name} {i}` was not printed as it came"));
            assert_eq!(line, format!("{name} {i}"));
        }
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(lines.recv_timeout(HANG).is_err(), "nothing more");
}

#[test]
fn without_line_buffer_each_commands_output_comes_whole() {
    let dir = tempfile::tempdir().unwrap();
    step_script(dir.path());
    let (mut child, lines) = spawn(dir.path(), &["run", "-j", "2", "--cmd", "sh step.sh {}", ":::", "a", "b"]);
    // The same alternating writes, each waited for.
    for i in 1..=3 {
        for name in ["a", "b"] {
            fs::write(dir.path().join(format!("{name}.go.{i}")), "").unwrap();
            wait_for(&dir.path().join(format!("{name}.done.{i}")));
        }
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let printed: Vec<String> = lines.iter().collect();
    // Whichever command ended first comes first, whole.
    let (a, b) = (["a 1", "a 2", "a 3"], ["b 1", "b 2", "b 3"]);
    assert!(printed == [a, b].concat() || printed == [b, a].concat(), "{printed:?}");
}

#[test]
fn a_long_line_is_never_split_by_another_commands_lines() {
    let dir = tempfile::tempdir().unwrap();
    // `long` writes half of a 60,000-byte line, lets `short` write 200
    // lines, then writes the rest.
    let script = r#"
case $1 in
long) head -c 30000 /dev/zero | tr '\0' x; touch half; wait_for short.done; head -c 30000 /dev/zero | tr '\0' y; echo;;
short) wait_for half; for i in $(seq 1 200); do echo "short $i"; done; touch short.done;;
esac
"#;
    fs::write(dir.path().join("both.sh"), format!("{WAIT_FOR}{script}")).unwrap();
    let out = rsp(
        dir.path(),
        &["run", "-j", "2", "--line-buffer", "--tag", "--cmd", "sh both.sh {}", ":::", "long", "short"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let long = format!("long\t{}{}", "x".repeat(30_000), "y".repeat(30_000));
    let shorts: Vec<String> = (1..=200).map(|i| format!("short\tshort {i}")).collect();
    assert_eq!(lines.len(), 201, "{} lines", lines.len());
    assert_eq!(lines[..200], shorts, "the short lines, each whole and tagged");
    assert!(lines[200] == long, "the long line is whole, after the lines written while it was half done");
}

#[test]
fn last_lines_long_lines_binary_and_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
printf 'one\n\377\000bin\n'
head -c 70000 /dev/zero | tr '\0' z; echo
echo oops >&2
printf 'no newline'
exit 3
"#;
    fs::write(dir.path().join("edge.sh"), script).unwrap();
    let out: Output =
        rsp(dir.path(), &["run", "--line-buffer", "--tag", "--cmd", "sh edge.sh", ":::", "in"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "the command failed");
    let mut expected = b"in\tone\nin\t\xff\x00bin\n".to_vec();
    // A line past 64 KiB comes in pieces, each a line of its own.
    expected.extend_from_slice(format!("in\t{}\nin\t{}\n", "z".repeat(65_536), "z".repeat(70_000 - 65_536)).as_bytes());
    expected.extend_from_slice(b"in\tno newline\n");
    assert!(out.stdout == expected, "{:?}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in\toops\n"), "{err}");
    assert!(err.contains("exit code 3"), "the failure is still told: {err}");
    assert_eq!(err.matches("oops").count(), 2, "printed once, and once in the failure's message: {err}");

    // Grouped, the same output comes whole, bytes as they were written.
    let out = rsp(dir.path(), &["run", "--cmd", "sh edge.sh", ":::", "in"]).output().unwrap();
    let mut expected = b"one\n\xff\x00bin\n".to_vec();
    expected.extend_from_slice(format!("{}\nno newline", "z".repeat(70_000)).as_bytes());
    assert!(out.stdout == expected, "{:?}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn line_buffer_is_refused_where_it_cannot_apply() {
    let dir = tempfile::tempdir().unwrap();
    for (args, says) in [
        (&["run", "--line-buffer", "-k", "--cmd", "echo {}", ":::", "a"][..], "-k"),
        (&["run", "--line-buffer", "--format", "jsonl", "--cmd", "echo {}", ":::", "a"], "--format values"),
        (&["run", "--line-buffer", "-e", "return 1"], "--cmd"),
        (&["job", "start", "--line-buffer", "--cmd", "echo {}", ":::", "a"], "rsp run"),
    ] {
        let out = rsp(dir.path(), args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn a_reader_that_goes_away_stops_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("'{}' run --line-buffer --timeout 60 --cmd 'yes {{}}' ::: a | head -3", env!("CARGO_BIN_EXE_rsp")))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a\na\na\n");
    assert!(started.elapsed() < HANG, "the endless command was stopped");
}
