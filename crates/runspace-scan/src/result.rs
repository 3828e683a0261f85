//! What a scan reports: port states with nmap's meanings, the reason for each
//! state, per-host summaries and the events of the result stream.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::target::TargetError;

/// The state of one port, with nmap's meanings.
///
/// The PowerShell original inverted two of these (it called a timeout
/// "Closed" and a refusal "Filtered"); here a refusal is proof that the host
/// is up and nothing listens, and silence means something dropped the probe.
///
/// ```
/// use runspace_scan::PortState;
/// assert_eq!(PortState::Closed.as_str(), "closed");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PortState {
    /// The connection was accepted: something listens.
    Open,
    /// The host answered with a reset (connection refused): nothing listens.
    Closed,
    /// No answer within the timeout, or an ICMP unreachable / prohibited:
    /// a firewall or the network is in the way.
    Filtered,
    /// The probe could not be sent (for example, the address family is not
    /// supported, or local resources stayed exhausted through every retry).
    /// This says nothing about the remote port.
    Error,
}

impl PortState {
    /// The lower-case name used in every output format.
    ///
    /// ```
    /// assert_eq!(runspace_scan::PortState::Open.as_str(), "open");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            PortState::Open => "open",
            PortState::Closed => "closed",
            PortState::Filtered => "filtered",
            PortState::Error => "error",
        }
    }
}

impl fmt::Display for PortState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a port got its state, named as nmap names its reasons where one
/// exists (`syn-ack`, `conn-refused`, `no-response`, `host-unreach`, …).
///
/// ```
/// use runspace_scan::{Reason, PortState};
/// assert_eq!(Reason::ConnRefused.state(), PortState::Closed);
/// assert_eq!(Reason::NoResponse.as_str(), "no-response");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The three-way handshake completed.
    SynAck,
    /// The connection was refused (a TCP reset, or ICMP port unreachable).
    ConnRefused,
    /// The connection was reset during the handshake.
    Reset,
    /// No answer before the timeout, on every attempt.
    NoResponse,
    /// ICMP host unreachable (or no route to the host).
    HostUnreach,
    /// ICMP network unreachable (or no route to the network).
    NetUnreach,
    /// The host is down (ICMP host down / ARP failed).
    HostDown,
    /// Administratively prohibited, by a remote ICMP message or a local
    /// firewall rule.
    AdminProhibited,
    /// The probe could not be sent and retries did not help: the error code
    /// is in the message of the result.
    LocalError,
}

impl Reason {
    /// The reason's name in output.
    ///
    /// ```
    /// assert_eq!(runspace_scan::Reason::SynAck.as_str(), "syn-ack");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::SynAck => "syn-ack",
            Reason::ConnRefused => "conn-refused",
            Reason::Reset => "reset",
            Reason::NoResponse => "no-response",
            Reason::HostUnreach => "host-unreach",
            Reason::NetUnreach => "net-unreach",
            Reason::HostDown => "host-down",
            Reason::AdminProhibited => "admin-prohibited",
            Reason::LocalError => "local-error",
        }
    }

    /// The port state this reason implies.
    ///
    /// ```
    /// use runspace_scan::{Reason, PortState};
    /// assert_eq!(Reason::HostUnreach.state(), PortState::Filtered);
    /// ```
    pub fn state(self) -> PortState {
        match self {
            Reason::SynAck => PortState::Open,
            Reason::ConnRefused | Reason::Reset => PortState::Closed,
            Reason::NoResponse
            | Reason::HostUnreach
            | Reason::NetUnreach
            | Reason::HostDown
            | Reason::AdminProhibited => PortState::Filtered,
            Reason::LocalError => PortState::Error,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The final result for one port of one host.
///
/// ```
/// use runspace_scan::{PortResult, PortState, Reason};
/// let r = PortResult {
///     host: "localhost".into(),
///     address: "127.0.0.1".parse().unwrap(),
///     port: 22,
///     state: PortState::Closed,
///     reason: Reason::ConnRefused,
///     rtt: Some(std::time::Duration::from_micros(40)),
///     attempts: 1,
///     error: None,
/// };
/// assert_eq!(r.rtt_ms(), Some(0.04));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct PortResult {
    /// The target as the user named it (host name or address text).
    pub host: Arc<str>,
    /// The address that was scanned.
    pub address: IpAddr,
    /// The TCP port.
    pub port: u16,
    /// The port state.
    pub state: PortState,
    /// Why it has that state.
    pub reason: Reason,
    /// Measured time from `connect()` to the answer; `None` when nothing
    /// answered (never the timeout itself).
    pub rtt: Option<Duration>,
    /// How many probes were sent (1 + retries used).
    pub attempts: u32,
    /// For [`PortState::Error`]: the system error that could not be retried
    /// away.
    pub error: Option<String>,
}

impl PortResult {
    /// The round-trip time in milliseconds (microsecond precision).
    ///
    /// ```
    /// # use runspace_scan::*;
    /// # let r = PortResult { host: "h".into(), address: "::1".parse().unwrap(), port: 1,
    /// #   state: PortState::Filtered, reason: Reason::NoResponse, rtt: None, attempts: 2, error: None };
    /// assert_eq!(r.rtt_ms(), None);
    /// ```
    pub fn rtt_ms(&self) -> Option<f64> {
        self.rtt.map(|d| d.as_micros() as f64 / 1000.0)
    }
}

/// Counts of port states for one host or a whole scan.
///
/// ```
/// use runspace_scan::{Counts, PortState};
/// let mut c = Counts::default();
/// c.add(PortState::Open);
/// assert_eq!(c.open, 1);
/// assert_eq!(c.total(), 1);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Open ports.
    pub open: u64,
    /// Closed ports.
    pub closed: u64,
    /// Filtered ports.
    pub filtered: u64,
    /// Ports that ended in a local error.
    pub errors: u64,
}

impl Counts {
    /// Counts one more port in `state`.
    ///
    /// ```
    /// let mut c = runspace_scan::Counts::default();
    /// c.add(runspace_scan::PortState::Error);
    /// assert_eq!(c.errors, 1);
    /// ```
    pub fn add(&mut self, state: PortState) {
        match state {
            PortState::Open => self.open += 1,
            PortState::Closed => self.closed += 1,
            PortState::Filtered => self.filtered += 1,
            PortState::Error => self.errors += 1,
        }
    }

    /// Adds another set of counts.
    ///
    /// ```
    /// let mut a = runspace_scan::Counts { open: 1, ..Default::default() };
    /// a.merge(&a.clone());
    /// assert_eq!(a.open, 2);
    /// ```
    pub fn merge(&mut self, other: &Counts) {
        self.open += other.open;
        self.closed += other.closed;
        self.filtered += other.filtered;
        self.errors += other.errors;
    }

    /// All ports counted.
    ///
    /// ```
    /// assert_eq!(runspace_scan::Counts::default().total(), 0);
    /// ```
    pub fn total(&self) -> u64 {
        self.open + self.closed + self.filtered + self.errors
    }
}

/// Sent once a host's every port has its final state.
///
/// ```
/// # use runspace_scan::*;
/// let h = HostSummary { host: "h".into(), address: "127.0.0.1".parse().unwrap(),
///                       counts: Counts::default(), elapsed: std::time::Duration::ZERO };
/// assert_eq!(h.counts.total(), 0);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct HostSummary {
    /// The target as the user named it.
    pub host: Arc<str>,
    /// The address that was scanned.
    pub address: IpAddr,
    /// Port states of this host.
    pub counts: Counts,
    /// Time from the host's first probe to its last answer.
    pub elapsed: Duration,
}

/// One item of the result stream.
///
/// For each host, every [`ScanEvent::Port`] comes before its
/// [`ScanEvent::HostDone`], so a consumer can buffer per host and print a
/// sorted report when the host is done.
///
/// ```
/// # use runspace_scan::*;
/// fn describe(e: &ScanEvent) -> String {
///     match e {
///         ScanEvent::Port(r) => format!("{}:{} {}", r.address, r.port, r.state),
///         ScanEvent::HostDone(h) => format!("{} done", h.host),
///         ScanEvent::TargetError(e) => e.to_string(),
///     }
/// }
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum ScanEvent {
    /// The final state of one port.
    Port(PortResult),
    /// A host has all its ports answered.
    HostDone(HostSummary),
    /// A host name that could not be resolved; the other targets go on.
    TargetError(TargetError),
}
