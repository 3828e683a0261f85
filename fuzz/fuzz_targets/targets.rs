//! Target specifications (`10.0.0.0/24`, `127.0.0-2.1`, `::1`, names): never
//! panic; the count agrees with the addresses, which the spec contains.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runspace_scan::TargetSpec;

fuzz_target!(|text: &str| {
    let Ok(spec) = TargetSpec::parse(text) else { return };
    let count = spec.address_count();
    assert_eq!(count.is_none(), spec.is_name(), "{text:?}");
    let Some(count) = count else { return };
    assert!(count >= 1, "{text:?} has no addresses");
    let first: Vec<_> = spec.addresses().take(64).collect();
    assert_eq!(first.len() as u64, count.min(64), "{text:?}");
    for addr in first {
        assert!(spec.contains(addr), "{text:?} does not contain its own {addr}");
    }
});
