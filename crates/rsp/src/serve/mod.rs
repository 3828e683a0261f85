//! `rsp serve`: the job server (the `runspace-server` library) on the
//! command line.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use runspace_server::{ServerConfig, StatePaths};

use crate::common::diag::diag;
use crate::common::{exit, parse, CliError};

mod stop;

/// Run the job server: background jobs with SQLite persistence and an HTTP JSON API on loopback.
#[derive(clap::Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true)]
#[command(after_help = "Clients (rsp job ...) find the server through the state directory: \
                        server.json holds its address, token its token. A web dashboard is served at / \
                        on the same address (log in with the token). The reference: rsp man serve, \
                        rsp man job.")]
pub struct ServeArgs {
    /// Where the token, the address file and the default database live
    /// [default: $XDG_DATA_HOME/rsp or ~/.local/share/rsp].
    #[arg(long, env = "RSP_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// The SQLite database [default: STATE_DIR/jobs.db].
    #[arg(long, value_name = "PATH", conflicts_with = "store")]
    pub db: Option<PathBuf>,

    /// Keep the jobs in this store instead: a PostgreSQL URL (postgres://user@host:port/db), shared with
    /// other servers and `rsp worker`s (see rsp worker --help), or a SQLite file.
    #[arg(long, env = "RSP_STORE", value_name = "URL")]
    pub store: Option<String>,

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

    /// The web dashboard (at / on the same address) shows jobs but hides and refuses every action.
    #[arg(long)]
    pub read_only_ui: bool,

    /// With a PostgreSQL store: how long after this server's last heartbeat (every third of it) the
    /// other servers of the store take it for dead and mark its unfinished jobs Interrupted.
    #[arg(long, default_value = "30s", value_parser = parse::duration, value_name = "DURATION")]
    pub lease: Duration,

    /// Start the server in the background (output to STATE_DIR/server.log) and return once it answers.
    #[arg(long)]
    pub detach: bool,

    #[command(subcommand)]
    pub action: Option<ServeAction>,
}

/// What else `rsp serve` does besides serving.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum ServeAction {
    /// Stop the server of a state directory gracefully and wait until it has ended.
    Stop(stop::StopArgs),
}

/// Runs `rsp serve`; returns the exit code.
pub fn run(args: ServeArgs) -> Result<u8, CliError> {
    if let Some(ServeAction::Stop(stop)) = &args.action {
        return stop::run(stop);
    }
    if args.max_jobs == 0 {
        return Err(CliError::usage("--max-jobs must be at least 1"));
    }
    if args.lease < Duration::from_secs(1) {
        return Err(CliError::usage("--lease must be at least 1s (the heartbeat comes every third of it)"));
    }
    let paths =
        StatePaths::new(args.state_dir.as_deref()).map_err(|e| CliError::usage(format!("{e} (--state-dir)")))?;
    if args.detach {
        let (addr, pid) =
            spawn_detached(&paths, &child_args(&args), args.store.as_deref()).map_err(CliError::failure)?;
        diag!("rsp serve: started in the background (pid {pid}) on http://{addr}; log: {}", paths.log.display());
        return Ok(exit::OK);
    }
    let (db, store_url) = match &args.store {
        Some(url) if runspace_server::store::is_postgres_url(url) => (None, Some(url.clone())),
        Some(url) if url.contains("://") => {
            return Err(CliError::usage(format!(
                "--store: '{}' is not a PostgreSQL URL (postgres://user@host:port/db), nor a SQLite file",
                runspace_server::store::redact_url(url)
            )))
        }
        Some(path) => (Some(PathBuf::from(path)), None),
        None => (args.db.clone(), None),
    };
    let config = ServerConfig {
        paths,
        db,
        store_url,
        listen: SocketAddr::new(args.bind, args.port),
        max_jobs: args.max_jobs,
        grace: args.grace,
        read_only_ui: args.read_only_ui,
        lease: args.lease,
    };
    runspace_server::serve(&config).map_err(|e| CliError::failure(e.to_string()))?;
    Ok(exit::OK)
}

/// Starts `rsp serve --state-dir DIR EXTRA…` in the background and waits
/// until it answers. The store goes to it in `RSP_STORE`, never in its
/// arguments: a URL may carry a password, and anyone may read arguments.
pub fn spawn_detached(paths: &StatePaths, extra: &[String], store: Option<&str>) -> Result<(SocketAddr, u32), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the rsp program: {e}"))?;
    let mut args: Vec<OsString> = vec!["serve".into(), "--state-dir".into(), paths.dir.clone().into()];
    args.extend(extra.iter().map(OsString::from));
    let env: Vec<(&str, &str)> = store.map(|s| ("RSP_STORE", s)).into_iter().collect();
    runspace_server::spawn_detached(paths, &exe, &args, &env)
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
        "--lease".into(),
        format!("{}ms", args.lease.as_millis()),
    ];
    if args.read_only_ui {
        out.push("--read-only-ui".into());
    }
    if let Some(db) = &args.db {
        out.extend(["--db".to_string(), db.display().to_string()]);
    }
    out
}
