//! Full-range scan of one address; prints open ports and the elapsed time.
//! `cargo run --release -p runspace-scan --example fullscan -- 127.0.0.1`
use runspace_scan::{limits, scan_blocking, PortList, ScanConfig};

fn main() {
    let target = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1".into());
    let workers: Option<usize> = std::env::args().nth(2).and_then(|s| s.parse().ok());
    let conc: Option<usize> = std::env::args().nth(3).and_then(|s| s.parse().ok());
    limits::raise_nofile_limit().expect("read the open-file limit");
    let mut config = ScanConfig::parse([target]).expect("valid target").ports(PortList::all());
    if let Some(w) = workers {
        config = config.workers(w);
    }
    if let Some(c) = conc {
        config = config.concurrency(c);
    }
    let report = scan_blocking(config);
    let open: Vec<u16> =
        report.results.iter().filter(|r| r.state == runspace_scan::PortState::Open).map(|r| r.port).collect();
    println!("open {open:?}");
    println!("{:?} in {:.3}s", report.counts, report.elapsed.as_secs_f64());
}
