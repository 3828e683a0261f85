//! Halt rules (`now`, `soon,fail=10%`, `now,success=3`): never panic; an
//! accepted rule prints as something that parses back to the same rule.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runspace::{Halt, RunProgress};

fuzz_target!(|text: &str| {
    match text.parse::<Halt>() {
        Ok(halt) => {
            let shown = halt.to_string();
            assert_eq!(shown.parse::<Halt>(), Ok(halt), "{text:?} shown as {shown:?}");
            let p = RunProgress { done: 10, completed: 5, failed: 5, ..RunProgress::default() };
            let _ = halt.fires(&p);
        }
        Err(e) => assert!(e.contains(&format!("{text:?}")), "{text:?}: {e}"),
    }
});
