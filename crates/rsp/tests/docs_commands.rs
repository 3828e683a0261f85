//! Every `rsp` command shown in README.md and docs/*.md runs here, so no
//! example can rot: a fenced code block's lines that start with `rsp` (or
//! pipe into it) are run with `sh -c`, in order, in a scratch directory
//! holding the files they name, with this build's `rsp` first on PATH and a
//! state directory of their own (the job examples start and stop a real
//! server there). A command passes when it exits 0 or 1 — it parsed and ran;
//! 1 is an item or job that did not complete, which examples with
//! placeholder data may well have — and fails on 2 (a usage or script
//! error: the rot this test is for), a panic, or a hang.
//!
//! SAFETY RULE: a scan may only target loopback. Scans of other addresses
//! in the docs are on the allow-list below and never run; any other scan
//! command must name only loopback targets, or this test fails before
//! running anything.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Commands that are not run, and why.
const NOT_RUN: &[(&str, &str)] = &[
    ("rsp scan web1 web2 10.0.0.0/28", "scans hosts that are not loopback"),
    ("rsp scan 10.0.0.0/24", "scans a network that is not loopback"),
    ("rsp scan 0.0.0.0/0", "shows the refusal of a huge target set; a test never names non-loopback targets"),
    ("rsp serve [--state-dir DIR]", "a synopsis with placeholders, not a command"),
    ("rsp serve stop [--state-dir DIR]", "a synopsis with placeholders, not a command"),
    (
        "rsp worker --store postgres://",
        "needs the PostgreSQL of the example (tests/cluster.rs runs workers on a real one)",
    ),
    (
        "rsp run -e 'return _ * _' --range 1..100000 --cluster",
        "needs the PostgreSQL and worker of the example (tests/cluster.rs)",
    ),
];

/// Commands whose documented outcome is exit 2.
const EXPECT_USAGE_ERROR: &[&str] = &[];

/// Longest any one command may take.
const HANG: Duration = Duration::from_secs(90);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The commands of one file, in order: backslash continuations joined,
/// `$ ` prompts dropped, output lines (`rsp scan: target …`) skipped.
fn commands(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            pending.clear();
            continue;
        }
        if !in_block {
            continue;
        }
        let line = line.trim();
        let line = line.strip_prefix("$ ").unwrap_or(line);
        if let Some(start) = line.strip_suffix('\\') {
            pending.push_str(start);
            continue;
        }
        let full = format!("{pending}{line}");
        pending.clear();
        let head = full.split_whitespace().take(2).collect::<Vec<_>>();
        let is_output = head.len() == 2 && head[0] == "rsp" && head[1].ends_with(':');
        let runs_rsp = full.starts_with("rsp ") || full.contains("| rsp ");
        if runs_rsp && !is_output {
            out.push(full);
        }
    }
    out
}

/// `[--state Running]` → `--state Running`: optional parts of a synopsis-like example.
fn without_brackets(command: &str) -> String {
    command.replace(['[', ']'], "")
}

/// True when every target of an `rsp scan` command is loopback.
fn scans_only_loopback(command: &str) -> bool {
    let Some(rest) = command.split("rsp scan").nth(1) else { return true };
    let words: Vec<&str> = rest.split('#').next().unwrap_or("").split_whitespace().collect();
    let mut i = 0;
    while i < words.len() {
        let word = words[i];
        if word.starts_with('>') {
            break;
        }
        if word.starts_with('-') {
            // Options with a value: skip the value (hosts.txt is written by this test).
            if matches!(word, "-p" | "-iL" | "--top-ports" | "--format" | "--show" | "--timeout" | "--retries") {
                i += 1;
            }
        } else if !(word.starts_with("127.") || word == "localhost" || word == "::1") {
            return false;
        }
        i += 1;
    }
    true
}

/// The files the examples name.
fn scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let files: &[(&str, &str)] = &[
        ("job.luau", "return _"),
        ("report.luau", "return _"),
        ("squares.luau", "return (tonumber(_) or 0) ^ 2"),
        ("FILE", "return 1"),
        ("lib/probes.luau", "return { ping = function() return true end }"),
        // Named like the built-in `net`: an example loading it must fail (it did once).
        ("lib/net.luau", "return {}"),
        ("hosts.txt", "127.0.0.1\nlocalhost\n"),
        ("items.jsonl", "{\"size\": 1}\n{\"size\": 2}\n"),
        ("big.txt", "a\nb\nc\n"),
        ("a.txt", "a\n"),
        ("b.txt", "b\n"),
        ("images.txt", "a.txt\n"),
    ];
    for (name, text) in files {
        let path = d.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

/// Stops whatever server the examples started in `state`.
struct StopServer(PathBuf);

impl Drop for StopServer {
    fn drop(&mut self) {
        let info = std::fs::read_to_string(self.0.join("server.json")).unwrap_or_default();
        let pid = serde_json::from_str::<serde_json::Value>(&info).ok().and_then(|v| v["pid"].as_i64());
        if let Some(pid) = pid {
            // SAFETY: kill(2) on the pid of the server this test's commands started; no memory is involved.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

fn run(command: &str, dir: &Path, state: &Path) -> (Option<i32>, String) {
    let bin = Path::new(env!("CARGO_BIN_EXE_rsp")).parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut child = Command::new("sh")
        .args(["-c", command])
        .current_dir(dir)
        .env("PATH", path)
        .env("RSP_STATE_DIR", state)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            return (status.code(), err);
        }
        if started.elapsed() > HANG {
            let _ = child.kill();
            panic!("{command:?} did not finish within {HANG:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_documented_command_runs() {
    let mut files = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);

    // Check every scan first: nothing runs when one would leave loopback.
    let mut all = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for command in commands(&text) {
            let skipped = NOT_RUN.iter().find(|(prefix, _)| command.starts_with(prefix));
            if skipped.is_none() {
                assert!(
                    scans_only_loopback(&command),
                    "{}: {command:?} scans a target that is not loopback: add it to NOT_RUN",
                    file.display()
                );
            }
            all.push((file.clone(), command, skipped.map(|(_, why)| *why)));
        }
    }
    assert!(all.len() >= 40, "only {} commands found: is the extraction broken?", all.len());
    for (prefix, _) in NOT_RUN {
        assert!(all.iter().any(|(_, c, _)| c.starts_with(prefix)), "NOT_RUN lists {prefix:?}, which no doc shows");
    }

    let scratch = scratch();
    let state = tempfile::tempdir().unwrap();
    let _stop = StopServer(state.path().to_path_buf());
    let mut failures = Vec::new();
    let mut ran = 0;
    for (file, command, skipped) in &all {
        if let Some(why) = skipped {
            eprintln!("not run ({why}): {command}");
            continue;
        }
        let command = without_brackets(command);
        let (code, err) = run(&command, scratch.path(), state.path());
        ran += 1;
        let expected_usage = EXPECT_USAGE_ERROR.iter().any(|p| command.starts_with(p));
        let ok = match code {
            Some(0 | 1) => !expected_usage,
            Some(2) => expected_usage,
            _ => false,
        };
        if !ok || err.contains("panicked") {
            failures.push(format!("{}: {command}\n  exit {code:?}: {}", file.display(), err.trim()));
        }
    }
    // Whatever server the examples started is stopped by the docs' own `rsp serve stop`, or by StopServer.
    assert!(failures.is_empty(), "{} of {ran} documented commands failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn the_extraction_joins_continuations_and_skips_output() {
    let text = "x\n```sh\n$ rsp run -e 'return 1' \\\n    --range 1..2\nrsp scan: target 'x': not scanned\nls | rsp run -e 'return _'\necho hi\n```\nrsp run outside\n";
    assert_eq!(commands(text), ["rsp run -e 'return 1' --range 1..2", "ls | rsp run -e 'return _'"]);
    assert!(scans_only_loopback("rsp scan 127.0.0.1 localhost -p 22 --format jsonl > out"));
    assert!(!scans_only_loopback("rsp scan 127.0.0.1 10.0.0.1"));
    assert!(!scans_only_loopback("rsp scan example.com -p 80"));
    assert_eq!(without_brackets("rsp job list [--state Running]"), "rsp job list --state Running");
}
