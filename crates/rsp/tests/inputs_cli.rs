//! The inputs people have, through the real binary: CSV and TSV (quoted
//! commas, header objects, `--no-header` arrays), `--input -`, `--once` and
//! the warning when no items were read, a UTF-8 byte-order mark in input,
//! script, module and argument files, `--colsep` as a regular expression
//! (compared with `parallel --dry-run` where GNU parallel is installed), and
//! `rsp job start` with piped items and `--cmd`.

mod jobs_common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use jobs_common::{KillServerOf, Server};
use serde_json::{json, Value};

const BOM: &str = "\u{feff}";

fn rsp_stdin(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rsp"));
    cmd.args(args).env("NO_COLOR", "1").stdout(Stdio::piped()).stderr(Stdio::piped());
    match stdin {
        None => {
            cmd.stdin(Stdio::null());
            cmd.output().unwrap()
        }
        Some(text) => {
            let mut child = cmd.stdin(Stdio::piped()).spawn().unwrap();
            let mut pipe = child.stdin.take().unwrap();
            let text = text.to_string();
            // Written from a thread: a large input must not block on a full pipe.
            let writer = std::thread::spawn(move || {
                let _ = pipe.write_all(text.as_bytes());
            });
            let out = child.wait_with_output().unwrap();
            writer.join().unwrap();
            out
        }
    }
}

fn rsp(args: &[&str]) -> Output {
    rsp_stdin(args, None)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn results(o: &Output) -> Vec<Value> {
    stdout(o).lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["result"].clone()).collect()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn gnu(args: &[&str]) -> Option<String> {
    let out =
        Command::new("parallel").args(["--will-cite", "-k", "--dry-run"]).args(args).stdin(Stdio::null()).output();
    match out {
        Ok(out) if out.status.success() => Some(stdout(&out)),
        _ => {
            eprintln!("GNU parallel is not installed (or lacks a module): comparison skipped");
            None
        }
    }
}

#[test]
fn csv_with_quoted_commas_gives_objects_and_no_header_gives_arrays() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write(dir.path(), "people.csv", "name,city\n\"Smith, John\",\"Paris\"\n\"O\"\"Neil\",\"New\nYork\"\n");
    let o = rsp(&["run", "-e", "return _", "--input", &csv, "--input-format", "csv", "--format", "jsonl", "-k"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        results(&o),
        [json!({"name": "Smith, John", "city": "Paris"}), json!({"name": "O\"Neil", "city": "New\nYork"})]
    );
    let o = rsp(&["run", "-e", "return _", "--input", &csv, "--input-format", "csv", "--no-header", "-k"]);
    assert_eq!(
        results(&o),
        [json!(["name", "city"]), json!(["Smith, John", "Paris"]), json!(["O\"Neil", "New\nYork"])]
    );
    let tsv = write(dir.path(), "t.tsv", "a\tb\n1\t\"x\ty\"\n");
    let o = rsp(&["run", "-e", "return _.b", "--input", &tsv, "--input-format", "tsv", "--format", "values"]);
    assert_eq!(stdout(&o), "x\ty\n");
    // A ragged record fails its own item; the others run.
    let bad = write(dir.path(), "bad.csv", "a,b\n1,2,3\n4,5\n");
    let o = rsp(&["run", "-e", "return _.a", "--input", &bad, "--input-format", "csv", "-k"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let records: Vec<Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records[0]["status"], "Failed");
    assert_eq!(records[1]["result"], "4");
    // Command mode: columns {1}..{N}, the header row skipped; as GNU parallel --csv does.
    let o = rsp(&["run", "--dry-run", "--input", &csv, "--input-format", "csv", "--cmd", "echo {2} {1}"]);
    let want = "echo Paris 'Smith, John'\necho 'New\nYork' 'O\"Neil'\n";
    assert_eq!(stdout(&o), want, "{}", stderr(&o));
    let data = write(dir.path(), "data.csv", "\"Smith, John\",Paris\nAnn,Rome\n");
    let o =
        rsp(&["run", "--dry-run", "--input", &data, "--input-format", "csv", "--no-header", "--cmd", "echo {2} {1}"]);
    assert_eq!(stdout(&o), "echo Paris 'Smith, John'\necho Rome Ann\n");
    if let Some(g) = gnu(&["--csv", "echo {2} {1}", "::::", &data]) {
        assert_eq!(g, stdout(&o));
    }
}

#[test]
fn input_dash_is_stdin_and_once_runs_once() {
    let o = rsp_stdin(&["run", "-e", "return _ .. '!'", "--input", "-", "--format", "values", "-k"], Some("a\nb\n"));
    assert_eq!(stdout(&o), "a!\nb!\n", "{}", stderr(&o));
    // An empty stdin (cron): nothing runs, and rsp says so.
    let o = rsp(&["run", "-e", "return 1", "--format", "values"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), "");
    assert!(stderr(&o).contains("warning: no items were read from stdin, so nothing ran (--once"), "{}", stderr(&o));
    // --once: one run with no input, stdin not read.
    let o = rsp_stdin(&["run", "-e", "return _ == nil", "--once", "--format", "values"], Some("x\ny\n"));
    assert_eq!(stdout(&o), "true\n", "{}", stderr(&o));
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
    let o = rsp(&["run", "-e", "return 1", "--once", "--range", "1..2"]);
    assert_eq!(o.status.code(), Some(2), "--once and --range conflict");
    let o = rsp(&["run", "--once", "--cmd", "echo"]);
    assert_eq!(o.status.code(), Some(2));
    // Zero items from an empty argument file.
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "empty", "");
    let o = rsp(&["run", "--cmd", "echo {}", "::::", &empty]);
    assert!(stderr(&o).contains("no items were read from the argument lists"), "{}", stderr(&o));
}

#[test]
fn a_byte_order_mark_is_skipped_in_inputs_scripts_modules_and_argument_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = write(d, "in.txt", &format!("{BOM}first\nsecond\n"));
    let o = rsp(&["run", "-e", "return _", "--input", &input, "--format", "values", "-k"]);
    assert_eq!(stdout(&o), "first\nsecond\n");
    let o = rsp_stdin(
        &["run", "-e", "return _.a", "--input-format", "jsonl", "--format", "values"],
        Some(&format!("{BOM}{{\"a\":1}}\n")),
    );
    assert_eq!(stdout(&o), "1\n", "{}", stderr(&o));
    let csv = write(d, "in.csv", &format!("{BOM}name\nx\n"));
    let o = rsp(&["run", "-e", "return _.name", "--input", &csv, "--input-format", "csv", "--format", "values"]);
    assert_eq!(stdout(&o), "x\n", "{}", stderr(&o));
    // PowerShell's Out-File writes a BOM before the script.
    let script = write(d, "job.luau", &format!("{BOM}return util.twice(_)"));
    let module = write(d, "util.luau", &format!("{BOM}return {{ twice = function(x) return x * 2 end }}"));
    let o = rsp(&["run", &script, "--module", &module, "--range", "1..2", "--format", "values", "-k"]);
    assert_eq!(stdout(&o), "2\n4\n", "{}", stderr(&o));
    let args = write(d, "args", &format!("{BOM}a\nb\n"));
    let o = rsp(&["run", "--dry-run", "--cmd", "echo {}", "::::", &args]);
    assert_eq!(stdout(&o), "echo a\necho b\n");
}

#[test]
fn colsep_is_a_regular_expression_like_gnu_parallels() {
    let cases: [(&[&str], &str); 3] = [
        (&["--colsep", r"\s+", "echo {2}-{1}", ":::", "a  b", "c\td"], "echo b-a\necho d-c\n"),
        (&["--colsep", "[,;]", "echo {3} {1}", ":::", "x,y;z"], "echo z x\n"),
        (&["--colsep", r"\|", "echo {2}", ":::", "p|q"], "echo q\n"),
    ];
    for (args, want) in cases {
        let mut full = vec!["run", "--dry-run", "--colsep", args[1], "--cmd", args[2]];
        full.extend_from_slice(&args[3..]);
        let o = rsp(&full);
        assert_eq!(stdout(&o), want, "{args:?}: {}", stderr(&o));
        if let Some(g) = gnu(args) {
            assert_eq!(g, want, "GNU parallel {args:?}");
        }
    }
    for bad in ["(", "x*"] {
        let o = rsp(&["run", "--dry-run", "--colsep", bad, "--cmd", "echo", ":::", "a"]);
        assert_eq!(o.status.code(), Some(2), "--colsep {bad}: {}", stderr(&o));
        assert!(stderr(&o).contains("--colsep"), "{}", stderr(&o));
    }
}

#[test]
fn job_start_reads_piped_items_and_runs_commands() {
    let state = tempfile::tempdir().unwrap();
    let _server = Server::start(state.path(), &[]);
    let _kill = KillServerOf(state.path().to_path_buf());
    let dir = state.path().to_str().unwrap();
    let seq: String = (1..=10).map(|n| format!("{n}\n")).collect();
    let o = rsp_stdin(
        &["job", "start", "--state-dir", dir, "-e", "return tonumber(_) * 2", "--wait", "--format", "json"],
        Some(&seq),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let job: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(job["progress"]["total"], 10, "{job}");
    let name = job["name"].as_str().unwrap();
    let o = rsp(&["job", "output", name, "--state-dir", dir, "--format", "jsonl"]);
    let mut got: Vec<i64> =
        stdout(&o).lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["result"].as_i64().unwrap()).collect();
    got.sort();
    assert_eq!(got, (1..=10).map(|n| n * 2).collect::<Vec<_>>());
    // Without a pipe (stdin is /dev/null) it is one run; an empty pipe is refused.
    let o = rsp(&["job", "start", "--state-dir", dir, "-e", "return _ == nil", "--wait", "--format", "json"]);
    let job: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(job["state"], "Completed", "{job}");
    let o = rsp_stdin(&["job", "start", "--state-dir", dir, "-e", "return 1"], Some(""));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--once"), "{}", stderr(&o));
    // --cmd: a command per item, exec granted to the job's runner only.
    let o = rsp(&[
        "job",
        "start",
        "--state-dir",
        dir,
        "--wait",
        "--format",
        "json",
        "--cmd",
        "echo hi {}",
        ":::",
        "a",
        "b c",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let job: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let o = rsp(&["job", "output", job["name"].as_str().unwrap(), "--state-dir", dir, "--format", "jsonl"]);
    let mut outs: Vec<String> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["result"]["stdout"].as_str().unwrap().to_string())
        .collect();
    outs.sort();
    assert_eq!(outs, ["hi a\n", "hi b c\n"]);
    let o = rsp(&["job", "start", "--state-dir", dir, "--dry-run", "--cmd", "gzip -k {}", ":::", "x y"]);
    assert_eq!(stdout(&o), "gzip -k 'x y'\n");
}

#[test]
fn slot_numbers_are_unique_among_running_commands_and_within_the_job_count() {
    // --dry-run numbers slots round-robin. GNU parallel's own --dry-run is
    // not compared: its slot numbers vary from run to run (20221122 printed
    // 1 1 / 1 2 / 2 3 on the same input).
    let o = rsp(&["run", "--dry-run", "-j", "2", "--cmd", "echo {%} {#}", ":::", "a", "b", "c"]);
    assert_eq!(stdout(&o), "echo 1 1\necho 2 2\necho 1 3\n", "{}", stderr(&o));
    // Running: a command holds its slot's directory while it runs; a slot
    // shared by two commands at once would make mkdir fail.
    let dir = tempfile::tempdir().unwrap();
    let held = format!("{}/{{%}}", dir.path().display());
    let cmd = format!("mkdir {held} && sleep 0.05 && rmdir {held} && echo {{%}}");
    let items: Vec<String> = (0..24).map(|i| i.to_string()).collect();
    let mut full = vec!["run", "-j", "4", "--shell", "--format", "values", "--cmd", &cmd, ":::"];
    full.extend(items.iter().map(String::as_str));
    let o = rsp(&full);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let slots: Vec<u32> = stdout(&o).lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(slots.len(), 24);
    assert!(slots.iter().all(|s| (1..=4).contains(s)), "{slots:?}");
    // Fewer runspaces than slots would make two running commands share one.
    let o = rsp(&["run", "-j", "4", "--threads", "2", "--cmd", "echo {%}", ":::", "a"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--threads must equal -j"), "{}", stderr(&o));
    // A job cannot offer slots: its runspaces are the server's.
    let o = rsp(&["job", "start", "--no-autostart", "--cmd", "echo {%}", ":::", "a"]);
    assert_eq!(o.status.code(), Some(2));
}
