//! Scans of planted listeners on loopback: the scanner must find exactly
//! them open and every other port closed.
//!
//! SAFETY RULE: these tests scan only 127.0.0.0/8 and ::1.
//!
//! "Exactly" has one allowance: other programs on the machine may listen on
//! a wildcard address, which answers on every 127.x address too. Such ports
//! are read independently from /proc/net/tcp{,6}; a port reported open must
//! be planted or listed there, and every planted port must be open.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener};
use std::time::{Duration, Instant};

use runspace_scan::{scan, scan_blocking, PortList, PortState, Reason, ScanConfig, ScanEvent, ScanReport};

fn plant(addr: &str) -> (TcpListener, u16) {
    listener_sampler();
    let l = TcpListener::bind((addr, 0)).expect("bind a loopback listener");
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// Ports in LISTEN state that accept on `addr`, per /proc/net/tcp{,6}: now,
/// and at any time a background sampler saw since the first call. Other
/// programs (other test suites on a shared machine) open and close loopback
/// listeners all the time; one that came and went during a scan is
/// legitimately reported open.
fn system_listeners(addr: IpAddr) -> BTreeSet<u16> {
    let mut all = listening_now();
    all.extend(listener_sampler().lock().unwrap().iter().copied());
    all.into_iter().filter(|(local, _)| *local == addr || local.is_unspecified()).map(|(_, port)| port).collect()
}

/// The listeners seen so far by a sampler thread, started at the first call
/// (from `plant`, so before any scan).
fn listener_sampler() -> &'static std::sync::Mutex<BTreeSet<(IpAddr, u16)>> {
    use std::sync::{Mutex, OnceLock};
    static SEEN: OnceLock<&'static Mutex<BTreeSet<(IpAddr, u16)>>> = OnceLock::new();
    SEEN.get_or_init(|| {
        let seen: &'static Mutex<BTreeSet<(IpAddr, u16)>> = Box::leak(Box::default());
        std::thread::spawn(move || loop {
            let now = listening_now();
            seen.lock().unwrap().extend(now);
            std::thread::sleep(Duration::from_millis(5));
        });
        seen
    })
}

/// Every (address, port) in LISTEN state, per /proc/net/tcp{,6}.
fn listening_now() -> BTreeSet<(IpAddr, u16)> {
    let mut out = BTreeSet::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 || f[3] != "0A" {
                continue;
            }
            let Some((hex, port)) = f[1].split_once(':') else {
                continue;
            };
            let port = u16::from_str_radix(port, 16).unwrap();
            let local: IpAddr = if hex.len() == 8 {
                Ipv4Addr::from(u32::from_str_radix(hex, 16).unwrap().to_ne_bytes()).into()
            } else {
                let mut b = [0u8; 16];
                for i in 0..4 {
                    let w = u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).unwrap();
                    b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
                }
                Ipv6Addr::from(b).into()
            };
            out.insert((local, port));
        }
    }
    out
}

/// Asserts the report for `addr` over `ports`: planted open, the rest
/// closed (conn-refused, with a measured rtt), one result per port.
fn assert_exact(report: &ScanReport, addr: IpAddr, ports: &PortList, planted: &[u16]) {
    let results: Vec<_> = report.results.iter().filter(|r| r.address == addr).collect();
    assert_eq!(results.len(), ports.len(), "one result per port for {addr}");
    let seen: BTreeSet<u16> = results.iter().map(|r| r.port).collect();
    assert_eq!(seen.len(), ports.len(), "no duplicate results for {addr}");
    let open: BTreeSet<u16> = results.iter().filter(|r| r.state == PortState::Open).map(|r| r.port).collect();
    for p in planted {
        assert!(open.contains(p), "planted port {addr}:{p} not reported open");
    }
    let others = system_listeners(addr);
    for p in &open {
        assert!(planted.contains(p) || others.contains(p), "{addr}:{p} reported open but nothing listens there");
    }
    for r in results.iter().filter(|r| r.state != PortState::Open) {
        assert_eq!(
            (r.state, r.reason),
            (PortState::Closed, Reason::ConnRefused),
            "{addr}:{} should be closed: {r:?}",
            r.port
        );
        assert!(r.rtt.is_some(), "an answered probe has an rtt");
    }
    for r in results.iter().filter(|r| r.state == PortState::Open) {
        assert_eq!(r.reason, Reason::SynAck);
    }
}

#[test]
fn full_range_scan_of_one_address_is_exact() {
    let planted: Vec<_> = (0..4).map(|_| plant("127.0.0.1")).collect();
    let ports: Vec<u16> = planted.iter().map(|p| p.1).collect();
    let config = ScanConfig::parse(["127.0.0.1"]).unwrap().ports(PortList::all());
    let report = scan_blocking(config);
    assert_eq!(report.hosts.len(), 1);
    assert_eq!(report.counts.total(), 65535);
    assert_eq!(report.counts.errors, 0);
    assert_exact(&report, "127.0.0.1".parse().unwrap(), &PortList::all(), &ports);
}

#[test]
fn several_loopback_addresses_at_once() {
    let addrs = ["127.0.0.2", "127.0.0.3", "127.1.2.3", "127.0.0.4"];
    let mut planted: HashMap<IpAddr, Vec<u16>> = HashMap::new();
    let mut keep = Vec::new();
    for a in &addrs[..3] {
        for _ in 0..2 {
            let (l, p) = plant(a);
            planted.entry(a.parse().unwrap()).or_default().push(p);
            keep.push(l);
        }
    }
    let mut list: Vec<u16> = (1..=1500).collect();
    list.extend(planted.values().flatten());
    let ports = PortList::from_ports(list);
    let config = ScanConfig::parse(["127.0.0.2-3", "127.1.2.3", "127.0.0.4"])
        .unwrap()
        .ports(ports.clone())
        .throttle(2)
        .concurrency(64);
    let report = scan_blocking(config);
    assert_eq!(report.hosts.len(), 4);
    for a in addrs {
        let addr: IpAddr = a.parse().unwrap();
        let p = planted.get(&addr).cloned().unwrap_or_default();
        assert_exact(&report, addr, &ports, &p);
    }
}

#[test]
fn sixteen_hosts_fairly_under_a_small_budget() {
    let (_a, pa) = plant("127.0.0.5");
    let (_b, pb) = plant("127.0.0.9");
    let mut list = PortList::top(100).unwrap().as_slice().to_vec();
    list.extend([pa, pb]);
    let ports = PortList::from_ports(list);
    let config =
        ScanConfig::parse(["127.0.0.1-16"]).unwrap().ports(ports.clone()).throttle(4).concurrency(8).workers(2);
    let report = scan_blocking(config);
    assert_eq!(report.hosts.len(), 16);
    for i in 1..=16u8 {
        let addr = IpAddr::from([127, 0, 0, i]);
        let expect: Vec<u16> = match i {
            5 => vec![pa],
            9 => vec![pb],
            _ => vec![],
        };
        assert_exact(&report, addr, &ports, &expect);
    }
}

#[test]
fn ipv6_loopback() {
    let Ok(l) = TcpListener::bind("[::1]:0") else {
        eprintln!("SKIP ipv6_loopback: ::1 is not available here");
        return;
    };
    let port = l.local_addr().unwrap().port();
    let ports = PortList::from_ports((1..=500).chain([port]));
    let report = scan_blocking(ScanConfig::parse(["::1"]).unwrap().ports(ports.clone()));
    assert_exact(&report, "::1".parse().unwrap(), &ports, &[port]);
}

#[test]
fn host_names_report_the_scanned_address() {
    let (_l, port) = plant("127.0.0.1");
    let report = scan_blocking(
        ScanConfig::parse(["localhost", "no-such-host.invalid"]).unwrap().ports(PortList::from_ports([port])),
    );
    assert_eq!(report.errors.len(), 1);
    assert_eq!(report.errors[0].target, "no-such-host.invalid");
    let r = &report.results[0];
    assert_eq!(&*r.host, "localhost");
    assert!(r.address.is_loopback());
}

#[test]
fn exclusions_are_not_scanned() {
    let config = ScanConfig::parse(["127.0.0.1-4"])
        .unwrap()
        .exclude(vec!["127.0.0.2".parse().unwrap(), "127.0.0.4/32".parse().unwrap()])
        .ports(PortList::parse("1-10").unwrap());
    assert_eq!(config.host_count(), 2);
    let report = scan_blocking(config);
    let hosts: BTreeSet<String> = report.results.iter().map(|r| r.address.to_string()).collect();
    assert_eq!(hosts, BTreeSet::from(["127.0.0.1".into(), "127.0.0.3".into()]));
}

#[test]
fn stream_orders_ports_before_host_done() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let config = ScanConfig::parse(["127.0.0.1-6"]).unwrap().ports(PortList::parse("1-300").unwrap()).throttle(3);
        let mut stream = scan(config);
        let mut ports: HashMap<IpAddr, usize> = HashMap::new();
        let mut done = 0;
        while let Some(ev) = stream.next().await {
            match ev {
                ScanEvent::Port(r) => *ports.entry(r.address).or_default() += 1,
                ScanEvent::HostDone(h) => {
                    assert_eq!(ports.get(&h.address), Some(&300), "all ports before HostDone");
                    assert_eq!(h.counts.total(), 300);
                    done += 1;
                }
                ScanEvent::TargetError(e) => panic!("{e}"),
            }
        }
        assert_eq!(done, 6);
    });
}

#[test]
fn stop_ends_the_stream_promptly() {
    let config = ScanConfig::parse(["127.0.0.0/24"]).unwrap().ports(PortList::all());
    let mut stream = scan(config);
    let stop = stream.stop_handle();
    let started = Instant::now();
    let mut n = 0u64;
    while let Some(_ev) = stream.blocking_next() {
        n += 1;
        if n == 1000 {
            stop.stop();
        }
    }
    assert!(n < 256 * 65535, "the scan did not run to the end");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_target_set_over_max_hosts_is_refused_without_probing() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = ScanConfig::parse(["127.0.0.1-20"]).unwrap().ports(PortList::from_ports([port])).max_hosts(19);
    let e = config.check_size().unwrap_err();
    assert_eq!((e.hosts, e.limit), (20, 19));
    assert!(!e.to_string().contains("--"), "the library names no flag: {e}");
    let events: Vec<ScanEvent> = scan(config.clone()).collect();
    assert_eq!(events.len(), 1, "{events:?}");
    let ScanEvent::TargetError(err) = &events[0] else { panic!("{events:?}") };
    assert!(err.to_string().contains("cover 20 addresses, more than the limit of 19"), "{err}");
    // At the limit, everything is scanned.
    let report = scan_blocking(config.max_hosts(20));
    assert_eq!(report.results.len(), 20);
    // The default limit is a /16, and it is checked on the sum of all targets.
    assert_eq!(runspace_scan::DEFAULT_MAX_HOSTS, 65_536);
    assert!(ScanConfig::parse(["10.0.0.0/16"]).unwrap().check_size().is_ok());
    assert!(ScanConfig::parse(["10.0.0.0/16", "10.1.0.0"]).unwrap().check_size().is_err());
}
