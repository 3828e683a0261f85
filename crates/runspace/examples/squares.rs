//! The seed guide's first usage example, `1..100 | Invoke-ParallelProcessing
//! -ScriptBlock { param($n) $n * $n } -ThrottleLimit 10`, as a Rust program.
//!
//! Run it with `cargo run --release -p runspace --example squares`.

use runspace::{RunspacePool, Script, Status};
use serde_json::json;

fn main() -> Result<(), runspace::Error> {
    let pool = RunspacePool::builder().max(10).open()?;
    let script = Script::new("local n = ... return n * n")?;
    let mut results: Vec<_> = pool.parallel(&script).run((1..=100).map(|n| json!(n))).collect();
    results.sort_by_key(|r| r.index);
    let failed = results.iter().filter(|r| r.status != Status::Completed).count();
    for r in &results {
        println!("{} -> {} ({:.3} ms)", r.input, r.result, r.duration_ms);
    }
    eprintln!("{} results, {failed} failed", results.len());
    Ok(())
}
