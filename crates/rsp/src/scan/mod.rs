//! `rsp scan`: parse the command line, run a `runspace_scan` scan, format
//! its results. Exit codes: 0 the scan ran, 1 it ran but some host names did
//! not resolve, 2 usage errors (bad ports, bad targets, bad options — the
//! valid targets are still scanned when only some targets are malformed),
//! 130 interrupted by Ctrl-C (after printing every result found so far).

mod output;
mod report;

use std::io::{self, BufRead, BufWriter, IsTerminal, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use runspace_scan::{limits, scan, PortList, ScanConfig, ScanEvent, Services, StopHandle, TargetSpec};

use crate::common::diag::diag;
use crate::common::{colour, exit, parse, CliError};
use output::{Format, Show};
use report::Report;

/// Scans at least this many probes before a progress bar is worth showing.
const PROGRESS_MIN_PROBES: u64 = 2000;

/// Options of `rsp scan`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  rsp scan 127.0.0.1 -p-
  rsp scan localhost 127.0.0.2-20 -p 22,80,8000-8100 --show all
  rsp scan -iL hosts.txt --top-ports 100 --format jsonl
  rsp scan 10.0.0.0/24 --exclude 10.0.0.1 --timeout 500ms --retries 2")]
pub struct ScanArgs {
    /// Targets: addresses (IPv4/IPv6), host names, CIDR blocks
    /// (10.0.0.0/24), ranges (127.0.0.1-20, 10.0.0-3.1-9).
    #[arg(value_name = "TARGET")]
    pub targets: Vec<String>,

    /// Ports: lists and ranges (22,80,8000-8100), '-' or '-p-' for all
    /// 65535. Default: 22,80,135,139,443,445,3389,5985,5986.
    #[arg(short = 'p', long = "ports", value_name = "PORTS", allow_hyphen_values = true)]
    pub ports: Option<String>,

    /// Scan the N most common ports instead of -p.
    #[arg(long, value_name = "N", conflicts_with = "ports")]
    pub top_ports: Option<usize>,

    /// Ports never to scan.
    #[arg(long, value_name = "PORTS")]
    pub exclude_ports: Option<String>,

    /// Read targets from FILE ('-' for stdin), whitespace separated, '#'
    /// comments. nmap's spelling '-iL FILE' works too.
    #[arg(short = 'L', long = "input-list", value_name = "FILE", allow_hyphen_values = true)]
    pub input_list: Option<String>,

    /// The 'i' of nmap's '-iL FILE' (clap reads it as '-i' plus '-L FILE').
    #[arg(short = 'i', hide = true, requires = "input_list")]
    pub nmap_i: bool,

    /// Targets never to scan (comma-separated, repeatable).
    #[arg(long, value_name = "TARGETS", value_delimiter = ',')]
    pub exclude: Vec<String>,

    /// Time to wait for an answer to one probe ("500ms", "2s"; a bare
    /// number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse::timeout)]
    pub timeout: Duration,

    /// Most addresses one scan may cover; larger target sets (say
    /// 0.0.0.0/0) are refused before anything is probed.
    #[arg(long, value_name = "N", default_value_t = runspace_scan::DEFAULT_MAX_HOSTS)]
    pub max_hosts: u64,

    /// Hosts scanned at once.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub throttle: usize,

    /// Probes in flight at once over all hosts (default: derived from the
    /// open-file limit, at most 2048).
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,

    /// Extra probes for ports that did not answer.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub retries: u8,

    /// Output format (default: table on a terminal, jsonl otherwise).
    #[arg(long, value_enum)]
    pub format: Option<Format>,

    /// States to show: open, closed, filtered, error or all. Default: open
    /// for table and grepable, all for jsonl and csv.
    #[arg(long, value_name = "STATES")]
    pub show: Option<String>,

    /// Never show a progress bar.
    #[arg(long)]
    pub no_progress: bool,

    /// Never print the summary on stderr.
    #[arg(long)]
    pub no_summary: bool,

    /// Scanner threads (default: one per core, at most 4).
    #[arg(long, value_name = "N", hide = true)]
    pub workers: Option<usize>,
}

fn read_target_list(path: &str) -> Result<Vec<String>, String> {
    let reader: Box<dyn BufRead> = if path == "-" {
        Box::new(io::stdin().lock())
    } else {
        let f = std::fs::File::open(path).map_err(|e| format!("cannot read target list '{path}': {e}"))?;
        Box::new(io::BufReader::new(f))
    };
    let mut out = Vec::new();
    for line in reader.lines() {
        let line = line.map_err(|e| format!("cannot read target list '{path}': {e}"))?;
        let line = line.split('#').next().unwrap_or("");
        out.extend(line.split_whitespace().map(str::to_string));
    }
    Ok(out)
}

fn build_ports(args: &ScanArgs) -> Result<PortList, String> {
    let mut ports = match (&args.ports, args.top_ports) {
        (Some(spec), _) => PortList::parse(spec).map_err(|e| e.to_string())?,
        (None, Some(n)) => PortList::top(n).map_err(|e| e.to_string())?,
        (None, None) => PortList::default_ports(),
    };
    if let Some(ex) = &args.exclude_ports {
        let ex = PortList::parse(ex).map_err(|e| format!("--exclude-ports: {e}"))?;
        ports.exclude(&ex);
    }
    if ports.is_empty() {
        return Err("no ports left to scan after --exclude-ports".into());
    }
    Ok(ports)
}

/// Runs `rsp scan`; returns the exit code.
pub fn run(args: ScanArgs) -> Result<u8, CliError> {
    let plan = Plan::from_args(&args)?;
    let stdout_tty = io::stdout().is_terminal();
    let stderr_tty = io::stderr().is_terminal();
    let format = args.format.unwrap_or(if stdout_tty { Format::Table } else { Format::Jsonl });
    let show = plan.show.unwrap_or(match format {
        Format::Table | Format::Grepable => Show::OPEN,
        Format::Jsonl | Format::Csv => Show::ALL,
    });
    let total_hosts = plan.config.host_count();
    let total_probes = plan.config.probe_count();
    let progress = if stderr_tty && !args.no_progress && total_probes >= PROGRESS_MIN_PROBES {
        progress_bar(total_probes)
    } else {
        ProgressBar::hidden()
    };

    let mut stream = scan(plan.config);
    let interrupts = install_ctrl_c(stream.stop_handle());
    let mut report = Report::new(format, show, Services::system(), colour::stdout());
    let started = Instant::now();
    let mut out = BufWriter::new(io::stdout().lock());
    let written = (|| -> io::Result<()> {
        report.begin(&mut out)?;
        while let Some(event) = stream.blocking_next() {
            // Writing to the terminal the bar is drawn on: hide the bar for the
            // write. Table and grepable write only when a host is done.
            let writes_now = match &event {
                ScanEvent::HostDone(_) => true,
                ScanEvent::Port(_) => matches!(format, Format::Jsonl | Format::Csv),
                ScanEvent::TargetError(_) => true,
            };
            if stdout_tty && writes_now {
                progress.suspend(|| report.handle(&mut out, event))?;
            } else {
                report.handle(&mut out, event)?;
            }
            progress.set_position(report.counts.total());
        }
        // Hosts a stop cut short: what was found is printed all the same.
        report.finish(&mut out)?;
        out.flush()
    })();
    drop(out);
    progress.finish_and_clear();
    if let Err(e) = written {
        if e.kind() == io::ErrorKind::BrokenPipe {
            // The reader went away (`| head`): stop quietly.
            return Ok(exit::OK);
        }
        return Err(CliError::failure(format!("cannot write output: {e}")));
    }
    let stopped = stream.stop_handle().is_stopped();
    if !args.no_summary {
        diag!("{}", report.summary(total_hosts, started.elapsed(), stopped, colour::stderr()));
    }
    Ok(if interrupts.load(Ordering::Relaxed) > 0 {
        exit::INTERRUPTED
    } else if plan.bad_targets > 0 {
        exit::USAGE
    } else if report.unresolved > 0 {
        exit::SOME_FAILED
    } else {
        exit::OK
    })
}

/// What to scan, checked before anything is probed.
struct Plan {
    config: ScanConfig,
    show: Option<Show>,
    /// Targets that did not parse (each already reported): the valid ones are
    /// still scanned, and the exit code is 2.
    bad_targets: usize,
}

impl Plan {
    fn from_args(args: &ScanArgs) -> Result<Plan, CliError> {
        let ports = build_ports(args).map_err(CliError::usage)?;
        let show = args.show.as_deref().map(Show::parse).transpose().map_err(CliError::usage)?;
        if args.throttle == 0 || args.concurrency == Some(0) || args.workers == Some(0) {
            return Err(CliError::usage("--throttle, --concurrency and --workers must be at least 1"));
        }
        let mut target_texts = args.targets.clone();
        if let Some(path) = &args.input_list {
            target_texts.extend(read_target_list(path).map_err(CliError::usage)?);
        }
        if target_texts.is_empty() {
            return Err(CliError::usage("no targets given (name them, or use -iL FILE)"));
        }
        let mut bad_targets = 0;
        let mut specs = Vec::new();
        for text in &target_texts {
            match TargetSpec::parse(text) {
                Ok(s) => specs.push(s),
                Err(e) => {
                    diag!("rsp scan: {e}");
                    bad_targets += 1;
                }
            }
        }
        let mut exclude = Vec::new();
        for text in &args.exclude {
            // A typo in an exclusion must not widen the scan: refuse to start.
            exclude.push(TargetSpec::parse(text).map_err(|e| CliError::usage(format!("--exclude: {e}")))?);
        }
        if specs.is_empty() {
            return Err(CliError::usage("no valid targets to scan"));
        }
        if let Some(e) = runspace_scan::Exclusions::new(&exclude).1.first() {
            return Err(CliError::usage(format!("--exclude: {e}")));
        }
        let limit = limits::raise_nofile_limit().ok();
        let default_conc = limit.map_or(256, |l| limits::default_concurrency(l.soft));
        if let (Some(c), Some(l)) = (args.concurrency, limit) {
            if c as u64 + 64 > l.soft {
                diag!(
                    "rsp scan: warning: --concurrency {c} is above what the open-file limit ({}) allows; \
                     probes that run out of descriptors are retried, which is slower",
                    l.soft
                );
            }
        }
        let mut config = ScanConfig::new(specs)
            .ports(ports)
            .exclude(exclude)
            .timeout(args.timeout)
            .throttle(args.throttle)
            .retries(args.retries)
            .concurrency(args.concurrency.unwrap_or(default_conc))
            .max_hosts(args.max_hosts);
        if let Some(w) = args.workers {
            config = config.workers(w);
        }
        config
            .check_size()
            .map_err(|e| CliError::usage(format!("{e} (to scan them all, pass --max-hosts {})", e.hosts)))?;
        Ok(Plan { config, show, bad_targets })
    }
}

fn progress_bar(total_probes: u64) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(total_probes), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} ports {rate} ETA {eta}",
    ) {
        // indicatif's own {per_sec} prints four decimals (`1234.5678/s`).
        let style = style.with_key("rate", |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{} ports/s", crate::common::human::human_rate(state.per_sec()));
        });
        pb.set_style(style);
    }
    pb
}

/// First Ctrl-C: stop probing; the results found so far are printed and
/// the exit code is 130. A second one leaves at once.
fn install_ctrl_c(stopper: StopHandle) -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    // Another subcommand may have installed a handler already; then the default behaviour stays.
    let _ = ctrlc::set_handler(move || {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            stopper.stop();
        } else {
            std::process::exit(i32::from(exit::INTERRUPTED));
        }
    });
    count
}
