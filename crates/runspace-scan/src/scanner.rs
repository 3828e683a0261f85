//! Scan configuration, the streaming scan and the blocking convenience call.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::engine::{self, Shared};
use crate::limits;
use crate::ports::PortList;
use crate::probe;
use crate::result::{Counts, HostSummary, PortResult, ScanEvent};
use crate::scheduler::Scheduler;
use crate::target::{Exclusions, Target, TargetError, TargetSpec};

/// What to scan and how.
///
/// ```
/// use std::time::Duration;
/// use runspace_scan::{PortList, ScanConfig};
/// let config = ScanConfig::parse(["127.0.0.1", "127.0.0.2-3"]).unwrap()
///     .ports(PortList::parse("22,80").unwrap())
///     .timeout(Duration::from_millis(500))
///     .retries(0);
/// assert_eq!(config.probe_count(), 6);
/// ```
#[derive(Clone, Debug)]
pub struct ScanConfig {
    /// Targets to scan, in order.
    pub targets: Vec<TargetSpec>,
    /// Addresses never to scan.
    pub exclude: Vec<TargetSpec>,
    /// Ports to probe on every target.
    pub ports: PortList,
    /// How long to wait for an answer to one probe.
    pub timeout: Duration,
    /// How many hosts are scanned at once.
    pub throttle: usize,
    /// Global socket budget: probes in flight at once, over all hosts.
    /// `None`: derived from the open-file limit ([`limits::current_default_concurrency`]).
    pub concurrency: Option<usize>,
    /// How many more times an unanswered port is probed.
    pub retries: u8,
    /// Worker threads; `None`: one per core, at most 4.
    pub workers: Option<usize>,
    /// Most addresses a scan may cover ([`DEFAULT_MAX_HOSTS`] by default):
    /// a larger target set is refused before anything is probed.
    pub max_hosts: u64,
}

/// How many addresses a scan may cover unless [`ScanConfig::max_hosts`]
/// allows more: a /16. Scanning `0.0.0.0/0` by a typo is refused.
pub const DEFAULT_MAX_HOSTS: u64 = 65_536;

/// A target set larger than [`ScanConfig::max_hosts`].
///
/// ```
/// let c = runspace_scan::ScanConfig::parse(["0.0.0.0/0"]).unwrap();
/// let e = c.check_size().unwrap_err();
/// assert_eq!((e.hosts, e.limit), (1 << 32, 65_536));
/// assert!(c.max_hosts(1 << 32).check_size().is_ok());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooManyHosts {
    /// Addresses the targets cover (host names count one each).
    pub hosts: u64,
    /// The limit in force.
    pub limit: u64,
}

impl std::fmt::Display for TooManyHosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the targets cover {} addresses, more than the limit of {}; nothing was scanned",
            self.hosts, self.limit
        )
    }
}

impl std::error::Error for TooManyHosts {}

impl ScanConfig {
    /// A scan of `targets` on the default ports, 1 s timeout, 20 hosts at
    /// once, 1 retry and the default socket budget.
    ///
    /// ```
    /// let c = runspace_scan::ScanConfig::new(vec!["::1".parse().unwrap()]);
    /// assert_eq!(c.ports.len(), 9);
    /// ```
    pub fn new(targets: Vec<TargetSpec>) -> ScanConfig {
        ScanConfig {
            targets,
            exclude: Vec::new(),
            ports: PortList::default_ports(),
            timeout: Duration::from_millis(1000),
            throttle: 20,
            concurrency: None,
            retries: 1,
            workers: None,
            max_hosts: DEFAULT_MAX_HOSTS,
        }
    }

    /// Parses the targets and builds a default config; the first malformed
    /// target is the error.
    ///
    /// ```
    /// assert!(runspace_scan::ScanConfig::parse(["127.0.0.1/33"]).is_err());
    /// ```
    pub fn parse<I, S>(targets: I) -> Result<ScanConfig, TargetError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let specs = targets.into_iter().map(|t| t.as_ref().parse()).collect::<Result<Vec<TargetSpec>, _>>()?;
        Ok(ScanConfig::new(specs))
    }

    /// Sets the ports.
    ///
    /// ```
    /// let c = runspace_scan::ScanConfig::parse(["::1"]).unwrap().ports(runspace_scan::PortList::all());
    /// assert_eq!(c.ports.len(), 65535);
    /// ```
    pub fn ports(mut self, ports: PortList) -> ScanConfig {
        self.ports = ports;
        self
    }

    /// Sets the excluded addresses.
    ///
    /// ```
    /// let c = runspace_scan::ScanConfig::parse(["127.0.0.1-2"]).unwrap()
    ///     .exclude(vec!["127.0.0.2".parse().unwrap()]);
    /// assert_eq!(c.host_count(), 1);
    /// ```
    pub fn exclude(mut self, exclude: Vec<TargetSpec>) -> ScanConfig {
        self.exclude = exclude;
        self
    }

    /// Sets the per-probe timeout.
    ///
    /// ```
    /// let c = runspace_scan::ScanConfig::parse(["::1"]).unwrap().timeout(std::time::Duration::from_secs(2));
    /// assert_eq!(c.timeout.as_secs(), 2);
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> ScanConfig {
        self.timeout = timeout;
        self
    }

    /// Sets how many hosts are scanned at once (at least 1).
    ///
    /// ```
    /// assert_eq!(runspace_scan::ScanConfig::parse(["::1"]).unwrap().throttle(0).throttle, 1);
    /// ```
    pub fn throttle(mut self, hosts: usize) -> ScanConfig {
        self.throttle = hosts.max(1);
        self
    }

    /// Sets the global socket budget (at least 1).
    ///
    /// ```
    /// assert_eq!(runspace_scan::ScanConfig::parse(["::1"]).unwrap().concurrency(64).concurrency, Some(64));
    /// ```
    pub fn concurrency(mut self, sockets: usize) -> ScanConfig {
        self.concurrency = Some(sockets.max(1));
        self
    }

    /// Sets how many times an unanswered port is probed again.
    ///
    /// ```
    /// assert_eq!(runspace_scan::ScanConfig::parse(["::1"]).unwrap().retries(3).retries, 3);
    /// ```
    pub fn retries(mut self, retries: u8) -> ScanConfig {
        self.retries = retries;
        self
    }

    /// Sets the number of worker threads (at least 1).
    ///
    /// ```
    /// assert_eq!(runspace_scan::ScanConfig::parse(["::1"]).unwrap().workers(2).workers, Some(2));
    /// ```
    pub fn workers(mut self, workers: usize) -> ScanConfig {
        self.workers = Some(workers.max(1));
        self
    }

    /// Allows scans of up to `hosts` addresses (default [`DEFAULT_MAX_HOSTS`]).
    ///
    /// ```
    /// let c = runspace_scan::ScanConfig::parse(["10.0.0.0/8"]).unwrap();
    /// assert!(c.check_size().is_err());
    /// assert!(c.max_hosts(1 << 24).check_size().is_ok());
    /// ```
    pub fn max_hosts(mut self, hosts: u64) -> ScanConfig {
        self.max_hosts = hosts;
        self
    }

    /// Refuses a target set larger than [`ScanConfig::max_hosts`]. [`scan`]
    /// makes the same check and probes nothing when it fails.
    pub fn check_size(&self) -> Result<(), TooManyHosts> {
        let hosts = self.host_count();
        if hosts > self.max_hosts {
            Err(TooManyHosts { hosts, limit: self.max_hosts })
        } else {
            Ok(())
        }
    }

    /// Number of hosts to scan: exact for literal addresses (exclusions
    /// applied when the list is under a million addresses), one per host name.
    ///
    /// ```
    /// assert_eq!(runspace_scan::ScanConfig::parse(["127.0.0.0/24"]).unwrap().host_count(), 256);
    /// ```
    pub fn host_count(&self) -> u64 {
        let (ex, _) = Exclusions::new(&self.exclude.iter().filter(|s| !s.is_name()).cloned().collect::<Vec<_>>());
        self.targets
            .iter()
            .map(|spec| match spec.address_count() {
                None => 1,
                Some(n) if n <= 1 << 20 && !self.exclude.is_empty() => {
                    spec.addresses().filter(|a| !ex.contains(*a)).count() as u64
                }
                Some(n) => n,
            })
            .fold(0u64, u64::saturating_add)
    }

    /// Total probes of a first pass: hosts × ports.
    ///
    /// ```
    /// assert_eq!(runspace_scan::ScanConfig::parse(["::1"]).unwrap().probe_count(), 9);
    /// ```
    pub fn probe_count(&self) -> u64 {
        self.host_count() * self.ports.len() as u64
    }

    fn effective_concurrency(&self) -> usize {
        self.concurrency.unwrap_or_else(limits::current_default_concurrency).max(1)
    }
}

/// Stops a running scan from anywhere (a Ctrl-C handler, another task).
///
/// ```
/// let config = runspace_scan::ScanConfig::parse(["127.0.0.1"]).unwrap();
/// let scan = runspace_scan::scan(config);
/// scan.stop_handle().stop();
/// ```
#[derive(Clone, Debug)]
pub struct StopHandle(Arc<AtomicBool>);

impl StopHandle {
    /// Asks the scan to stop: no new probes are sent, in-flight sockets are
    /// closed, and the stream ends after the results already known.
    ///
    /// ```
    /// # let scan = runspace_scan::scan(runspace_scan::ScanConfig::parse(["::1"]).unwrap());
    /// scan.stop_handle().stop();
    /// ```
    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// True once [`StopHandle::stop`] was called.
    ///
    /// ```
    /// # let scan = runspace_scan::scan(runspace_scan::ScanConfig::parse(["::1"]).unwrap());
    /// assert!(!scan.stop_handle().is_stopped());
    /// ```
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A running scan: a stream of [`ScanEvent`]s in the order answers arrive.
///
/// The probes run on the scan's own threads, so the stream works from any
/// async runtime (`next`) or from plain threads (`blocking_next`).
/// Dropping it stops the scan.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use runspace_scan::{scan, PortList, ScanConfig, ScanEvent};
/// let config = ScanConfig::parse(["127.0.0.1"]).unwrap().ports(PortList::parse("1-100").unwrap());
/// let mut stream = scan(config);
/// let mut ports = 0;
/// while let Some(event) = stream.next().await {
///     if let ScanEvent::Port(r) = event {
///         ports += 1;
///         let _ = (r.port, r.state, r.reason, r.rtt);
///     }
/// }
/// assert_eq!(ports, 100);
/// # }
/// ```
#[derive(Debug)]
pub struct ScanStream {
    rx: mpsc::Receiver<Vec<ScanEvent>>,
    buffer: VecDeque<ScanEvent>,
    stop: StopHandle,
}

impl ScanStream {
    /// The next event, or `None` when the scan is finished (or stopped).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let config = runspace_scan::ScanConfig::parse(["127.0.0.1"]).unwrap();
    /// let mut s = runspace_scan::scan(config);
    /// assert!(s.next().await.is_some());
    /// # }
    /// ```
    pub async fn next(&mut self) -> Option<ScanEvent> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                return Some(e);
            }
            let batch = self.rx.recv().await?;
            self.buffer.extend(batch);
        }
    }

    /// The next event, blocking the calling thread. Do not call it from
    /// inside an async runtime (use [`ScanStream::next`] there).
    ///
    /// ```
    /// let config = runspace_scan::ScanConfig::parse(["127.0.0.1"]).unwrap();
    /// let mut s = runspace_scan::scan(config);
    /// while let Some(_event) = s.blocking_next() {}
    /// ```
    pub fn blocking_next(&mut self) -> Option<ScanEvent> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                return Some(e);
            }
            let batch = self.rx.blocking_recv()?;
            self.buffer.extend(batch);
        }
    }

    /// A handle that stops this scan.
    ///
    /// ```
    /// # let s = runspace_scan::scan(runspace_scan::ScanConfig::parse(["::1"]).unwrap());
    /// let stopper = s.stop_handle();
    /// # stopper.stop();
    /// ```
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }
}

impl Drop for ScanStream {
    fn drop(&mut self) {
        self.stop.stop();
    }
}

impl Iterator for ScanStream {
    type Item = ScanEvent;

    /// Same as [`ScanStream::blocking_next`].
    fn next(&mut self) -> Option<ScanEvent> {
        self.blocking_next()
    }
}

/// Starts a scan and returns the stream of its results.
///
/// Host names are resolved as the scan reaches them (a name that does not
/// resolve becomes a [`ScanEvent::TargetError`], and the other targets are
/// scanned). Excluded host names are resolved first; if one cannot be
/// resolved, nothing is scanned, because scanning anyway could probe the
/// very host the caller meant to exclude. The scan uses the open-file limit as it is; call
/// [`limits::raise_nofile_limit`] first to use more of it.
///
/// ```
/// use runspace_scan::{scan, ScanConfig, ScanEvent, PortState};
/// let mut stream = scan(ScanConfig::parse(["127.0.0.1"]).unwrap());
/// let open: Vec<u16> = stream
///     .by_ref()
///     .filter_map(|e| match e { ScanEvent::Port(r) if r.state == PortState::Open => Some(r.port), _ => None })
///     .collect();
/// # let _ = open;
/// ```
pub fn scan(config: ScanConfig) -> ScanStream {
    let stop = StopHandle(Arc::new(AtomicBool::new(false)));
    let (tx, rx) = mpsc::channel::<Vec<ScanEvent>>(256);
    if let Err(too_many) = config.check_size() {
        // Nothing is probed: the stream holds the refusal and ends.
        let refusal = TargetError { target: targets_text(&config.targets), problem: too_many.to_string() };
        let buffer = VecDeque::from([ScanEvent::TargetError(refusal)]);
        return ScanStream { rx, buffer, stop };
    }
    let concurrency = config.effective_concurrency();
    let workers = config
        .workers
        .unwrap_or_else(|| thread::available_parallelism().map_or(2, |n| n.get()).min(4))
        .clamp(1, concurrency);
    let (target_tx, target_rx) = sync_channel::<Target>(config.throttle.max(1));
    let ports: Arc<[u16]> = config.ports.as_slice().into();

    let feed_events = tx.clone();
    let feed_stop = stop.0.clone();
    let (targets, exclude) = (config.targets.clone(), config.exclude.clone());
    thread::Builder::new()
        .name("scan-targets".into())
        .spawn(move || feed_targets(targets, exclude, target_tx, feed_events, feed_stop))
        .expect("spawn target feeder thread");

    let shared = Arc::new(Shared {
        sched: Mutex::new(Scheduler::new(ports, config.retries, config.throttle, concurrency, target_rx)),
        stop: stop.0.clone(),
        events: tx,
        timeout: config.timeout,
    });
    let per_worker = concurrency.div_ceil(workers);
    for i in 0..workers {
        let shared = shared.clone();
        thread::Builder::new()
            .name(format!("scan-worker-{i}"))
            .spawn(move || engine::run_worker(shared, per_worker))
            .expect("spawn scan worker thread");
    }
    ScanStream { rx, buffer: VecDeque::new(), stop }
}

/// The targets as the user wrote them, for a message about all of them.
fn targets_text(targets: &[TargetSpec]) -> String {
    let mut text: Vec<String> = targets.iter().take(3).map(ToString::to_string).collect();
    if targets.len() > 3 {
        text.push(format!("… ({} targets)", targets.len()));
    }
    text.join(" ")
}

/// Targets skipped because this machine cannot send to them at all, by
/// cause: reported once per cause at the end, not once per port or host.
#[derive(Default)]
struct Unreachable(BTreeMap<i32, (IpAddr, u64)>);

impl Unreachable {
    fn add(&mut self, err: i32, address: IpAddr) {
        self.0.entry(err).or_insert((address, 0)).1 += 1;
    }

    fn into_errors(self) -> Vec<ScanEvent> {
        self.0
            .into_iter()
            .map(|(err, (first, count))| {
                let more = if count > 1 { format!(" (nor {} more addresses)", count - 1) } else { String::new() };
                let why = match err {
                    libc::EADDRNOTAVAIL | libc::EAFNOSUPPORT => "this machine has no source address of that family",
                    _ => "this machine has no route to it",
                };
                ScanEvent::TargetError(TargetError {
                    target: first.to_string(),
                    problem: format!("not scanned{more}: {why} ({})", probe::describe(err)),
                })
            })
            .collect()
    }
}

/// Expands, resolves and filters the targets, feeding them to the scheduler
/// as host slots free up (the channel is bounded by the throttle).
fn feed_targets(
    targets: Vec<TargetSpec>,
    exclude: Vec<TargetSpec>,
    out: std::sync::mpsc::SyncSender<Target>,
    events: mpsc::Sender<Vec<ScanEvent>>,
    stop: Arc<AtomicBool>,
) {
    let report = |e: TargetError| events.blocking_send(vec![ScanEvent::TargetError(e)]).is_ok();
    let (ex, errors) = Exclusions::new(&exclude);
    if !errors.is_empty() {
        // An exclusion that cannot be resolved would silently widen the
        // scan: scan nothing and say why.
        for e in errors {
            report(e);
        }
        return;
    }
    let mut unreachable = Unreachable::default();
    'specs: for spec in &targets {
        let resolved: Box<dyn Iterator<Item = Target>> = if spec.is_name() {
            match spec.resolve() {
                Ok(t) => Box::new(t.into_iter()),
                Err(e) => {
                    if !report(e) {
                        return;
                    }
                    continue;
                }
            }
        } else {
            Box::new(spec.addresses().map(Target::new))
        };
        for t in resolved {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if ex.contains(t.address) {
                continue;
            }
            if let Err(err) = probe::source_check(t.address) {
                unreachable.add(err, t.address);
                continue;
            }
            if out.send(t).is_err() {
                break 'specs;
            }
        }
    }
    let errors = unreachable.into_errors();
    if !errors.is_empty() {
        let _ = events.blocking_send(errors);
    }
}

/// Everything a finished scan found.
///
/// ```
/// let report = runspace_scan::scan_blocking(runspace_scan::ScanConfig::parse(["127.0.0.1"]).unwrap());
/// assert_eq!(report.results.len(), 9);
/// assert_eq!(report.counts.total(), 9);
/// ```
#[derive(Clone, Debug, Default)]
pub struct ScanReport {
    /// Every port's final result, sorted by address, then port.
    pub results: Vec<PortResult>,
    /// One summary per scanned host, in the order hosts finished.
    pub hosts: Vec<HostSummary>,
    /// Targets that could not be resolved.
    pub errors: Vec<TargetError>,
    /// Port states over all hosts.
    pub counts: Counts,
    /// Wall time of the scan.
    pub elapsed: Duration,
}

impl ScanReport {
    /// The open ports of one address, sorted.
    ///
    /// ```
    /// let report = runspace_scan::ScanReport::default();
    /// assert!(report.open_ports("127.0.0.1".parse().unwrap()).is_empty());
    /// ```
    pub fn open_ports(&self, address: IpAddr) -> Vec<u16> {
        self.results
            .iter()
            .filter(|r| r.address == address && r.state == crate::PortState::Open)
            .map(|r| r.port)
            .collect()
    }
}

/// Runs a scan to the end on the calling thread and collects the report.
/// Do not call it from inside an async runtime: use [`scan`] there.
///
/// ```
/// use runspace_scan::{scan_blocking, PortList, ScanConfig};
/// let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
/// let port = listener.local_addr().unwrap().port();
/// let config = ScanConfig::parse(["127.0.0.1"]).unwrap().ports(PortList::from_ports([port]));
/// let report = scan_blocking(config);
/// assert_eq!(report.open_ports("127.0.0.1".parse().unwrap()), vec![port]);
/// ```
pub fn scan_blocking(config: ScanConfig) -> ScanReport {
    let started = Instant::now();
    let mut report = ScanReport::default();
    for event in scan(config) {
        match event {
            ScanEvent::Port(r) => {
                report.counts.add(r.state);
                report.results.push(r);
            }
            ScanEvent::HostDone(h) => report.hosts.push(h),
            ScanEvent::TargetError(e) => report.errors.push(e),
        }
    }
    report.results.sort_by(|a, b| (a.address, &a.host, a.port).cmp(&(b.address, &b.host, b.port)));
    report.elapsed = started.elapsed();
    report
}
