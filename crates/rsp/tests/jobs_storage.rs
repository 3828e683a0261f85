//! Nothing lost without a word: with the state directory on a 3 MB tmpfs,
//! a job whose output does not fit ends Failed with a storage error, the
//! health endpoint says the store failed, and no job is reported Completed
//! with missing output. Needs root (mount); skips with a message otherwise.

mod jobs_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use jobs_common::{call, rsp_with, KillServerOf};
use serde_json::Value;

/// A small tmpfs, unmounted (after the server is killed) on drop.
struct Tmpfs {
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(&dir)
            .stderr(std::process::Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => Some(Tmpfs { dir, _tmp: tmp }),
            _ => None,
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        drop(KillServerOf(self.dir.clone()));
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn server_call(dir: &Path, path: &str) -> (u16, Value) {
    let info: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("server.json")).unwrap()).unwrap();
    let token = std::fs::read_to_string(dir.join("token")).unwrap();
    call(&format!("http://{}", info["addr"].as_str().unwrap()), Some(token.trim()), "GET", path, None)
}

#[test]
fn a_full_disk_fails_the_job_loudly_and_nothing_is_reported_complete() {
    let Some(fs) = Tmpfs::mount("3m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root and mount permission)");
        return;
    };
    let start = |script: &str, range: &str| {
        let args = ["job", "start", "--wait", "-e", script, "--range", range];
        rsp_with(&args, |c| {
            c.env("RSP_STATE_DIR", &fs.dir);
        })
    };
    let out = start(r#"return string.rep("d",1000).._"#, "1..5000");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "a job whose output was lost exited 0: {stderr}");
    let job: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(job["state"], "Failed", "{job}");
    assert!(job["error"].as_str().is_some_and(|e| e.starts_with("storage error: ")), "{job}");

    let (status, health) = server_call(&fs.dir, "/v1/health");
    assert!(health["store"]["failed_jobs"].as_u64() >= Some(1), "{status} {health}");
    assert_eq!(status == 503, health["store"]["ok"] == false, "{status} {health}");

    // Whatever fits or not afterwards, every job is refused with a storage
    // error or ends, and none is Completed without all its output.
    for _ in 0..3 {
        let out = start(r#"return string.rep("e",100).._"#, "1..200");
        let stderr = String::from_utf8_lossy(&out.stderr);
        match serde_json::from_slice::<Value>(&out.stdout) {
            Ok(job) => assert!(job["state"] == "Completed" || job["state"] == "Failed", "{job}"),
            Err(_) => assert!(stderr.contains("storage error"), "neither a job nor a storage error: {stderr}"),
        }
    }
    let (_, page) = server_call(&fs.dir, "/v1/jobs?limit=100");
    for listed in page["jobs"].as_array().unwrap() {
        let name = listed["name"].as_str().unwrap();
        let (_, job) = server_call(&fs.dir, &format!("/v1/jobs/{name}"));
        let total = job["progress"]["total"].as_u64().unwrap();
        let state = job["state"].as_str().unwrap();
        assert_ne!(state, "Running", "a job stays Running after its end: {job}");
        if state == "Completed" {
            assert_eq!(job["output_count"].as_u64(), Some(total), "Completed with missing output: {job}");
        } else {
            assert!(job["error"].as_str().is_some_and(|e| e.starts_with("storage error: ")), "{job}");
        }
    }
}
