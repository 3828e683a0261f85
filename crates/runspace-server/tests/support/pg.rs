//! A PostgreSQL server of the test's own, from the installed server
//! binaries: `initdb` into a temporary folder (as the `postgres` user when
//! the tests run as root, since PostgreSQL refuses to run as root),
//! `pg_ctl start` on a free loopback port and a private socket folder.
//! Tests can stop (immediately, as a crash) and start it again. Shared by
//! the test binaries of runspace-server and rsp (included by `#[path]`).

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

/// A running test server; stopped when dropped.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    running: Mutex<bool>,
}

/// The newest installed server binaries, if any.
fn server_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").exists() && bin.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `program args…`, as the `postgres` user when we are root.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut command: Command, what: &str) -> Output {
    let out = command.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

impl PgServer {
    /// Starts a new server listening on 127.0.0.1; `None` (after saying
    /// so loudly) where PostgreSQL is not installed.
    pub fn start() -> Option<PgServer> {
        PgServer::start_listening("127.0.0.1", &[])
    }

    /// Starts a new server listening on `listen` (PostgreSQL's
    /// `listen_addresses`), trusting connections from `trusted` networks
    /// too (CIDR), besides loopback.
    pub fn start_listening(listen: &str, trusted: &[&str]) -> Option<PgServer> {
        let Some(bin) = server_bin() else {
            // CI installs the package: a skip there would prove nothing.
            assert!(std::env::var_os("CI").is_none(), "PostgreSQL is not installed, and CI must run these tests");
            eprintln!(
                "SKIPPED: PostgreSQL server binaries not found under /usr/lib/postgresql \
                 (install the Debian package postgresql; .ci/run does)"
            );
            return None;
        };
        let dir = tempfile::Builder::new().prefix("rsp-pg-").tempdir().expect("a temporary folder");
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres:").arg(dir.path());
                    c
                },
                "chown",
            );
        }
        let data = dir.path().join("data");
        let mut initdb = as_server_user(&bin.join("initdb"));
        initdb.arg("-D").arg(&data).args(["-U", "rsp", "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions"]);
        run(initdb, "initdb");
        let mut conf = format!(
            "listen_addresses = '{listen}'\nunix_socket_directories = '{}'\nfsync = off\n\
             full_page_writes = off\nmax_connections = 200\n",
            dir.path().display()
        );
        conf.push_str("log_min_messages = warning\n");
        append(&data.join("postgresql.conf"), &conf);
        let hba: String = trusted.iter().map(|net| format!("host all all {net} trust\n")).collect();
        append(&data.join("pg_hba.conf"), &hba);
        let server = PgServer { dir, bin, port: free_port(), running: Mutex::new(false) };
        server.start_again();
        Some(server)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL to database `db` over TCP on 127.0.0.1.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://rsp@127.0.0.1:{}/{db}", self.port)
    }

    /// A URL to database `db` at `host`.
    pub fn url_at(&self, host: &str, db: &str) -> String {
        format!("postgres://rsp@{host}:{}/{db}", self.port)
    }

    /// Runs SQL through psql on the private socket; its output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let mut c = Command::new(self.bin.join("psql"));
        c.arg("-h").arg(self.dir.path()).args(["-p", &self.port.to_string(), "-U", "rsp", "-d", db]);
        c.args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql]);
        String::from_utf8_lossy(&run(c, "psql").stdout).trim().to_string()
    }

    /// Creates a new, empty database and returns its URL.
    pub fn new_database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(name)
    }

    /// Makes role `role` (created with `password`) log in over TCP with
    /// its password (scram-sha-256) instead of being trusted.
    pub fn require_password(&self, role: &str, password: &str) {
        self.psql("postgres", &format!("CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{password}'"));
        let hba = self.dir.path().join("data/pg_hba.conf");
        let old = std::fs::read_to_string(&hba).expect("pg_hba.conf");
        let line = format!("host all {role} 127.0.0.1/32 scram-sha-256\nhost all {role} ::1/128 scram-sha-256\n");
        std::fs::write(&hba, format!("{line}{old}")).expect("write pg_hba.conf");
        self.psql("postgres", "SELECT pg_reload_conf()");
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`).
    pub fn stop(&self) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if *running {
            let mut c = as_server_user(&self.bin.join("pg_ctl"));
            c.arg("-D").arg(self.dir.path().join("data")).args(["-m", "immediate", "-w", "stop"]);
            let _ = c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
            *running = false;
        }
    }

    /// Starts the (stopped) server again, on the same port and data.
    pub fn start_again(&self) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if *running {
            return;
        }
        let mut c = as_server_user(&self.bin.join("pg_ctl"));
        c.arg("-D").arg(self.dir.path().join("data"));
        c.arg("-l").arg(self.dir.path().join("server.log"));
        c.args(["-o", &format!("-p {}", self.port), "-w", "-t", "60", "start"]);
        let out = c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).output().expect("pg_ctl");
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            panic!("pg_ctl start failed: {}\n{log}", String::from_utf8_lossy(&out.stderr));
        }
        *running = true;
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).expect("a config file");
    f.write_all(text.as_bytes()).expect("write the config");
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The test binary's shared server (started on first use, stopped when the
/// binary exits), or `None` where PostgreSQL is not installed.
pub fn shared() -> Option<&'static PgServer> {
    static SERVER: OnceLock<Option<PgServer>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let server = PgServer::start()?;
            // Statics are never dropped: stop the server when the binary exits.
            extern "C" fn stop_at_exit() {
                if let Some(Some(server)) = SERVER.get() {
                    server.stop();
                    // The static's TempDir is never dropped either: without
                    // this every test binary left ~140 MB of data in /tmp.
                    let _ = std::fs::remove_dir_all(server.dir.path());
                }
            }
            // SAFETY: registers a plain function with no arguments; it only
            // runs pg_ctl, and tolerates running after the tests are done.
            unsafe { libc::atexit(stop_at_exit) };
            Some(server)
        })
        .as_ref()
}

/// A fresh database on the shared server, named uniquely in this binary.
pub fn fresh_database(prefix: &str) -> Option<String> {
    static NEXT: Mutex<u32> = Mutex::new(0);
    let server = shared()?;
    let n = {
        let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
        *next += 1;
        *next
    };
    Some(server.new_database(&format!("{prefix}_{n}")))
}
