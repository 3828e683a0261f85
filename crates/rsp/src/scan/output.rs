//! Output formats of `rsp scan`: a table for people, JSON Lines and CSV for
//! programs (one record per probed port), and nmap's greppable one line per
//! host. The library never prints; this module only formats.

use std::io::{self, Write};

use runspace_scan::{HostSummary, PortResult, PortState, Services};

/// Which output format to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned table per host (the default on a terminal).
    Table,
    /// One JSON object per probed port (the default when piped).
    Jsonl,
    /// One CSV row per probed port, with a header row.
    Csv,
    /// One line per host, nmap `-oG` style.
    Grepable,
}

/// The set of states to show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Show {
    pub open: bool,
    pub closed: bool,
    pub filtered: bool,
    pub error: bool,
}

impl Show {
    /// Open ports only.
    pub const OPEN: Show = Show { open: true, closed: false, filtered: false, error: false };
    /// Every state.
    pub const ALL: Show = Show { open: true, closed: true, filtered: true, error: true };

    /// Parses `open,closed,filtered,error` or `all`.
    pub fn parse(spec: &str) -> Result<Show, String> {
        let mut show = Show { open: false, closed: false, filtered: false, error: false };
        for part in spec.split(',').map(str::trim) {
            match part {
                "all" => show = Show { open: true, closed: true, filtered: true, error: true },
                "open" => show.open = true,
                "closed" => show.closed = true,
                "filtered" => show.filtered = true,
                "error" | "errors" => show.error = true,
                other => {
                    return Err(format!("invalid --show value '{other}': use open, closed, filtered, error or all"))
                }
            }
        }
        Ok(show)
    }

    /// True when ports in `state` are shown.
    pub fn includes(&self, state: PortState) -> bool {
        match state {
            PortState::Open => self.open,
            PortState::Closed => self.closed,
            PortState::Filtered => self.filtered,
            PortState::Error => self.error,
        }
    }
}

/// ANSI colour of a state, for terminals.
pub fn state_colour(state: PortState) -> &'static str {
    match state {
        PortState::Open => "\x1b[32m",
        PortState::Closed => "\x1b[31m",
        PortState::Filtered => "\x1b[33m",
        PortState::Error => "\x1b[35m",
    }
}

/// ANSI reset.
pub const RESET: &str = "\x1b[0m";

fn rtt_text(r: &PortResult) -> String {
    match r.rtt_ms() {
        Some(ms) => format!("{ms:.3}ms"),
        None => "-".to_string(),
    }
}

/// One JSON Lines record; fields in this order, `error` only on error records.
#[derive(serde::Serialize)]
struct JsonRecord<'a> {
    host: &'a str,
    address: std::net::IpAddr,
    port: u16,
    state: &'a str,
    reason: &'a str,
    rtt_ms: Option<f64>,
    service: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// Writes one JSON Lines record.
pub fn write_jsonl(out: &mut dyn Write, r: &PortResult, services: &Services) -> io::Result<()> {
    let rec = JsonRecord {
        host: &r.host,
        address: r.address,
        port: r.port,
        state: r.state.as_str(),
        reason: r.reason.as_str(),
        rtt_ms: r.rtt_ms(),
        service: services.get(r.port),
        error: r.error.as_deref(),
    };
    serde_json::to_writer(&mut *out, &rec)?;
    out.write_all(b"\n")
}

/// The CSV header row.
pub const CSV_HEADER: &str = "host,address,port,state,reason,rtt_ms,service";

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Writes one CSV row.
pub fn write_csv(out: &mut dyn Write, r: &PortResult, services: &Services) -> io::Result<()> {
    writeln!(
        out,
        "{},{},{},{},{},{},{}",
        csv_field(&r.host),
        r.address,
        r.port,
        r.state,
        r.reason,
        r.rtt_ms().map(|v| v.to_string()).unwrap_or_default(),
        csv_field(services.get(r.port).unwrap_or("")),
    )
}

fn host_title(h: &HostSummary) -> String {
    let addr = h.address.to_string();
    if *h.host == addr {
        addr
    } else {
        format!("{} ({addr})", h.host)
    }
}

/// Summarises the states not shown, e.g. "65533 closed, 2 filtered".
fn hidden_summary(h: &HostSummary, show: Show) -> Option<String> {
    let parts: Vec<String> = [
        (PortState::Open, h.counts.open),
        (PortState::Closed, h.counts.closed),
        (PortState::Filtered, h.counts.filtered),
        (PortState::Error, h.counts.errors),
    ]
    .iter()
    .filter(|(s, n)| *n > 0 && !show.includes(*s))
    .map(|(s, n)| format!("{n} {s}"))
    .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// Writes one host's table (its shown ports, sorted by the caller).
pub fn write_table(
    out: &mut dyn Write,
    h: &HostSummary,
    ports: &[PortResult],
    show: Show,
    services: &Services,
    colour: bool,
) -> io::Result<()> {
    writeln!(out, "Scan report for {}", host_title(h))?;
    if let Some(hidden) = hidden_summary(h, show) {
        writeln!(out, "Not shown: {hidden} ports")?;
    }
    if !ports.is_empty() {
        let svc_w = ports.iter().map(|r| services.get(r.port).unwrap_or("unknown").len()).max().unwrap_or(0).max(7);
        writeln!(out, "{:<9} {:<8} {:<svc_w$} {:<16} RTT", "PORT", "STATE", "SERVICE", "REASON")?;
        for r in ports {
            let state = format!("{:<8}", r.state.as_str());
            let state = if colour { format!("{}{state}{RESET}", state_colour(r.state)) } else { state };
            let mut reason = r.reason.as_str().to_string();
            if let Some(err) = &r.error {
                reason = format!("{reason} ({err})");
            }
            writeln!(
                out,
                "{:<9} {state} {:<svc_w$} {:<16} {}",
                format!("{}/tcp", r.port),
                services.get(r.port).unwrap_or("unknown"),
                reason,
                rtt_text(r),
            )?;
        }
    }
    writeln!(out)
}

/// Writes one host's greppable line (nmap `-oG` layout:
/// `port/state/protocol/owner/service/rpc/version/`).
pub fn write_grepable(
    out: &mut dyn Write,
    h: &HostSummary,
    ports: &[PortResult],
    show: Show,
    services: &Services,
) -> io::Result<()> {
    let name = if *h.host == h.address.to_string() { String::new() } else { h.host.to_string() };
    let list: Vec<String> = ports
        .iter()
        .map(|r| format!("{}/{}/tcp//{}///", r.port, r.state, services.get(r.port).unwrap_or("")))
        .collect();
    write!(out, "Host: {} ({name})\tPorts: {}", h.address, list.join(", "))?;
    if let Some(hidden) = hidden_summary(h, show) {
        write!(out, "\tIgnored State: {hidden}")?;
    }
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use runspace_scan::{Counts, Reason};
    use std::time::Duration;

    fn result(port: u16, state: PortState, reason: Reason) -> PortResult {
        PortResult {
            host: "localhost".into(),
            address: "127.0.0.1".parse().unwrap(),
            port,
            state,
            reason,
            rtt: Some(Duration::from_micros(1500)),
            attempts: 1,
            error: None,
        }
    }

    #[test]
    fn show_parsing() {
        assert!(Show::parse("all").unwrap().includes(PortState::Filtered));
        let s = Show::parse("closed,filtered").unwrap();
        assert!(!s.includes(PortState::Open) && s.includes(PortState::Closed));
        assert!(Show::parse("opn").unwrap_err().contains("opn"));
    }

    #[test]
    fn formats() {
        let services = Services::parse("ssh 22/tcp\n");
        let r = result(22, PortState::Open, Reason::SynAck);
        let mut buf = Vec::new();
        write_jsonl(&mut buf, &r, &services).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["service"], "ssh");
        assert_eq!(v["rtt_ms"], 1.5);
        buf.clear();
        write_csv(&mut buf, &r, &services).unwrap();
        assert_eq!(String::from_utf8(buf.clone()).unwrap(), "localhost,127.0.0.1,22,open,syn-ack,1.5,ssh\n");
        let h = HostSummary {
            host: "localhost".into(),
            address: r.address,
            counts: Counts { open: 1, closed: 9, ..Counts::default() },
            elapsed: Duration::ZERO,
        };
        buf.clear();
        let show = Show::parse("open").unwrap();
        write_grepable(&mut buf, &h, std::slice::from_ref(&r), show, &services).unwrap();
        assert_eq!(
            String::from_utf8(buf.clone()).unwrap(),
            "Host: 127.0.0.1 (localhost)\tPorts: 22/open/tcp//ssh///\tIgnored State: 9 closed\n"
        );
        buf.clear();
        write_table(&mut buf, &h, &[r], show, &services, false).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(text.contains("Scan report for localhost (127.0.0.1)"));
        assert!(text.contains("Not shown: 9 closed ports"));
        assert!(text.contains("22/tcp    open     ssh"));
    }
}
