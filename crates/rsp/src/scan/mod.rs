//! `rsp scan`: parse the command line, run a `runspace_scan` scan, format
//! its results. Exit codes: 0 the scan ran, 1 it ran but some host names did
//! not resolve, 2 usage errors (bad ports, bad targets, bad options — the
//! valid targets are still scanned when only some targets are malformed).

mod output;

use std::collections::HashMap;
use std::io::{self, BufRead, BufWriter, IsTerminal, Write};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use runspace_scan::{limits, scan, Counts, PortList, PortResult, ScanConfig, ScanEvent, Services, TargetSpec};

use output::{Format, Show};

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
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_timeout)]
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

    /// Scanner threads (default: one per core, at most 4).
    #[arg(long, value_name = "N", hide = true)]
    pub workers: Option<usize>,
}

/// Prints a usage error and returns exit code 2.
fn usage(msg: impl std::fmt::Display) -> i32 {
    say(format_args!("rsp scan: {msg}"));
    2
}

/// Writes a line to stderr. A closed stderr (`2>&1 | head -1`) is not an
/// error worth dying for: the line is dropped.
fn say(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr().lock(), "{line}");
}

fn colour_ok(stream_is_tty: bool) -> bool {
    stream_is_tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A probe timeout: any duration `rsp` accepts (a bare number is seconds), but not zero.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let d = crate::common::parse::duration(text)?;
    if d.is_zero() {
        return Err(format!("invalid duration '{text}': must be more than zero"));
    }
    Ok(d)
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
pub fn run(args: ScanArgs) -> i32 {
    let ports = match build_ports(&args) {
        Ok(p) => p,
        Err(e) => return usage(e),
    };
    let timeout = args.timeout;
    let show = match args.show.as_deref().map(Show::parse).transpose() {
        Ok(s) => s,
        Err(e) => return usage(e),
    };
    if args.throttle == 0 || args.concurrency == Some(0) || args.workers == Some(0) {
        return usage("--throttle, --concurrency and --workers must be at least 1");
    }

    let mut target_texts = args.targets.clone();
    let list = args.input_list.clone();
    if let Some(path) = &list {
        match read_target_list(path) {
            Ok(t) => target_texts.extend(t),
            Err(e) => return usage(e),
        }
    }
    if target_texts.is_empty() {
        return usage("no targets given (name them, or use -iL FILE)");
    }
    let mut bad_targets = 0;
    let mut specs = Vec::new();
    for text in &target_texts {
        match TargetSpec::parse(text) {
            Ok(s) => specs.push(s),
            Err(e) => {
                say(format_args!("rsp scan: {e}"));
                bad_targets += 1;
            }
        }
    }
    let mut exclude = Vec::new();
    for text in &args.exclude {
        // A typo in an exclusion must not widen the scan: refuse to start.
        match TargetSpec::parse(text) {
            Ok(s) => exclude.push(s),
            Err(e) => return usage(format!("--exclude: {e}")),
        }
    }
    if specs.is_empty() {
        return usage("no valid targets to scan");
    }
    if let Some(e) = runspace_scan::Exclusions::new(&exclude).1.first() {
        return usage(format!("--exclude: {e}"));
    }

    let limit = limits::raise_nofile_limit().ok();
    let default_conc = limit.map_or(256, |l| limits::default_concurrency(l.soft));
    if let (Some(c), Some(l)) = (args.concurrency, limit) {
        if c as u64 + 64 > l.soft {
            say(format_args!(
                "rsp scan: warning: --concurrency {c} is above what the open-file limit ({}) allows; \
                 probes that run out of descriptors are retried, which is slower",
                l.soft
            ));
        }
    }
    let mut config = ScanConfig::new(specs)
        .ports(ports)
        .exclude(exclude)
        .timeout(timeout)
        .throttle(args.throttle)
        .retries(args.retries)
        .concurrency(args.concurrency.unwrap_or(default_conc))
        .max_hosts(args.max_hosts);
    if let Some(w) = args.workers {
        config = config.workers(w);
    }
    if let Err(e) = config.check_size() {
        return usage(format!("{e} (to scan them all, pass --max-hosts {})", e.hosts));
    }

    let stdout_tty = io::stdout().is_terminal();
    let stderr_tty = io::stderr().is_terminal();
    let format = args.format.unwrap_or(if stdout_tty { Format::Table } else { Format::Jsonl });
    let show = show.unwrap_or(match format {
        Format::Table | Format::Grepable => Show::parse("open").expect("valid"),
        Format::Jsonl | Format::Csv => Show::parse("all").expect("valid"),
    });
    let total_hosts = config.host_count();
    let total_probes = config.probe_count();
    let progress = if stderr_tty && !args.no_progress && total_probes >= PROGRESS_MIN_PROBES {
        let pb = ProgressBar::with_draw_target(Some(total_probes), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} ports {per_sec} ETA {eta}",
        ) {
            pb.set_style(style);
        }
        pb
    } else {
        ProgressBar::hidden()
    };

    let mut stream = scan(config);
    let stopper = stream.stop_handle();
    // Ctrl-C: stop probing, report what is known. Another subcommand may
    // have installed a handler already; then the default behaviour stays.
    let _ = ctrlc::set_handler(move || stopper.stop());

    let ctx = Ctx { format, show, services: Services::system(), colour: colour_ok(stdout_tty) };
    let started = Instant::now();
    let mut out = BufWriter::new(io::stdout().lock());
    let mut state = RunState::default();
    if format == Format::Csv {
        let _ = writeln!(out, "{}", output::CSV_HEADER);
    }
    while let Some(event) = stream.blocking_next() {
        // Writing to the terminal the bar is drawn on: hide the bar for the
        // write. Table and grepable write only when a host is done.
        let writes_now = match &event {
            ScanEvent::HostDone(_) => true,
            ScanEvent::Port(_) => matches!(format, Format::Jsonl | Format::Csv),
            ScanEvent::TargetError(_) => true,
        };
        let res = if stdout_tty && writes_now {
            progress.suspend(|| state.handle(&ctx, &mut out, event))
        } else {
            state.handle(&ctx, &mut out, event)
        };
        if let Err(e) = res {
            if e.kind() == io::ErrorKind::BrokenPipe {
                // The reader went away (`| head`): stop quietly.
                return 0;
            }
            say(format_args!("rsp scan: cannot write output: {e}"));
            return 1;
        }
        progress.set_position(state.counts.total());
    }
    let _ = out.flush();
    drop(out);
    progress.finish_and_clear();
    let stopped = stream.stop_handle().is_stopped();
    print_summary(&state, total_hosts, started.elapsed(), stopped, colour_ok(stderr_tty));
    if bad_targets > 0 {
        2
    } else if state.unresolved > 0 {
        1
    } else {
        0
    }
}

/// Fixed settings of one run's output.
struct Ctx {
    format: Format,
    show: Show,
    services: Services,
    colour: bool,
}

/// What the output loop has seen so far.
#[derive(Default)]
struct RunState {
    counts: Counts,
    hosts_done: u64,
    unresolved: u64,
    /// Shown ports of hosts still being scanned (table and grepable only).
    pending: HashMap<(Arc<str>, IpAddr), Vec<PortResult>>,
}

impl RunState {
    fn handle(&mut self, ctx: &Ctx, out: &mut dyn Write, event: ScanEvent) -> io::Result<()> {
        match event {
            ScanEvent::Port(r) => {
                self.counts.add(r.state);
                if !ctx.show.includes(r.state) {
                    return Ok(());
                }
                match ctx.format {
                    Format::Jsonl => output::write_jsonl(out, &r, &ctx.services)?,
                    Format::Csv => output::write_csv(out, &r, &ctx.services)?,
                    Format::Table | Format::Grepable => {
                        self.pending.entry((r.host.clone(), r.address)).or_default().push(r)
                    }
                }
            }
            ScanEvent::HostDone(h) => {
                self.hosts_done += 1;
                let mut ports = self.pending.remove(&(h.host.clone(), h.address)).unwrap_or_default();
                ports.sort_by_key(|r| r.port);
                match ctx.format {
                    Format::Table => output::write_table(out, &h, &ports, ctx.show, &ctx.services, ctx.colour)?,
                    Format::Grepable => output::write_grepable(out, &h, &ports, ctx.show, &ctx.services)?,
                    Format::Jsonl | Format::Csv => {}
                }
                out.flush()?;
            }
            ScanEvent::TargetError(e) => {
                self.unresolved += 1;
                say(format_args!("rsp scan: {e}"));
            }
        }
        Ok(())
    }
}

fn print_summary(state: &RunState, total_hosts: u64, elapsed: Duration, stopped: bool, colour: bool) {
    let paint = |code: &str, text: String| {
        if colour {
            format!("{code}{text}{}", output::RESET)
        } else {
            text
        }
    };
    let c = &state.counts;
    let mut lines = vec![
        paint("\x1b[36m", if stopped { "Scan summary (stopped):" } else { "Scan summary:" }.into()),
        format!("  Hosts scanned: {}/{}", state.hosts_done, total_hosts),
        paint(output::state_colour(runspace_scan::PortState::Open), format!("  Open ports:     {}", c.open)),
        paint(output::state_colour(runspace_scan::PortState::Closed), format!("  Closed ports:   {}", c.closed)),
        paint(output::state_colour(runspace_scan::PortState::Filtered), format!("  Filtered ports: {}", c.filtered)),
        paint(
            output::state_colour(runspace_scan::PortState::Error),
            format!("  Errors:         {}", c.errors + state.unresolved),
        ),
    ];
    lines.push(format!("  Elapsed:        {:.2}s", elapsed.as_secs_f64()));
    say(format_args!("{}", lines.join("\n")));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_timeout("2").unwrap(), Duration::from_secs(2), "a bare number is seconds");
        assert_eq!(parse_timeout("0.5").unwrap(), Duration::from_millis(500));
        assert!(parse_timeout("0").unwrap_err().contains("more than zero"));
        assert!(parse_timeout("0ms").is_err());
        assert!(parse_timeout("soon").unwrap_err().contains("soon"));
        assert!(parse_timeout("4e31").is_err());
        assert!(parse_timeout("18446744073709551615s").is_err());
    }
}
