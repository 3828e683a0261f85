//! Port specifications (`-p 22,80,8000-8100`): never panic; a parsed list is
//! sorted, unique, within 1..=65535, and holds every port a single-port item named.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runspace_scan::PortList;

fuzz_target!(|text: &str| {
    let Ok(list) = PortList::parse(text) else { return };
    let ports = list.as_slice();
    assert!(!ports.is_empty());
    assert!(ports.windows(2).all(|w| w[0] < w[1]), "not sorted and unique: {text:?}");
    assert!(ports[0] >= 1);
    for item in text.split(',') {
        if let Ok(p) = item.trim().parse::<u16>() {
            assert!(list.contains(p), "{p} missing from {text:?}");
        }
    }
});
