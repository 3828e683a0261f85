//! `rsp serve`: one local process that holds background jobs, stores them
//! in SQLite, and answers an HTTP JSON API on loopback behind a token.
//!
//! The state directory holds what a client needs to find the server:
//! `token` (mode 0600), `server.json` (the bound address and pid),
//! `server.lock` (held while a server runs), `server.log` (output of a
//! server started in the background) and, by default, `jobs.db`.

mod api;
mod store;

use std::fs::{self, File, OpenOptions};
use std::future::IntoFuture;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use runspace::{JobEvent, JobManager};
use serde_json::{json, Value};

use crate::parse;
use store::{secs, Op, Store};

/// How often finished jobs are dropped from memory (they stay in the database).
const FORGET_EVERY: Duration = Duration::from_secs(10);

/// Run the job server: background jobs with SQLite persistence and an HTTP JSON API on loopback.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "The API is described in docs/jobs.md and docs/jobs-openapi.yaml. Clients find the server \
                        through the state directory: server.json holds its address, token its token.")]
pub struct ServeArgs {
    /// Where the token, the address file and the default database live
    /// [default: $XDG_DATA_HOME/rsp or ~/.local/share/rsp].
    #[arg(long, env = "RSP_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// The SQLite database [default: STATE_DIR/jobs.db].
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,

    /// TCP port to listen on; 0 picks a free one (written to STATE_DIR/server.json).
    #[arg(long, default_value_t = 0)]
    pub port: u16,

    /// Address to listen on. Anything but loopback exposes the API (token-protected, unencrypted) to the network.
    #[arg(long, default_value = "127.0.0.1", value_name = "ADDR")]
    pub bind: IpAddr,

    /// The most jobs running at once; more wait as Queued.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub max_jobs: usize,

    /// On SIGTERM or Ctrl-C, let running jobs finish for this long before stopping them.
    #[arg(long, default_value = "10s", value_parser = parse::duration, value_name = "DURATION")]
    pub grace: Duration,

    /// Start the server in the background (output to STATE_DIR/server.log) and return once it answers.
    #[arg(long)]
    pub detach: bool,
}

/// The files of a state directory.
pub struct StatePaths {
    pub dir: PathBuf,
    pub token: PathBuf,
    pub address: PathBuf,
    pub lock: PathBuf,
    pub log: PathBuf,
}

impl StatePaths {
    /// The files of `dir`, or of the default state directory.
    pub fn new(dir: Option<&Path>) -> StatePaths {
        let dir = dir.map_or_else(default_state_dir, Path::to_path_buf);
        StatePaths {
            token: dir.join("token"),
            address: dir.join("server.json"),
            lock: dir.join("server.lock"),
            log: dir.join("server.log"),
            dir,
        }
    }

    /// Whether a server holds this directory's lock right now.
    pub fn server_running(&self) -> bool {
        match File::open(&self.lock) {
            // SAFETY: flock on a descriptor we own; a shared probe is released at once.
            Ok(f) => unsafe {
                if libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) == 0 {
                    libc::flock(f.as_raw_fd(), libc::LOCK_UN);
                    false
                } else {
                    true
                }
            },
            Err(_) => false,
        }
    }

    /// The address and pid in `server.json`, if present.
    pub fn address(&self) -> Option<(SocketAddr, u32)> {
        let text = fs::read_to_string(&self.address).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        Some((v["addr"].as_str()?.parse().ok()?, v["pid"].as_u64()? as u32))
    }
}

fn default_state_dir() -> PathBuf {
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".local/share")));
    data.unwrap_or_else(std::env::temp_dir).join("rsp")
}

/// Runs `rsp serve`; returns the exit code.
pub fn run(args: ServeArgs) -> i32 {
    if args.max_jobs == 0 {
        eprintln!("rsp serve: error: --max-jobs must be at least 1");
        return 2;
    }
    if args.detach {
        let paths = StatePaths::new(args.state_dir.as_deref());
        return match spawn_detached(&paths, &child_args(&args)) {
            Ok((addr, pid)) => {
                eprintln!(
                    "rsp serve: started in the background (pid {pid}) on http://{addr}; log: {}",
                    paths.log.display()
                );
                0
            }
            Err(e) => {
                eprintln!("rsp serve: error: {e}");
                1
            }
        };
    }
    match serve(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("rsp serve: error: {e}");
            1
        }
    }
}

fn child_args(args: &ServeArgs) -> Vec<String> {
    let mut out = vec![
        "--port".to_string(),
        args.port.to_string(),
        "--bind".into(),
        args.bind.to_string(),
        "--max-jobs".into(),
        args.max_jobs.to_string(),
        "--grace".into(),
        format!("{}ms", args.grace.as_millis()),
    ];
    if let Some(db) = &args.db {
        out.extend(["--db".to_string(), db.display().to_string()]);
    }
    out
}

/// Starts `rsp serve` in the background for `paths`, with `extra` options,
/// and waits (up to 10 s) until it has written its address.
pub fn spawn_detached(paths: &StatePaths, extra: &[String]) -> Result<(SocketAddr, u32), String> {
    create_state_dir(&paths.dir)?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the rsp program: {e}"))?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&paths.log)
        .map_err(|e| format!("cannot open {}: {e}", paths.log.display()))?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    let mut command = Command::new(exe);
    command.arg("serve").arg("--state-dir").arg(&paths.dir).args(extra);
    command.stdin(Stdio::null()).stdout(log).stderr(log2);
    // SAFETY: setsid is async-signal-safe; it detaches the server from the
    // caller's terminal and process group, so Ctrl-C there does not reach it.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| format!("cannot start rsp serve: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some((addr, pid)) = paths.address() {
            if pid == child.id() {
                return Ok((addr, pid));
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("rsp serve exited at start ({status}); see {}", paths.log.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("rsp serve did not start within 10 s; see {}", paths.log.display()))
}

fn create_state_dir(dir: &Path) -> Result<(), String> {
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

/// Takes the directory's lock: one server per state directory.
fn lock(paths: &StatePaths) -> Result<File, String> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&paths.lock)
        .map_err(|e| format!("cannot open {}: {e}", paths.lock.display()))?;
    // SAFETY: flock on a descriptor we own; the lock lives as long as the file.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let who = paths.address().map(|(a, pid)| format!(" (pid {pid}, http://{a})")).unwrap_or_default();
        return Err(format!("another rsp serve is already running for {}{who}", paths.dir.display()));
    }
    Ok(file)
}

/// Reads the token, or makes one (32 random bytes, hex) readable only by the user.
fn token(paths: &StatePaths) -> Result<String, String> {
    if let Ok(text) = fs::read_to_string(&paths.token) {
        let _ = fs::set_permissions(&paths.token, fs::Permissions::from_mode(0o600));
        if !text.trim().is_empty() {
            return Ok(text.trim().to_string());
        }
    }
    let mut bytes = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&paths.token)
        .map_err(|e| format!("cannot write {}: {e}", paths.token.display()))?;
    writeln!(file, "{token}").map_err(|e| format!("cannot write {}: {e}", paths.token.display()))?;
    Ok(token)
}

/// Persists what the manager reports. `Finished` waits for its commit, so
/// a `wait` that returns finds the job's end in the database.
fn observer(store: Arc<Store>) -> impl Fn(&JobEvent<'_>) + Send + Sync + 'static {
    move |event| match event {
        JobEvent::Started { name, at } => store.send(Op::Started { name: name.to_string(), at: secs(*at) }),
        JobEvent::Item { name, item, progress } => store.send(Op::Output {
            name: name.to_string(),
            seq: progress.done.saturating_sub(1),
            record: serde_json::to_string(item).unwrap_or_default(),
            done: Some(progress.done),
        }),
        JobEvent::Finished(info) => {
            if !info.parallel {
                for (seq, value) in info.output.iter().enumerate() {
                    let record = json!({ "value": value }).to_string();
                    store.send(Op::Output { name: info.name.clone(), seq: seq as u64, record, done: None });
                }
            }
            let _ = store.write(Op::Finished {
                name: info.name.clone(),
                state: info.state.to_string(),
                at: secs(info.end.unwrap_or_else(SystemTime::now)),
                error: info.error.clone(),
                streams: serde_json::to_string(&info.streams).unwrap_or_default(),
                done: info.progress.done,
            });
        }
        _ => {}
    }
}

fn serve(args: &ServeArgs) -> Result<(), String> {
    let paths = StatePaths::new(args.state_dir.as_deref());
    create_state_dir(&paths.dir)?;
    let _lock = lock(&paths)?;
    let token = token(&paths)?;
    let db = args.db.clone().unwrap_or_else(|| paths.dir.join("jobs.db"));
    let (store, interrupted) = Store::open(&db)?;
    let store = Arc::new(store);
    if interrupted > 0 {
        eprintln!("rsp serve: {interrupted} job(s) left unfinished by the previous server are now Interrupted");
    }
    let manager = JobManager::builder()
        .max_concurrent(args.max_jobs)
        .observer(observer(store.clone()))
        .build()
        .map_err(|e| e.to_string())?;
    let listener = TcpListener::bind((args.bind, args.port))
        .map_err(|e| format!("cannot listen on {}:{}: {e}", args.bind, args.port))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    if !addr.ip().is_loopback() {
        eprintln!("rsp serve: warning: listening on {addr}, reachable from the network (the token is sent in clear)");
    }
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    write_address(&paths, addr, &db)?;
    eprintln!(
        "rsp serve: listening on http://{addr} (pid {}); token in {}; database {}",
        std::process::id(),
        paths.token.display(),
        db.display()
    );
    let app = Arc::new(api::App { manager, store: store.clone(), token });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let result = runtime.block_on(run_server(listener, app.clone(), args.grace));
    runtime.shutdown_timeout(Duration::from_secs(1));
    drop(app);
    store.close();
    if paths.address().is_some_and(|(_, pid)| pid == std::process::id()) {
        let _ = fs::remove_file(&paths.address);
    }
    eprintln!("rsp serve: stopped");
    result
}

fn write_address(paths: &StatePaths, addr: SocketAddr, db: &Path) -> Result<(), String> {
    let info = json!({"addr": addr.to_string(), "pid": std::process::id(), "db": db.display().to_string()});
    let tmp = paths.address.with_extension("json.tmp");
    fs::write(&tmp, info.to_string()).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    // Rename, so a client never reads half a file.
    fs::rename(&tmp, &paths.address).map_err(|e| format!("cannot write {}: {e}", paths.address.display()))
}

async fn run_server(listener: TcpListener, app: Arc<api::App>, grace: Duration) -> Result<(), String> {
    let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, api::router(app.clone()))
        .with_graceful_shutdown(async move {
            let _ = stop_rx.changed().await;
        })
        .into_future();
    let server = tokio::spawn(server);
    let forget = {
        let app = app.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(FORGET_EVERY).await;
                let app = app.clone();
                let _ = tokio::task::spawn_blocking(move || app.manager.forget_finished()).await;
            }
        })
    };
    shutdown_signal().await;
    eprintln!("rsp serve: shutting down: no new requests; running jobs get {} s to finish", grace.as_secs_f64());
    forget.abort();
    let _ = stop_tx.send(true);
    // Jobs end (finished or stopped), which also ends the requests waiting on them.
    let _ = tokio::task::spawn_blocking(move || app.manager.shutdown(grace)).await;
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Ok(()))) | Err(_) => Ok(()),
        Ok(Ok(Err(e))) => Err(format!("server error: {e}")),
        Ok(Err(e)) => Err(format!("server task failed: {e}")),
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
