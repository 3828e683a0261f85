//! The server's lifecycle: take the state directory, open the store, run
//! the HTTP API until SIGTERM or Ctrl-C, give running jobs a grace period,
//! flush the store. Its log is its standard error (`server.log` when it was
//! started in the background).

use std::ffi::OsString;
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use runspace::{JobEvent, JobManager, Streams};
use serde_json::json;

use crate::api;
use crate::dashboard::{self, Dashboard};
use crate::http;
use crate::private;
use crate::state::{self, StatePaths};
use crate::store::{JobEnd, JobStore, PgStore, SqliteStore};

/// How often finished jobs are dropped from memory (they stay in the database).
const FORGET_EVERY: Duration = Duration::from_secs(10);

/// How to run a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The state directory (token, address, lock, log).
    pub paths: StatePaths,
    /// The SQLite database; `None` for `jobs.db` in the state directory.
    pub db: Option<PathBuf>,
    /// A PostgreSQL database (`postgres://…`) to keep the jobs in instead
    /// of SQLite, shared with other servers and workers.
    pub store_url: Option<String>,
    /// The address to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The most jobs running at once; more wait as Queued.
    pub max_jobs: usize,
    /// On SIGTERM or Ctrl-C, how long running jobs may finish before they are stopped.
    pub grace: Duration,
    /// The web dashboard shows jobs but offers and accepts no action.
    pub read_only_ui: bool,
    /// With a PostgreSQL store: how long after this server's last
    /// heartbeat the other servers of the store may take it for dead and
    /// mark its unfinished jobs Interrupted (it beats every third of it).
    pub lease: Duration,
}

/// Starts `program` with `args` (a command that serves `paths`) and the
/// variables `env` in the background, its output going to the state
/// directory's log, and waits (up to 10 s) until it has written its
/// address. Secrets go in `env`: any user may read a process's arguments
/// (`ps`, `/proc/PID/cmdline`), only its owner its environment.
pub fn spawn_detached(
    paths: &StatePaths,
    program: &Path,
    args: &[OsString],
    env: &[(&str, &str)],
) -> Result<(SocketAddr, u32), String> {
    state::create_state_dir(&paths.dir)?;
    let log = state::open_log(paths)?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    let mut command = Command::new(program);
    command.args(args).envs(env.iter().copied());
    command.stdin(Stdio::null()).stdout(log).stderr(log2);
    // SAFETY: setsid is async-signal-safe; it detaches the server from the
    // caller's terminal and process group, so Ctrl-C there does not reach it.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| format!("cannot start the job server: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some((addr, pid)) = paths.address() {
            if pid == child.id() {
                return Ok((addr, pid));
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the job server exited at start ({status}); see {}", paths.log.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("the job server did not start within 10 s; see {}", paths.log.display()))
}

/// Persists what the manager reports. `Finished` waits for its commit, so
/// a `wait` that returns finds the job's end in the store.
fn observer(store: Arc<dyn JobStore>) -> impl Fn(&JobEvent<'_>) + Send + Sync + 'static {
    move |event| match event {
        JobEvent::Started { name, at } => store.started(name, *at),
        JobEvent::Item { name, item, progress } => store.record_output(
            name,
            progress.done.saturating_sub(1),
            serde_json::to_string(item).unwrap_or_default(),
            Some(progress.done),
        ),
        JobEvent::Finished(info) => {
            if !info.parallel {
                for (seq, value) in info.output.iter().enumerate() {
                    store.record_output(&info.name, seq as u64, json!({ "value": value }).to_string(), None);
                }
            }
            record_streams(store.as_ref(), &info.name, &info.streams);
            let end = JobEnd {
                name: info.name.clone(),
                state: info.state.to_string(),
                at: info.end.unwrap_or_else(SystemTime::now),
                error: info.error.clone(),
                done: info.progress.done,
            };
            if let Err(e) = store.finished(end) {
                log(&format!("job '{}': its end could not be stored: {e}", info.name));
            }
        }
        _ => {}
    }
}

/// Hands every stream record to the store, one by one (never as one document).
fn record_streams(store: &dyn JobStore, name: &str, streams: &Streams) {
    let text = [
        ("error", &streams.error),
        ("warning", &streams.warning),
        ("verbose", &streams.verbose),
        ("debug", &streams.debug),
        ("information", &streams.information),
    ];
    for (stream, records) in text {
        for (seq, record) in records.iter().enumerate() {
            let record = serde_json::to_string(record).unwrap_or_else(|_| "null".into());
            store.record_stream(name, stream, seq as u64, record);
        }
    }
    for (seq, record) in streams.progress.iter().enumerate() {
        let record = serde_json::to_string(record).unwrap_or_else(|_| "null".into());
        store.record_stream(name, "progress", seq as u64, record);
    }
}

/// One line in the server's log (its standard error).
pub(crate) fn log(message: &str) {
    eprintln!("rsp serve: {message}");
}

/// Runs a server until SIGTERM or Ctrl-C.
pub fn serve(config: &ServerConfig) -> Result<(), String> {
    if config.max_jobs == 0 {
        return Err("the most jobs at once must be at least 1".into());
    }
    let paths = &config.paths;
    state::create_state_dir(&paths.dir)?;
    let _lock = state::lock(paths)?;
    let token = state::token(paths)?;
    let mut shared = None;
    let (store, interrupted, db): (Arc<dyn JobStore>, usize, String) = match &config.store_url {
        // Shared with other servers: only the jobs of those whose lease ran
        // out are ours to interrupt (see `Heartbeat`).
        Some(url) => {
            let store = Arc::new(PgStore::open(url)?);
            let described = store.describe();
            shared = Some(store.clone());
            (store, 0, described)
        }
        None => {
            let db = config.db.clone().unwrap_or_else(|| paths.dir.join("jobs.db"));
            let (store, interrupted) = SqliteStore::open(&db)?;
            (Arc::new(store), interrupted, db.display().to_string())
        }
    };
    if interrupted > 0 {
        log(&format!("{interrupted} job(s) left unfinished by the previous server are now Interrupted"));
    }
    let heartbeat = shared.map(|store| Heartbeat::start(store, config.lease)).transpose()?;
    let manager = JobManager::builder()
        .max_concurrent(config.max_jobs)
        // Items go to the store as they finish; memory must not grow with a job.
        .keep_items(false)
        .observer(observer(store.clone()))
        // A job with no session of its own still words refusals by its fields.
        .session(runspace::SessionState::new().remedies(crate::limits::job_remedies()))
        .build()
        .map_err(|e| e.to_string())?;
    let listener = TcpListener::bind(config.listen).map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    if !addr.ip().is_loopback() {
        log(&format!("warning: listening on {addr}, reachable from the network (the token is sent in clear)"));
    }
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    // Signal handlers before the address: a client that finds the server
    // may signal it at once, and must not kill it outright.
    let signals = {
        let _runtime = runtime.enter();
        Signals::install()
    };
    write_address(paths, addr, &db)?;
    log(&format!(
        "listening on http://{addr} (pid {}; dashboard at http://{addr}/); token in {}; database {}",
        std::process::id(),
        paths.token.display(),
        db
    ));
    let app = Arc::new(api::App {
        manager,
        store: store.clone(),
        token,
        shutdown: tokio::sync::Notify::new(),
        grace: config.grace,
        guesses: Arc::default(),
    });
    let result = runtime.block_on(run_server(listener, app.clone(), config.read_only_ui, signals));
    runtime.shutdown_timeout(Duration::from_secs(1));
    drop(app);
    if let Some(heartbeat) = heartbeat {
        heartbeat.stop();
    }
    store.close();
    if paths.address().is_some_and(|(_, pid)| pid == std::process::id()) {
        let _ = fs::remove_file(&paths.address);
    }
    log("stopped");
    result
}

/// A server's lease on a shared store: registered at start, renewed every
/// third of the lease by its own thread (which also interrupts the jobs of
/// servers whose lease ran out), given up when the server stops.
struct Heartbeat {
    store: Arc<PgStore>,
    stop: crossbeam_channel::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Heartbeat {
    fn start(store: Arc<PgStore>, lease: Duration) -> Result<Heartbeat, String> {
        store.register_server(lease).map_err(|e| format!("cannot register with the store: {e}"))?;
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let beating = store.clone();
        let every = (lease / 3).max(Duration::from_millis(10));
        let thread = std::thread::Builder::new()
            .name("rsp-heartbeat".into())
            .spawn(move || loop {
                match beating.server_heartbeat() {
                    Ok(0) => {}
                    Ok(n) => log(&format!("{n} job(s) of servers that stopped answering are now Interrupted")),
                    Err(e) => log(&format!("heartbeat: {e}")),
                }
                if !matches!(stopped.recv_timeout(every), Err(crossbeam_channel::RecvTimeoutError::Timeout)) {
                    return;
                }
            })
            .map_err(|e| format!("cannot start the heartbeat: {e}"))?;
        Ok(Heartbeat { store, stop, thread })
    }

    /// Stops beating and gives the lease up (the server's jobs have ended).
    fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
        self.store.unregister_server();
    }
}

fn write_address(paths: &StatePaths, addr: SocketAddr, db: &str) -> Result<(), String> {
    let info = json!({"addr": addr.to_string(), "pid": std::process::id(), "db": db});
    private::write_atomically(&paths.address, info.to_string().as_bytes())
}

async fn run_server(
    listener: TcpListener,
    app: Arc<api::App>,
    read_only_ui: bool,
    signals: Signals,
) -> Result<(), String> {
    let grace = app.grace;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // The API under /v1, the dashboard beside it (its event streams end on the same stop).
    let api = api::router(app.clone());
    let dash = Dashboard::new(
        app.store.clone(),
        api.clone(),
        app.token.clone(),
        app.guesses.clone(),
        read_only_ui,
        stop_rx.clone(),
    );
    let router = dashboard::router(dash).merge(api);
    // Open requests (waits, mostly) end with the jobs; then connections get a few seconds to close.
    let server = tokio::spawn(http::serve(listener, router, stop_rx, Duration::from_secs(5)));
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
    let why = tokio::select! {
        _ = signals.recv() => "a signal",
        _ = app.shutdown.notified() => "a shutdown request",
    };
    log(&format!("shutting down on {why}: no new requests; running jobs get {} s to finish", grace.as_secs_f64()));
    forget.abort();
    let _ = stop_tx.send(true);
    // Jobs end (finished or stopped), which also ends the requests waiting on them.
    let _ = tokio::task::spawn_blocking(move || app.manager.shutdown(grace)).await;
    match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(Ok(())) | Err(_) => Ok(()),
        Ok(Err(e)) => Err(format!("server task failed: {e}")),
    }
}

/// SIGTERM and SIGINT, caught from the moment they are installed.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Installs the handlers (inside the runtime); one that cannot be
    /// installed keeps the default action.
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        Signals { term: signal(SignalKind::terminate()).ok(), interrupt: signal(SignalKind::interrupt()).ok() }
    }

    /// Returns when either arrives.
    async fn recv(mut self) {
        let wait = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = wait(self.term.take()) => {}
            _ = wait(self.interrupt.take()) => {}
        }
    }
}
