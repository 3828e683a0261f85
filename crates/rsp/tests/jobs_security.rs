//! The job server trusts nothing in its environment: state directories that
//! are not ours or that others can write, planted symbolic links, a missing
//! HOME, a database shared by two servers, a permissive umask, a database
//! from a newer version. Run as root in CI (chown to `nobody` needs it).

mod jobs_common;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use jobs_common::{rsp_with, KillServerOf, Server};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A private state directory inside a fresh temporary directory.
fn state_dir(tmp: &tempfile::TempDir) -> PathBuf {
    let dir = tmp.path().join("state");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// `rsp serve` in the foreground on `dir`: must refuse (and so end).
fn serve_refused(dir: &Path, extra: &[&str]) -> String {
    let mut args = vec!["serve", "--port", "0", "--state-dir", dir.to_str().unwrap()];
    args.extend(extra);
    let _kill = KillServerOf(dir.to_path_buf());
    let out = rsp_with(&args, |_| {});
    assert_eq!(out.status.code(), Some(1), "should have been refused: {}", stderr(&out));
    stderr(&out)
}

/// A file some other user would like us to write through a link.
fn victim(tmp: &tempfile::TempDir) -> PathBuf {
    let path = tmp.path().join("victim");
    fs::write(&path, "precious\n").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    path
}

fn assert_untouched(victim: &Path) {
    assert_eq!(fs::read_to_string(victim).unwrap(), "precious\n");
    assert_eq!(fs::metadata(victim).unwrap().mode() & 0o777, 0o644, "the link's target was chmodded");
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn a_state_directory_of_another_user_is_refused() {
    if !is_root() {
        eprintln!("skipped: chown to nobody needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = state_dir(&tmp);
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let e = serve_refused(&dir, &[]);
    assert!(e.contains("belongs to uid 65534"), "{e}");
    assert!(!dir.join("token").exists() && !dir.join("jobs.db").exists());
}

#[test]
fn a_state_directory_others_can_write_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = state_dir(&tmp);
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let e = serve_refused(&dir, &[]);
    assert!(e.contains("others can write") && e.contains("0777"), "{e}");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o770)).unwrap();
    let e = serve_refused(&dir, &[]);
    assert!(e.contains("others can write"), "{e}");
    // Its parent counts too: whoever writes there can swap the directory.
    let parent = tmp.path().join("open");
    fs::create_dir(&parent).unwrap();
    fs::set_permissions(&parent, fs::Permissions::from_mode(0o777)).unwrap();
    let inner = parent.join("state");
    fs::create_dir(&inner).unwrap();
    fs::set_permissions(&inner, fs::Permissions::from_mode(0o700)).unwrap();
    let e = serve_refused(&inner, &[]);
    assert!(e.contains("parent directory") && e.contains("others can write"), "{e}");
}

#[test]
fn planted_links_are_not_followed_and_their_targets_are_untouched() {
    for file in ["token", "jobs.db", "jobs.db-wal", "jobs.db-shm", "server.lock"] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = state_dir(&tmp);
        let victim = victim(&tmp);
        symlink(&victim, dir.join(file)).unwrap();
        let e = serve_refused(&dir, &[]);
        assert!(e.contains("symbolic link") && e.contains(file), "{file}: {e}");
        assert_untouched(&victim);
    }
    // The log, written by a server started in the background.
    let tmp = tempfile::tempdir().unwrap();
    let dir = state_dir(&tmp);
    let victim_path = victim(&tmp);
    symlink(&victim_path, dir.join("server.log")).unwrap();
    let _kill = KillServerOf(dir.clone());
    let out = rsp_with(&["serve", "--detach", "--state-dir", dir.to_str().unwrap()], |_| {});
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));
    assert_untouched(&victim_path);
    // The address file is replaced, not written through.
    let tmp = tempfile::tempdir().unwrap();
    let dir = state_dir(&tmp);
    let victim_path = victim(&tmp);
    symlink(&victim_path, dir.join("server.json")).unwrap();
    let server = Server::start(&dir, &[]);
    assert!(fs::symlink_metadata(dir.join("server.json")).unwrap().file_type().is_file());
    assert_untouched(&victim_path);
    drop(server);
}

#[test]
fn a_token_others_could_read_is_replaced_and_a_foreign_one_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = state_dir(&tmp);
    let planted = "a".repeat(64);
    fs::write(dir.join("token"), format!("{planted}\n")).unwrap();
    fs::set_permissions(dir.join("token"), fs::Permissions::from_mode(0o644)).unwrap();
    let server = Server::start(&dir, &[]);
    assert_ne!(server.token, planted, "a token others could read was reused");
    assert_eq!(fs::metadata(dir.join("token")).unwrap().mode() & 0o777, 0o600);
    drop(server);
    if is_root() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = state_dir(&tmp);
        fs::write(dir.join("token"), format!("{planted}\n")).unwrap();
        fs::set_permissions(dir.join("token"), fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(dir.join("token"), Some(65534), None).unwrap();
        let e = serve_refused(&dir, &[]);
        assert!(e.contains("belongs to uid 65534"), "{e}");
    }
}

#[test]
fn without_home_the_state_directory_is_the_users_home_never_tmp() {
    let tmp = tempfile::tempdir().unwrap();
    let out = rsp_with(&["job", "list"], |c| {
        c.env_remove("HOME").env_remove("XDG_DATA_HOME").env_remove("RSP_STATE_DIR").env("TMPDIR", tmp.path());
    });
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(!e.contains(tmp.path().to_str().unwrap()) && !e.contains("/tmp/"), "{e}");
    assert!(e.contains("/.local/share/rsp"), "{e}");
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0, "something was created in TMPDIR");
    // A relative XDG_DATA_HOME is ignored, as the XDG specification says.
    let out = rsp_with(&["job", "list"], |c| {
        c.env_remove("HOME").env("XDG_DATA_HOME", "relative").env_remove("RSP_STATE_DIR").current_dir(tmp.path());
    });
    assert!(!stderr(&out).contains("relative/rsp"), "{}", stderr(&out));
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn two_servers_on_one_database_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let a = state_dir(&tmp);
    let b = tmp.path().join("b");
    fs::create_dir(&b).unwrap();
    fs::set_permissions(&b, fs::Permissions::from_mode(0o700)).unwrap();
    let db = a.join("shared.db");
    let db = db.to_str().unwrap();
    let first = Server::start(&a, &["--db", db]);
    let (status, job) = first.call("POST", "/v1/jobs", Some(&serde_json::json!({"script": "sleep(0.5) return 1"})));
    assert_eq!(status, 201, "{job}");
    let e = serve_refused(&b, &["--db", db]);
    assert!(e.contains("in use by another job server"), "{e}");
    let name = job["name"].as_str().unwrap();
    let done = first.until(name, |j| j["state"] != "Running" && j["state"] != "Queued");
    assert_eq!(done["state"], "Completed", "the second server interfered: {done}");
}

#[test]
fn every_file_is_private_under_umask_000() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = tmp.path().join("home");
    fs::create_dir(&parent).unwrap();
    fs::set_permissions(&parent, fs::Permissions::from_mode(0o755)).unwrap();
    let dir = parent.join("rsp");
    let _kill = KillServerOf(dir.clone());
    let script = format!("umask 000; exec {} serve --detach --state-dir {}", jobs_common::RSP, dir.display());
    let out = rsp_with(&[], |c| {
        *c = std::process::Command::new("sh");
        c.args(["-c", &script]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    });
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let job = rsp_with(&["job", "start", "--wait", "-e", "return 1", "--range", "1..50"], |c| {
        c.env("RSP_STATE_DIR", &dir);
    });
    assert_eq!(job.status.code(), Some(0), "{}", stderr(&job));
    assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    for file in ["token", "server.json", "server.log", "server.lock", "jobs.db", "jobs.db-wal", "jobs.db-shm"] {
        let meta = fs::metadata(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(meta.mode() & 0o777, 0o600, "{file} is {:o}", meta.mode() & 0o777);
    }
}

#[test]
fn a_database_from_a_newer_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = state_dir(&tmp);
    let mut server = Server::start(&dir, &[]);
    assert_eq!(server.terminate(std::time::Duration::from_secs(15)), Some(0));
    // The schema version is the big-endian user_version at offset 60 of the header.
    let mut bytes = fs::read(dir.join("jobs.db")).unwrap();
    bytes[60..64].copy_from_slice(&999u32.to_be_bytes());
    fs::write(dir.join("jobs.db"), bytes).unwrap();
    let e = serve_refused(&dir, &[]);
    assert!(e.contains("newer version") && e.contains("schema version 999"), "{e}");
}
