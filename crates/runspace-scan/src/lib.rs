//! A TCP connect scanner with nmap's port-state semantics.
//!
//! `runspace-scan` probes TCP ports with ordinary `connect()` calls — no raw
//! sockets, no root — and reports each port as **open** (connected),
//! **closed** (refused), or **filtered** (no answer within the timeout, or an
//! ICMP unreachable), with the reason and the measured round-trip time.
//! Local trouble (out of file descriptors, out of ephemeral ports) is backed
//! off and retried, never reported as a port state, and a loopback socket
//! that the kernel connected to itself is never reported open.
//!
//! Many hosts are scanned at once (`throttle`) under one global socket budget
//! (`concurrency`), each host held to its fair share so a silent host cannot
//! starve the others. Probes run on a few dedicated threads with their own
//! epoll sets; results stream out as they are known.
//!
//! A scan refuses target sets larger than [`ScanConfig::max_hosts`]
//! ([`DEFAULT_MAX_HOSTS`], a /16) before probing anything, and skips hosts
//! this machine cannot send to at all (no source address of their family,
//! no route) with one [`TargetError`] per cause instead of failing every port.
//!
//! # Examples
//!
//! Blocking:
//!
//! ```
//! use runspace_scan::{scan_blocking, PortList, PortState, ScanConfig};
//! let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
//! let port = listener.local_addr().unwrap().port();
//! let report = scan_blocking(
//!     ScanConfig::parse(["127.0.0.1"]).unwrap().ports(PortList::from_ports([port, 1])),
//! );
//! assert_eq!(report.results[0].port, 1);
//! assert_eq!(report.results[0].state, PortState::Closed);
//! assert_eq!(report.results[1].state, PortState::Open);
//! ```
//!
//! Streaming, from async code:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use runspace_scan::{scan, PortList, ScanConfig, ScanEvent};
//! let mut stream = scan(ScanConfig::parse(["127.0.0.1", "::1"]).unwrap()
//!     .ports(PortList::parse("20-25").unwrap()));
//! while let Some(event) = stream.next().await {
//!     match event {
//!         ScanEvent::Port(r) => println!("{} {}/tcp {} ({})", r.host, r.port, r.state, r.reason),
//!         ScanEvent::HostDone(h) => println!("{} done: {} open", h.host, h.counts.open),
//!         ScanEvent::TargetError(e) => eprintln!("{e}"),
//!     }
//! }
//! # }
//! ```

#![cfg(unix)]

mod engine;
pub mod limits;
pub mod ports;
mod probe;
pub mod result;
mod scanner;
mod scheduler;
pub mod services;
mod single;
pub mod target;

pub use ports::{PortList, PortSpecError, DEFAULT_PORTS};
pub use result::{Counts, HostSummary, PortResult, PortState, Reason, ScanEvent};
pub use scanner::{
    scan, scan_blocking, ScanConfig, ScanReport, ScanStream, StopHandle, TooManyHosts, DEFAULT_MAX_HOSTS,
};
pub use services::Services;
pub use single::{probe_async, probe_one, Cancelled, ProbeOutcome};
pub use target::{Exclusions, Target, TargetError, TargetSpec};
