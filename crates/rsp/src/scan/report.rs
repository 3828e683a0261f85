//! What `rsp scan` has seen, written out as it comes: per-port records at
//! once (JSON Lines, CSV), per-host blocks when a host is done (table,
//! grepable), and what a stop cut short at the end, so Ctrl-C never loses a
//! result.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runspace_scan::{Counts, HostSummary, PortResult, PortState, ScanEvent, Services};

use super::output::{self, Format, Show};
use crate::common::diag::diag;
use crate::common::human::human_count;

/// A host still being scanned: its counts so far, the ports to show, and
/// when its first answer came.
struct Pending {
    counts: Counts,
    shown: Vec<PortResult>,
    first_seen: Instant,
}

/// The output of one scan.
pub struct Report {
    format: Format,
    show: Show,
    services: Services,
    colour: bool,
    /// Ports seen, by state, over all hosts.
    pub counts: Counts,
    hosts_done: u64,
    /// Host names that did not resolve.
    pub unresolved: u64,
    /// Hosts still being scanned (table and grepable only).
    pending: HashMap<(Arc<str>, IpAddr), Pending>,
}

impl Report {
    /// A report in `format`, showing ports in the states of `show`.
    pub fn new(format: Format, show: Show, services: Services, colour: bool) -> Report {
        Report {
            format,
            show,
            services,
            colour,
            counts: Counts::default(),
            hosts_done: 0,
            unresolved: 0,
            pending: HashMap::new(),
        }
    }

    /// Writes what precedes the first record.
    pub fn begin(&mut self, out: &mut dyn Write) -> io::Result<()> {
        match self.format {
            Format::Csv => writeln!(out, "{}", output::CSV_HEADER),
            _ => Ok(()),
        }
    }

    /// Takes one event of the scan's stream.
    pub fn handle(&mut self, out: &mut dyn Write, event: ScanEvent) -> io::Result<()> {
        match event {
            ScanEvent::Port(r) => {
                self.counts.add(r.state);
                match self.format {
                    Format::Jsonl if self.show.includes(r.state) => output::write_jsonl(out, &r, &self.services)?,
                    Format::Csv if self.show.includes(r.state) => output::write_csv(out, &r, &self.services)?,
                    Format::Jsonl | Format::Csv => {}
                    Format::Table | Format::Grepable => {
                        let host = self.pending.entry((r.host.clone(), r.address)).or_insert_with(|| Pending {
                            counts: Counts::default(),
                            shown: Vec::new(),
                            first_seen: Instant::now(),
                        });
                        host.counts.add(r.state);
                        if self.show.includes(r.state) {
                            host.shown.push(r);
                        }
                    }
                }
            }
            ScanEvent::HostDone(h) => {
                self.hosts_done += 1;
                let shown = self.pending.remove(&(h.host.clone(), h.address)).map(|p| p.shown).unwrap_or_default();
                self.write_host(out, &h, shown)?;
                out.flush()?;
            }
            ScanEvent::TargetError(e) => {
                self.unresolved += 1;
                diag!("rsp scan: {e}");
            }
        }
        Ok(())
    }

    /// Writes the hosts a stop cut short, with the ports found so far.
    pub fn finish(&mut self, out: &mut dyn Write) -> io::Result<()> {
        let mut cut_short: Vec<_> = self.pending.drain().collect();
        cut_short.sort_by(|a, b| a.0 .1.cmp(&b.0 .1).then_with(|| a.0 .0.cmp(&b.0 .0)));
        for ((host, address), pending) in cut_short {
            let summary = HostSummary { host, address, counts: pending.counts, elapsed: pending.first_seen.elapsed() };
            self.write_host(out, &summary, pending.shown)?;
        }
        Ok(())
    }

    fn write_host(&self, out: &mut dyn Write, h: &HostSummary, mut shown: Vec<PortResult>) -> io::Result<()> {
        shown.sort_by_key(|r| r.port);
        match self.format {
            Format::Table => output::write_table(out, h, &shown, self.show, &self.services, self.colour),
            Format::Grepable => output::write_grepable(out, h, &shown, self.show, &self.services),
            Format::Jsonl | Format::Csv => Ok(()),
        }
    }

    /// The summary block for stderr.
    pub fn summary(&self, total_hosts: u64, elapsed: Duration, stopped: bool, colour: bool) -> String {
        let paint = |code: &str, text: String| {
            if colour {
                format!("{code}{text}{}", output::RESET)
            } else {
                text
            }
        };
        let c = &self.counts;
        let line = |state: PortState, label: &str, n: u64| {
            paint(output::state_colour(state), format!("  {label:<15} {}", human_count(n)))
        };
        [
            paint("\x1b[36m", if stopped { "Scan summary (stopped):" } else { "Scan summary:" }.into()),
            format!("  Hosts scanned: {}/{}", human_count(self.hosts_done), human_count(total_hosts)),
            line(PortState::Open, "Open ports:", c.open),
            line(PortState::Closed, "Closed ports:", c.closed),
            line(PortState::Filtered, "Filtered ports:", c.filtered),
            line(PortState::Error, "Errors:", c.errors + self.unresolved),
            format!("  Elapsed:        {:.2}s", elapsed.as_secs_f64()),
        ]
        .join("\n")
    }
}
