//! File-system safety through the real `rsp` binary: `--results DIR` never
//! writes through what someone planted in DIR, and `fs` calls on a FIFO end
//! at once instead of blocking past `--timeout`.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn rsp() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rsp"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `cmd`, killing it (and failing the test) if it is not done within `limit`.
fn bounded(mut cmd: Command, limit: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!("still running after {limit:?}; stderr: {}", stderr(&out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    (child.wait_with_output().unwrap(), elapsed)
}

fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

fn results_run(dir: &Path) -> Output {
    let mut cmd = rsp();
    cmd.args(["run", "-e", "return _ * 2", "--range", "0..2", "--no-summary", "--results"]).arg(dir);
    bounded(cmd, Duration::from_secs(30)).0
}

#[test]
fn results_refuse_a_planted_symlink_and_leave_its_target_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let rd = tmp.path().join("rd");
    std::fs::create_dir(&rd).unwrap();
    let precious = tmp.path().join("precious.txt");
    std::fs::write(&precious, "keep me").unwrap();
    symlink(&precious, rd.join("0.json")).unwrap();
    let out = results_run(&rd);
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("0.json") && err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
    assert!(std::fs::symlink_metadata(rd.join("0.json")).unwrap().file_type().is_symlink());

    // A dangling link is not followed to create its target either.
    for i in 0..3 {
        let _ = std::fs::remove_file(rd.join(format!("{i}.json")));
    }
    symlink(tmp.path().join("created-elsewhere"), rd.join("1.json")).unwrap();
    let out = results_run(&rd);
    assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));
    assert!(!tmp.path().join("created-elsewhere").exists());
}

#[test]
fn results_refuse_planted_hard_links_and_fifos_and_overwrite_their_own_files() {
    let tmp = tempfile::tempdir().unwrap();
    let rd = tmp.path().join("rd");
    // A clean run, run twice: each item's file is replaced, not appended to.
    for _ in 0..2 {
        let out = results_run(&rd);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(rd.join("2.json")).unwrap()).unwrap();
    assert_eq!(rec["result"], 4);

    let precious = tmp.path().join("precious.txt");
    std::fs::write(&precious, "keep me").unwrap();
    std::fs::remove_file(rd.join("1.json")).unwrap();
    std::fs::hard_link(&precious, rd.join("1.json")).unwrap();
    let out = results_run(&rd);
    assert!(stderr(&out).contains("hard links"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");

    std::fs::remove_file(rd.join("1.json")).unwrap();
    mkfifo(&rd.join("1.json"));
    let out = results_run(&rd);
    assert!(stderr(&out).contains("not a regular file"), "{}", stderr(&out));
}

#[test]
fn fs_calls_on_a_fifo_end_at_once_under_a_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let fifo = root.join("fifo");
    mkfifo(&fifo);
    let grant_r = format!("fs:{}", root.display());
    let grant_w = format!("fs-write:{}", root.display());
    for call in ["fs.read(p)", "fs.read_bytes(p)", "fs.write(p, 'x')", "fs.append(p, 'x')"] {
        let code = format!("local p = {:?} return {call}", fifo.display().to_string());
        let mut cmd = rsp();
        cmd.args(["run", "-e", &code, "--range", "1..1", "--timeout", "1s", "--no-summary"])
            .args(["--allow", &grant_r, "--allow", &grant_w]);
        let (out, took) = bounded(cmd, Duration::from_secs(20));
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        assert_eq!(out.status.code(), Some(1), "{call}: {text}");
        assert!(text.contains("named pipe (FIFO), not a regular file"), "{call}: {text}");
        assert!(took < Duration::from_secs(5), "{call} took {took:?}");
    }
}
