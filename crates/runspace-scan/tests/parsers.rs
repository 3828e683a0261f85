//! Property tests for the scanner's parsers: port lists and target specs
//! never panic, hold what they name and count what they hold. Case counts
//! are bounded so the normal suite stays fast.

use proptest::prelude::*;
use runspace_scan::{PortList, TargetSpec};

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn port_lists_hold_what_they_name(ports in prop::collection::vec(1..=65535u16, 1..6), noise in "\\PC{0,10}") {
        let text = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
        let list = PortList::parse(&text).unwrap();
        prop_assert!(list.as_slice().windows(2).all(|w| w[0] < w[1]));
        for p in ports {
            prop_assert!(list.contains(p));
        }
        let _ = PortList::parse(&noise);
    }

    #[test]
    fn target_specs_count_what_they_hold(text in "[0-9]{1,3}(\\.[0-9]{1,3}(-[0-9]{1,3})?){3}(/[0-9]{1,2})?|[0-9a-f:]{2,12}(/[0-9]{1,3})?|\\PC{0,12}") {
        if let Ok(spec) = TargetSpec::parse(&text) {
            if let Some(count) = spec.address_count() {
                prop_assert!(count >= 1, "{} counts {}", text, count);
                let first: Vec<_> = spec.addresses().take(8).collect();
                prop_assert_eq!(first.len() as u64, count.min(8));
            }
        }
    }
}

#[test]
fn ipv6_spans_stay_countable() {
    // address_count is a u64: an IPv6 span must never hold more than that,
    // or the count would wrap (and slip past any address limit).
    assert!(TargetSpec::parse("::/0").unwrap_err().to_string().contains("too big"));
    assert_eq!(TargetSpec::parse("::/96").unwrap().address_count(), Some(1 << 32));
    assert!(TargetSpec::parse("::-::1:0:0").unwrap_err().to_string().contains("too big"));
}
