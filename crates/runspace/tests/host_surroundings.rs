//! A session's working directory and environment: what `fs`, `exec` and
//! `env` see when a job server runs a job for a caller elsewhere.

use runspace::{Grants, Runspace, Script, SessionState, Status};
use serde_json::{json, Value};

fn session(specs: &[&str], dir: &std::path::Path, env: &[(&str, &str)]) -> SessionState {
    let mut grants = Grants::default();
    for spec in specs {
        grants.grant_spec(spec).unwrap();
    }
    SessionState::new()
        .grants_from(grants)
        .working_dir(dir)
        .unwrap()
        .environment(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .unwrap()
}

fn ok(state: &SessionState, code: &str) -> Value {
    let mut rs = Runspace::open(state).unwrap();
    let r = rs.invoke(&Script::new(code).unwrap(), &[], &[]);
    assert_eq!(r.status(), Status::Completed, "{code}: {:?}", r.error());
    r.result()
}

#[test]
fn relative_paths_and_relative_grants_resolve_against_the_working_dir() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b.txt"), "from b").unwrap();
    // The test's own working directory is the crate, where no b.txt exists.
    assert!(!std::path::Path::new("b.txt").exists());
    let state = session(&["fs:.", "fs-write:."], dir.path(), &[]);
    assert_eq!(ok(&state, "return fs.read('b.txt')"), json!("from b"));
    ok(&state, "fs.write('c.txt', 'new')");
    assert_eq!(std::fs::read_to_string(dir.path().join("c.txt")).unwrap(), "new");
    // `fs:.` is the working directory, not the process's: the crate's files are outside it.
    let cargo_toml = std::env::current_dir().unwrap().join("Cargo.toml");
    let code = format!("return fs.read('{}')", cargo_toml.display());
    let mut rs = Runspace::open(&state).unwrap();
    let r = rs.invoke(&Script::new(&code).unwrap(), &[], &[]);
    assert_eq!(r.status(), Status::Failed);
    assert!(r.error().unwrap_or_default().contains("outside the paths granted"), "{:?}", r.error());
}

#[test]
#[cfg(feature = "exec")]
fn exec_runs_in_the_working_dir_with_exactly_the_session_environment() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().canonicalize().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let state = session(&["exec", "env"], dir.path(), &[("X", "caller's x"), ("PATH", "/usr/bin:/bin")]);
    let pwd = ok(&state, "return exec('/bin/sh', {'-c', 'pwd -P'}).stdout");
    assert_eq!(pwd, json!(format!("{}\n", real.display())));
    let sub = ok(&state, "return exec('/bin/sh', {'-c', 'pwd -P'}, {cwd = 'sub'}).stdout");
    assert_eq!(sub, json!(format!("{}\n", real.join("sub").display())));
    // The child sees the session's variables and nothing of this process's.
    std::env::var("HOME").expect("tests run with HOME set");
    let env = ok(&state, "return exec('/usr/bin/env').stdout");
    let mut lines: Vec<&str> = env.as_str().unwrap().lines().collect();
    lines.sort();
    assert_eq!(lines, ["PATH=/usr/bin:/bin", "X=caller's x"]);
    assert_eq!(ok(&state, "return env.get('X')"), json!("caller's x"));
    assert_eq!(ok(&state, "return env.get('HOME')"), json!(null));
    assert_eq!(ok(&state, "local n = 0 for _ in env.vars() do n += 1 end return n"), json!(2));
    // Per-call variables still add to them.
    let extra = ok(&state, "return exec('/bin/sh', {'-c', 'echo $X-$Y'}, {env = {Y = 'y'}}).stdout");
    assert_eq!(extra, json!("caller's x-y\n"));
}

#[test]
#[cfg(feature = "exec")]
fn an_empty_environment_is_empty_not_the_process_one() {
    let dir = tempfile::tempdir().unwrap();
    let state = session(&["exec", "env"], dir.path(), &[]);
    assert_eq!(ok(&state, "return env.get('PATH')"), json!(null));
    assert_eq!(ok(&state, "return exec('/usr/bin/env').stdout"), json!(""));
}

#[test]
fn bad_working_dirs_and_variables_are_refused() {
    assert!(SessionState::new().working_dir("rel/dir").unwrap_err().to_string().contains("not an absolute path"));
    for name in ["", "A=B", "A\0"] {
        let e = SessionState::new().environment([(name.to_string(), "v".to_string())]).unwrap_err();
        assert!(e.to_string().contains("environment variable name"), "{name:?}: {e}");
    }
    let e = SessionState::new().environment([("A".to_string(), "v\0".to_string())]).unwrap_err();
    assert!(e.to_string().contains("NUL"), "{e}");
}
