//! Engine figures that only the library can measure: the cost of opening a
//! runspace (time and memory), parallel throughput without the command
//! line, how fast a stop ends an endless loop, and what the interrupt
//! costs on call- and loop-heavy code with and without a memory limit
//! (the limit adds the collection check). `bench/run.sh` runs it.
//!
//! `cargo run --release -p runspace --example engine_bench`

use std::time::{Duration, Instant};

use runspace::{Runspace, RunspacePool, Script, SessionState};
use serde_json::json;

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let session = SessionState::new();
    const OPEN: usize = 1000;
    // Memory first, in a fresh process: freed pages would hide the cost later.
    let before = rss_bytes();
    let kept: Vec<_> = (0..OPEN).map(|_| Runspace::open(&session).unwrap()).collect();
    let rss_kb = (rss_bytes().saturating_sub(before)) as f64 / OPEN as f64 / 1024.0;
    let vm_kb = kept[0].memory_used() as f64 / 1024.0;
    drop(kept);

    // Time per runspace opened, median of 5 rounds.
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let kept: Vec<_> = (0..OPEN).map(|_| Runspace::open(&session).unwrap()).collect();
        times.push(started.elapsed().as_secs_f64() * 1e3 / OPEN as f64);
        drop(kept);
    }
    println!("open_ms_per_runspace\t{:.3}", median(times));
    println!("rss_kb_per_runspace\t{rss_kb:.0}");
    println!("vm_heap_kb_per_runspace\t{vm_kb:.0}");

    // Library throughput: a trivial map over 1,000,000 items at throttle 2.
    let pool = RunspacePool::builder().min(2).max(2).open().unwrap();
    let script = Script::new("return _ * _").unwrap();
    let mut rates = Vec::new();
    for _ in 0..5 {
        const N: u64 = 1_000_000;
        let started = Instant::now();
        let count = pool.parallel(&script).run((0..N).map(|n| json!(n))).count() as u64;
        assert_eq!(count, N);
        rates.push(N as f64 / started.elapsed().as_secs_f64());
    }
    println!("library_items_per_s\t{:.0}", median(rates));

    // Stop latency: how long after stop() an endless loop has ended.
    let mut latencies = Vec::new();
    let endless = Script::new("while true do end").unwrap();
    for _ in 0..20 {
        let handle = pool.invocation(&endless).begin().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let started = Instant::now();
        handle.stop();
        assert!(handle.wait(Duration::from_secs(5)));
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
    }
    println!("stop_latency_ms\t{:.3}", median(latencies));

    // The interrupt runs at every call and loop back-edge: time a tight
    // loop and recursive fib, without and with a memory limit.
    // Allocation-heavy: 8 MB of garbage per iteration; at 64 MB this needs
    // the collection the interrupt runs before the limit is reached.
    let churn = Script::new(r#"local s = string.rep("a", 2^23) for i = 1, 300 do local _ = s:upper() end"#).unwrap();
    let mut rs = Runspace::open(&SessionState::new().memory_limit(64 << 20)).unwrap();
    let started = Instant::now();
    let r = rs.invoke(&churn, &[], &[]);
    println!("churn_300x8mb_ms_limit_64mb\t{:.0}\t{}", started.elapsed().as_secs_f64() * 1e3, r.status());
    let tight = Script::new("local n = 0 for i = 1, 2e7 do n += i end return n").unwrap();
    let fib = Script::new(
        "local function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end return fib(27)",
    )
    .unwrap();
    for (label, session) in
        [("no_limit", SessionState::new()), ("limit_64mb", SessionState::new().memory_limit(64 << 20))]
    {
        let mut rs = Runspace::open(&session).unwrap();
        for (name, script) in [("tight_loop", &tight), ("fib27", &fib)] {
            let mut times = Vec::new();
            for _ in 0..5 {
                let started = Instant::now();
                rs.invoke(script, &[], &[]);
                times.push(started.elapsed().as_secs_f64() * 1e3);
            }
            println!("{name}_ms_{label}\t{:.1}", median(times));
        }
    }
}
