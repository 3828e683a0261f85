//! Sizes (`64MB`, `1.5G`, `1e300GB`): never panic; an accepted size is
//! within 1..=MAX_SIZE; errors quote the text; formatting any size works.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runspace::units::{format_size, parse_size, MAX_SIZE};

fuzz_target!(|data: &[u8]| {
    if data.len() >= 8 {
        let n = u64::from_le_bytes(data[..8].try_into().unwrap());
        assert!(!format_size(n).is_empty());
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse_size(text) {
        Ok(n) => {
            assert!((1..=MAX_SIZE).contains(&n), "{text:?} gave {n}");
            // What we print, we read back (to within the one decimal shown).
            let shown = format_size(n);
            let back = parse_size(&shown.replace(' ', "").replace("bytes", "").replace("byte", "")).unwrap();
            assert!(back.abs_diff(n) <= n / 10 + 1, "{n} shown as {shown} read as {back}");
        }
        Err(e) => assert!(e.to_string().contains(&format!("'{text}'")), "{text:?}: {e}"),
    }
});
