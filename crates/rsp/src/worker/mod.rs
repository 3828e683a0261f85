//! `rsp worker`: lease work from a PostgreSQL store and run it here
//! (the `runspace_server::worker` loop), and `rsp worker list`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use runspace::Grants;
use runspace_server::store::{is_postgres_url, PgStore};
use runspace_server::worker::{host_name, run_worker, WorkerConfig, WorkerEvent};

use crate::common::parse;

/// Run work from a PostgreSQL store here: cluster jobs submitted with `rsp run --cluster` or `rsp job start --store`.
#[derive(clap::Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true)]
#[command(
    after_help = "Scripts run at least once and their results are recorded exactly once: a script may run again after a worker dies, so make its side effects safe to repeat."
)]
pub struct WorkerArgs {
    /// The PostgreSQL store: postgres://user@host:port/db.
    #[arg(long, env = "RSP_STORE", value_name = "URL")]
    pub store: Option<String>,

    /// How many items this worker runs at once [default: the number of CPUs].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub slots: Option<u32>,

    /// This worker's name in `rsp worker list` [default: the host's name].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// The most capabilities this worker grants (as --allow: fs, fs:PATH, net, exec…); a job asking for
    /// more is refused here, with the reason recorded on the job. Default: none.
    #[arg(long, value_name = "CAPS")]
    pub allow_max: Vec<String>,

    /// How long a claimed chunk stays leased without a heartbeat; after that, another worker takes it over.
    #[arg(long, default_value = "30s", value_parser = parse::duration, value_name = "DURATION")]
    pub lease: Duration,

    /// How often leases are extended [default: a third of --lease].
    #[arg(long, value_parser = parse::duration, value_name = "DURATION")]
    pub heartbeat: Option<Duration>,

    /// How often an idle worker looks for work when no notification arrives.
    #[arg(long, default_value = "1s", value_parser = parse::duration, value_name = "DURATION")]
    pub poll: Duration,

    /// On SIGTERM or Ctrl-C, how long the chunk in hand may finish before it is given back.
    #[arg(long, default_value = "10s", value_parser = parse::duration, value_name = "DURATION")]
    pub grace: Duration,

    #[command(subcommand)]
    pub action: Option<WorkerAction>,
}

/// What else `rsp worker` does.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum WorkerAction {
    /// List the workers of a store: name, host, slots, heartbeat, items done.
    List(ListArgs),
}

/// `rsp worker list`.
#[derive(clap::Args, Debug, Clone)]
pub struct ListArgs {
    /// The PostgreSQL store: postgres://user@host:port/db.
    #[arg(long, env = "RSP_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// Print JSON Lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The store URL, or why there is none.
fn store_url(store: &Option<String>) -> Result<String, String> {
    match store {
        Some(url) if is_postgres_url(url) => Ok(url.clone()),
        Some(other) => Err(format!(
            "--store: '{}' is not a PostgreSQL URL (postgres://user@host:port/db)",
            runspace_server::store::redact_url(other)
        )),
        None => Err("give the store with --store postgres://… (or RSP_STORE)".into()),
    }
}

/// Runs `rsp worker`; returns the exit code.
pub fn run(args: WorkerArgs) -> i32 {
    if let Some(WorkerAction::List(list_args)) = &args.action {
        return list(list_args);
    }
    let url = match store_url(&args.store) {
        Ok(url) => url,
        Err(e) => {
            eprintln!("rsp worker: error: {e}");
            return 2;
        }
    };
    let mut allow_max = Grants::default();
    for spec in &args.allow_max {
        if let Err(e) = allow_max.grant_spec(spec) {
            eprintln!("rsp worker: error: --allow-max: {e}");
            return 2;
        }
    }
    if args.lease < Duration::from_millis(200) {
        eprintln!("rsp worker: error: --lease must be at least 200ms");
        return 2;
    }
    let heartbeat = args.heartbeat.unwrap_or(args.lease / 3);
    if heartbeat >= args.lease {
        eprintln!("rsp worker: error: --heartbeat must be shorter than --lease");
        return 2;
    }
    let slots = args.slots.map_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()), |n| n as usize);
    let config = WorkerConfig {
        url,
        name: args.name.clone().unwrap_or_else(host_name),
        slots,
        allow_max,
        allow_max_spec: args.allow_max.join(","),
        lease: args.lease,
        heartbeat,
        poll: args.poll,
        grace: args.grace,
    };
    let stop = Arc::new(AtomicBool::new(false));
    install_stop(stop.clone());
    let name = config.name.clone();
    let events = move |event: WorkerEvent| match event {
        WorkerEvent::Ready(id) => eprintln!("rsp worker {name}: ready ({id}, {slots} slots)"),
        WorkerEvent::Retrying(e, after) => {
            eprintln!("rsp worker {name}: {e}; retrying in {}", humantime::format_duration(after))
        }
        WorkerEvent::Refused(job, why) => eprintln!("rsp worker {name}: refused job '{job}': {why}"),
        WorkerEvent::Rejected(job, chunk) => {
            eprintln!("rsp worker {name}: job '{job}' chunk {chunk}: lease lost, its results were not recorded")
        }
        WorkerEvent::Released(job, chunk) => eprintln!("rsp worker {name}: job '{job}' chunk {chunk}: given back"),
    };
    match run_worker(&config, &stop, &events) {
        Ok(summary) => {
            eprintln!(
                "rsp worker {}: stopped: {} item(s) recorded, {} completion(s) rejected, {} chunk(s) given back",
                config.name, summary.items, summary.rejected, summary.released
            );
            0
        }
        Err(e) => {
            eprintln!("rsp worker: error: {e}");
            1
        }
    }
}

/// SIGTERM or Ctrl-C: stop taking work and finish (or give back) the
/// chunk in hand; a second one leaves at once.
fn install_stop(stop: Arc<AtomicBool>) {
    let count = AtomicUsize::new(0);
    let _ = ctrlc::set_handler(move || {
        if count.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!("rsp worker: stopping: finishing the chunk in hand (again to leave at once)");
            stop.store(true, Ordering::SeqCst);
        } else {
            std::process::exit(130);
        }
    });
}

fn list(args: &ListArgs) -> i32 {
    let url = match store_url(&args.store) {
        Ok(url) => url,
        Err(e) => {
            eprintln!("rsp worker list: error: {e}");
            return 2;
        }
    };
    let workers = PgStore::open(&url).and_then(|s| s.worker_list().map_err(|e| e.to_string()));
    let workers = match workers {
        Ok(w) => w,
        Err(e) => {
            eprintln!("rsp worker list: error: {e}");
            return 1;
        }
    };
    if args.json {
        for w in &workers {
            println!("{w}");
        }
        return 0;
    }
    println!(
        "{:<20} {:<20} {:>5} {:>10} {:>12} {:>8}  STATE",
        "NAME", "HOST", "SLOTS", "HEARTBEAT", "ITEMS DONE", "REJECTED"
    );
    for w in &workers {
        let age = w["heartbeat_age_s"].as_f64().unwrap_or(0.0);
        println!(
            "{:<20} {:<20} {:>5} {:>9.1}s {:>12} {:>8}  {}",
            w["name"].as_str().unwrap_or(""),
            w["host"].as_str().unwrap_or(""),
            w["slots"].to_string(),
            age,
            w["items_done"].to_string(),
            w["rejected"].to_string(),
            w["state"].as_str().unwrap_or("")
        );
    }
    0
}
