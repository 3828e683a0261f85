//! Ranges (`1..100`, `-5..5`, `10..1`): never panic; an accepted range has
//! at most 2^53 items, prints as it parses, and iterates exactly its length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runspace::inputs::{Range, MAX_RANGE_LEN};

fuzz_target!(|text: &str| {
    match text.parse::<Range>() {
        Ok(range) => {
            assert!(range.len() >= 1 && range.len() <= MAX_RANGE_LEN, "{text:?}");
            assert_eq!(range.to_string().parse::<Range>(), Ok(range));
            let seen: Vec<i64> = range.iter().take(1000).collect();
            assert_eq!(seen.len() as u64, range.len().min(1000), "{text:?}");
            assert_eq!(seen[0], range.start);
            if range.len() <= 1000 {
                assert_eq!(*seen.last().unwrap(), range.end);
            }
        }
        Err(e) => assert!(e.contains(&format!("'{text}'")), "{text:?}: {e}"),
    }
});
