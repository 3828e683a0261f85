//! A database password stays out of sight: out of the arguments of a
//! detached server (which any user reads in `ps`), out of every message,
//! and out of the command line altogether when it comes from
//! `PGPASSWORD` or the password file, as with libpq. Against a real
//! PostgreSQL server this binary starts, whose role `secretive` must log
//! in with its password.

mod jobs_common;
#[path = "../../runspace-server/tests/support/pg.rs"]
mod pg;

use std::os::unix::fs::PermissionsExt;

use jobs_common::{rsp_with, KillServerOf};
use serde_json::Value;

const PASSWORD: &str = "s3cret-Pa55word";

/// A database on the shared server and the role that must log in with
/// [`PASSWORD`]: its URL without the password.
fn guarded_database(prefix: &str) -> Option<(&'static pg::PgServer, String)> {
    use std::sync::Once;
    static ROLE: Once = Once::new();
    let server = pg::shared()?;
    ROLE.call_once(|| server.require_password("secretive", PASSWORD));
    let url = pg::fresh_database(prefix)?;
    Some((server, url.replace("postgres://rsp@", "postgres://secretive@")))
}

fn with_password(url: &str) -> String {
    url.replace("postgres://secretive@", &format!("postgres://secretive:{PASSWORD}@"))
}

#[test]
fn a_detached_server_gets_its_store_url_in_its_environment_not_its_arguments() {
    let Some((_server, url)) = guarded_database("detach") else { return };
    let dir = tempfile::tempdir().unwrap();
    let _kill = KillServerOf(dir.path().to_path_buf());
    let state = dir.path().to_str().unwrap();
    let out = rsp_with(&["serve", "--detach", "--state-dir", state, "--store", &with_password(&url)], |_| {});
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("server.json")).unwrap()).unwrap();
    let pid = info["pid"].as_u64().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains("serve") && !cmdline.contains(PASSWORD), "ps shows: {cmdline}");
    assert!(!cmdline.contains("secretive"), "no part of the URL is in its arguments: {cmdline}");
    // It is connected with the password: a job runs and is stored.
    let out = rsp_with(&["job", "start", "--state-dir", state, "--wait", "-e", "return 6 * 7"], |_| {});
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(!log.contains(PASSWORD), "{log}");
}

#[test]
fn the_password_comes_from_pgpassword_or_a_private_password_file() {
    let Some((_server, url)) = guarded_database("pgpass") else { return };
    let list = |setup: &dyn Fn(&mut std::process::Command)| {
        let out = rsp_with(&["worker", "list", "--store", &url], |c| {
            c.env_remove("PGPASSWORD").env_remove("PGPASSFILE");
            setup(c)
        });
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let home = tempfile::tempdir().unwrap();
    let (ok, err) = list(&|c| {
        c.env("HOME", home.path());
    });
    assert!(!ok && err.contains("password"), "no password, no entry: {err}");
    assert!(
        list(&|c| {
            c.env("PGPASSWORD", PASSWORD).env("HOME", home.path());
        })
        .0
    );
    let port = url.rsplit(':').next().unwrap().split('/').next().unwrap().to_string();
    let pgpass = home.path().join(".pgpass");
    std::fs::write(&pgpass, format!("elsewhere:*:*:*:wrong\n127.0.0.1:{port}:*:secretive:{PASSWORD}\n")).unwrap();
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, err) = list(&|c| {
        c.env("HOME", home.path());
    });
    assert!(!ok, "a password file others can read is not used: {err}");
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, err) = list(&|c| {
        c.env("HOME", home.path());
    });
    assert!(ok, "~/.pgpass: {err}");
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::rename(&pgpass, elsewhere.path().join("pass")).unwrap();
    let (ok, err) = list(&|c| {
        c.env("HOME", home.path()).env("PGPASSFILE", elsewhere.path().join("pass"));
    });
    assert!(ok, "PGPASSFILE: {err}");
}

#[test]
fn no_message_shows_a_password() {
    let Some((_server, url)) = guarded_database("messages") else { return };
    let wrong = url.replace("postgres://secretive@", "postgres://secretive:not-the-password@");
    let state = tempfile::tempdir().unwrap();
    let state = state.path().to_str().unwrap();
    let unreachable = format!("postgres://secretive:{PASSWORD}@127.0.0.1:1/none");
    let misspelt = format!("postgress://secretive:{PASSWORD}@127.0.0.1/none");
    let bad_port = format!("postgres://secretive:{PASSWORD}@127.0.0.1:notaport/none");
    let option = format!("postgres://secretive@127.0.0.1:1/none?password={PASSWORD}&bogus=1");
    for store in [&unreachable, &misspelt, &bad_port, &option, &wrong] {
        for args in [
            vec!["worker", "list", "--store", store],
            vec!["serve", "--state-dir", state, "--store", store],
            vec!["job", "start", "--store", store, "--range", "1..3", "-e", "return _"],
            vec!["run", "--cluster", store, "--range", "1..3", "-e", "return _"],
        ] {
            let out = rsp_with(&args, |_| {});
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} succeeded");
            assert!(!stderr.trim().is_empty(), "{args:?}: says why");
            for secret in [PASSWORD, "not-the-password"] {
                assert!(!stderr.contains(secret), "{args:?}: {stderr}");
                assert!(!String::from_utf8_lossy(&out.stdout).contains(secret), "{args:?}");
            }
        }
    }
}
