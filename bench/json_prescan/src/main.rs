//! `cargo run --release --manifest-path bench/json_prescan/Cargo.toml`
//!
//! Parses the same JSON Lines with plain `serde_json::from_slice` and with
//! `runspace::json::parse` (the big-integer pre-scan, then the same parse),
//! best of 5, and prints ns per line and the ratio. Compiles the library's
//! own json.rs, so the figure is of the shipped code, not a copy.

#[allow(dead_code)]
#[path = "../../../crates/runspace/src/json.rs"]
mod json;

use std::hint::black_box;
use std::time::Instant;

fn best_of(lines: &[Vec<u8>], parse: impl Fn(&[u8]) -> serde_json::Value) -> f64 {
    (0..5)
        .map(|_| {
            let started = Instant::now();
            for line in lines {
                black_box(parse(black_box(line)));
            }
            started.elapsed().as_nanos() as f64 / lines.len() as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let n = 500_000;
    let kinds: [(&str, Box<dyn Fn(usize) -> String>); 4] = [
        (
            "small record",
            Box::new(|i| format!(r#"{{"id":{i},"host":"host-{i}.example","size":{}.5,"tags":["a","b"]}}"#, i * 7)),
        ),
        ("bare integer", Box::new(|i| i.to_string())),
        (
            "16-digit ids (scanned, none quoted)",
            Box::new(|i| format!(r#"{{"id":{},"n":{i}}}"#, 1_000_000_000_000_000u64 + i as u64)),
        ),
        (
            "one id beyond 2^53 (quoted)",
            Box::new(|i| format!(r#"{{"id":{},"n":{i}}}"#, 18_446_744_073_709_551_616u128 + i as u128)),
        ),
    ];
    println!("| line | serde_json (ns/line) | runspace::json::parse (ns/line) | ratio |");
    println!("|---|---:|---:|---:|");
    for (name, make) in kinds {
        let lines: Vec<Vec<u8>> = (0..n).map(|i| make(i).into_bytes()).collect();
        // Interleaved, best of each, so a busy machine hurts both alike.
        let (mut plain, mut ours) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..3 {
            plain = plain.min(best_of(&lines, |l| serde_json::from_slice(l).unwrap()));
            ours = ours.min(best_of(&lines, |l| json::parse(l).unwrap()));
        }
        println!("| {name} | {plain:.0} | {ours:.0} | {:.2} |", ours / plain);
    }
}
