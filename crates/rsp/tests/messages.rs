//! Messages a person reads: no repeated location prefix in exec errors, a
//! memory limit of 10 said to be 10 bytes, counts in the right number with
//! separators, help examples that fit a terminal, and the man pages and
//! completions generated from the command line itself.

use std::process::{Command, Output};

fn rsp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rsp")).args(args).env("NO_COLOR", "1").env("COLUMNS", "80").output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn exec_errors_name_the_line_once() {
    let o = rsp(&[
        "run",
        "-e",
        "return exec('no-such-program-here')",
        "--allow",
        "exec",
        "--range",
        "1..1",
        "--format",
        "values",
    ]);
    let err = stderr(&o);
    assert!(err.contains("script:1: exec: no-such-program-here"), "{err}");
    assert!(!err.contains("script:1: script:1:"), "{err}");
    // An error raised by the script itself also names its line once.
    let o = rsp(&["run", "-e", "error('bad')", "--range", "1..1", "--format", "values"]);
    assert!(stderr(&o).contains("rsp: item 0: script:1: bad"), "{}", stderr(&o));
}

#[test]
fn a_tiny_memory_limit_says_what_it_means() {
    for (limit, means) in [("10", "10 bytes (a bare number is bytes)"), ("100K", "102,400 bytes")] {
        let o = rsp(&["run", "-e", "return 1", "--memory-limit", limit, "--range", "1..1"]);
        assert_eq!(o.status.code(), Some(2));
        let err = stderr(&o);
        assert!(err.contains(&format!("--memory-limit {limit} means {means}, too small")), "{err}");
        assert!(err.contains("at least 1 MB"), "{err}");
    }
    let o = rsp(&["run", "-e", "return 1", "--memory-limit", "1MB", "--range", "1..1", "--format", "values"]);
    assert_eq!(stdout(&o), "1\n", "{}", stderr(&o));
}

#[test]
fn counts_are_singular_or_plural_with_separators() {
    let o = rsp(&["run", "-e", "return 1", "--range", "1..1", "--summary"]);
    assert!(stderr(&o).contains("Summary: 1 item in "), "{}", stderr(&o));
    let o = rsp(&["run", "-e", "return 1", "--range", "1..10000", "--summary", "--format", "values"]);
    let err = stderr(&o);
    assert!(err.contains("Summary: 10,000 items in "), "{err}");
    assert!(err.contains("10,000 completed"), "{err}");
    assert!(err.contains("total 10,000, processed 10,000, successful 10,000"), "{err}");
}

#[test]
fn help_fits_80_columns_and_names_no_source_files() {
    for command in
        [&[][..], &["run"], &["scan"], &["job", "start"], &["serve"], &["man"], &["completions"], &["worker"]]
    {
        let o = rsp(&[command, &["--help"]].concat());
        let help = stdout(&o);
        for line in help.lines() {
            assert!(line.chars().count() <= 80, "{command:?}: a line wider than 80 columns: {line:?}");
            assert!(!line.contains("docs/"), "{command:?}: refers to a source file: {line:?}");
        }
        // An example is never broken in the middle: every continued line ends in a backslash.
        let mut lines = help.lines().skip_while(|l| !l.starts_with("Examples:")).skip(1).peekable();
        while let Some(line) = lines.next() {
            if line.trim().is_empty() {
                break;
            }
            if let Some(next) = lines.peek() {
                let continued = next.starts_with("      ");
                assert_eq!(continued, line.ends_with('\\'), "{command:?}: {line:?} / {next:?}");
            }
        }
    }
}

#[test]
fn man_pages_and_completions_come_from_the_binary() {
    let o = rsp(&["man"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).starts_with(".ie") && stdout(&o).contains(".TH rsp 1"), "{}", stdout(&o));
    let o = rsp(&["man", "job", "start"]);
    assert!(stdout(&o).contains(".TH rsp-job-start 1"), "{}", stdout(&o));
    assert!(stdout(&o).contains("\\-\\-cmd"), "the page lists the options");
    let o = rsp(&["man", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no command 'nope'"), "{}", stderr(&o));
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let o = rsp(&["completions", shell]);
        assert_eq!(o.status.code(), Some(0), "{shell}");
        assert!(stdout(&o).contains("rsp"), "{shell}");
        assert!(stdout(&o).contains("max-concurrent-batches"), "{shell}: completes run's options");
    }
    // bash accepts the script.
    if let Ok(check) = Command::new("bash").args(["-n", "-c", &stdout(&rsp(&["completions", "bash"]))]).output() {
        assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    }
}
