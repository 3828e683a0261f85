//! Numbers and durations for people: `1,234,567`, `2.50 s`, `12.3` items/s.

use std::time::Duration;

/// `512.0 ms`, `2.50 s`, `3m05s`.
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1.0 {
        format!("{:.1} ms", secs * 1e3)
    } else if secs < 120.0 {
        format!("{secs:.2} s")
    } else {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

/// A rate: whole and with separators from 100 up, one decimal below.
pub fn human_rate(rate: f64) -> String {
    if rate >= 100.0 {
        human_count(rate.round() as u64)
    } else {
        format!("{rate:.1}")
    }
}

/// Thousands separators for readability: 1,234,567.
pub fn human_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1 item`, `10,000 items`: a count with separators and the noun in the
/// number it needs.
pub fn count_of(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", human_count(n), if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_like_english() {
        assert_eq!(count_of(1, "item", "items"), "1 item");
        assert_eq!(count_of(0, "item", "items"), "0 items");
        assert_eq!(count_of(10_000, "item", "items"), "10,000 items");
        assert_eq!(human_count(1_234_567), "1,234,567");
        assert_eq!(human_count(999), "999");
        assert_eq!(human_rate(12.34), "12.3");
    }
}
