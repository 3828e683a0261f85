//! The host library through the real `rsp` binary: `--allow` grants and
//! refusals, and the examples (examples/run_examples.sh), so they run in CI.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn rsp() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rsp"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// `rsp run -e CODE --range 1..1 --format values` with extra arguments.
fn run(code: &str, extra: &[&str]) -> Output {
    rsp()
        .args(["run", "-e", code, "--range", "1..1", "--format", "values", "--no-summary"])
        .args(extra)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn examples_run() {
    let out = Command::new("bash")
        .arg(repo().join("examples/run_examples.sh"))
        .env("RSP", env!("CARGO_BIN_EXE_rsp"))
        .output()
        .unwrap();
    assert!(out.status.success(), "examples failed:\n{}\n{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stderr).contains("all examples passed"));
}

#[test]
fn each_capability_is_refused_without_allow_and_granted_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    std::fs::write(root.join("f.txt"), "content").unwrap();
    let file = root.join("f.txt").display().to_string();
    let cases: [(&str, String, String); 7] = [
        ("fs", format!("return fs.read('{file}')"), format!("fs:{}", root.display())),
        ("fs-write", format!("return fs.write('{file}', 'new')"), format!("fs-write:{}", root.display())),
        ("proc", "return #proc.list() > 0".into(), "proc".into()),
        ("net", "return net.resolve('127.0.0.1')[1]".into(), "net".into()),
        ("http", "return http.get('http://127.0.0.1:1/').status".into(), "http".into()),
        ("exec", "return exec('true').code".into(), "exec".into()),
        ("env", "return env.get('PATH') ~= nil".into(), "env".into()),
    ];
    for (capability, code, grant) in &cases {
        let out = run(code, &[]);
        assert_eq!(out.status.code(), Some(1), "{code}: {}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("'{capability}' capability"))
                && err.contains(&format!("(grant it with --allow {capability})")),
            "{err}"
        );

        let out = run(code, &["--allow", grant]);
        if *capability == "http" {
            // Granted: the call is made (and fails on the closed port, naming it).
            assert!(text(&out.stderr).contains("127.0.0.1:1"), "{}", text(&out.stderr));
            assert!(!text(&out.stderr).contains("capability"), "{}", text(&out.stderr));
        } else {
            assert!(out.status.success(), "{code} with --allow {grant}: {}", text(&out.stderr));
        }
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "new");
}

#[test]
fn refusals_name_the_flag_that_fixes_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    // A path outside the granted one, and a module the session lacks: the
    // engine names what is missing, the command line says which flag adds it.
    let out = run("return fs.read('/etc/hostname')", &["--allow", &format!("fs:{}", root.display())]);
    let err = text(&out.stderr);
    assert!(
        err.contains("outside the paths granted to 'fs'") && err.contains("; grant it with --allow fs:DIR"),
        "{err}"
    );
    let out = run("return require('helpers')", &[]);
    let err = text(&out.stderr);
    assert!(err.contains("module 'helpers' is not part of this session (add it with --module helpers.luau)"), "{err}");
    assert!(!err.contains("SessionState"), "the library's own hint leaked to the command line: {err}");
}

#[test]
fn path_escapes_are_refused_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    std::fs::create_dir(root.join("granted")).unwrap();
    std::fs::write(root.join("secret"), "s").unwrap();
    std::os::unix::fs::symlink(root.join("secret"), root.join("granted/link")).unwrap();
    let grant = format!("fs:{}", root.join("granted").display());
    for path in [root.join("granted/../secret"), root.join("granted/link")] {
        let out = run(&format!("return fs.read('{}')", path.display()), &["--allow", &grant]);
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out.stderr).contains("outside the paths granted to 'fs'"), "{}", text(&out.stderr));
    }
}

#[test]
fn port_sweep_example_finds_a_listening_port() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let out = rsp()
        .args(["run", "examples/port_sweep.luau", "--allow", "net", "--format", "values", "--no-summary", "--ordered"])
        .args(["--range", &format!("{}..{}", port - 1, port + 1), "--param", "host=127.0.0.1"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[1].contains(r#""state":"open""#) && lines[1].contains(r#""reason":"syn-ack""#), "{lines:?}");
    drop(listener);
}
