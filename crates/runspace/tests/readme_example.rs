//! The library tour in the README, kept compiling and true.

use runspace::{RunspacePool, Script, SessionState, Status};
use serde_json::json;
use std::time::Duration;

#[test]
fn the_readme_library_tour_works() -> Result<(), runspace::Error> {
    let session = SessionState::new()
        .variable("factor", json!(3))?
        .module("util", "return { double = function(x) return 2 * x end }")?
        .memory_limit(64 << 20);
    let pool = RunspacePool::builder().min(1).max(5).session(session).open()?;

    let script = Script::new("return util.double(_) * factor")?;
    let r = pool.invocation(&script).arg(json!(7)).invoke()?;
    assert_eq!(r.result(), json!(42));

    let handle = pool.invocation(&Script::new("sleep(3600)")?).begin()?;
    assert!(!handle.wait(Duration::from_millis(10)));
    handle.stop();
    assert_eq!(handle.end().status(), Status::Stopped);

    let mut seen = 0;
    for item in pool.parallel(&script).timeout(Duration::from_secs(1)).run((1..=100).map(|n| json!(n))) {
        assert_eq!(item.result, json!(item.input.as_i64().unwrap() * 6));
        seen += 1;
    }
    assert_eq!(seen, 100);
    Ok(())
}
