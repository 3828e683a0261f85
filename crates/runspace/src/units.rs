//! Durations and sizes as people write them, parsed one way everywhere.
//!
//! Every command-line flag and every API field that takes a duration or a
//! size goes through these functions, so `--timeout 4e31`, `?timeout=4e31`
//! and `--retry-delay 18446744073709551616` all get the same clear error
//! instead of a panic deep inside `Duration::from_secs_f64`. Values are
//! capped at a sane maximum: a year for durations, a tebibyte for sizes.
//! Nothing here names a flag: callers add which option was wrong.

use std::fmt;
use std::time::Duration;

/// The longest duration anything accepts: 365 days.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The largest size anything accepts: 1 TiB.
pub const MAX_SIZE: u64 = 1 << 40;

/// Why a duration or size was refused; the message quotes the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitError(String);

impl fmt::Display for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UnitError {}

/// Parses `500ms`, `2s`, `1m30s`, `1h`, or a bare number of seconds
/// (`1.5`, `30`). Zero is accepted (callers that need a positive value say
/// so); negative, non-finite and over-a-year values are refused.
///
/// ```
/// use runspace::units::parse_duration;
/// use std::time::Duration;
/// assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
/// assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
/// assert!(parse_duration("4e31").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(UnitError("empty duration (expected e.g. 500ms, 2s, 1m30s or a number of seconds)".into()));
    }
    if t.starts_with(|c: char| c.is_ascii_digit() || c == '.' || c == '-' || c == '+')
        && t.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))
    {
        let secs: f64 = t.parse().map_err(|_| invalid_duration(text, "not a number"))?;
        return duration_from_secs(secs).map_err(|e| UnitError(format!("invalid duration '{text}': {e}")));
    }
    // humantime accepts "1 year" etc. and may overflow internally on huge
    // counts; it reports that as an error rather than panicking.
    let d = humantime::parse_duration(t).map_err(|e| invalid_duration(text, &e.to_string()))?;
    if d > MAX_DURATION {
        return Err(invalid_duration(text, "longer than the maximum of 365 days"));
    }
    Ok(d)
}

/// A duration given as a number of seconds (an API field, a script
/// argument), checked the same way as [`parse_duration`].
///
/// ```
/// use runspace::units::duration_from_secs;
/// assert!(duration_from_secs(0.25).is_ok());
/// assert!(duration_from_secs(f64::NAN).is_err());
/// assert!(duration_from_secs(-1.0).is_err());
/// assert!(duration_from_secs(1e40).is_err());
/// ```
pub fn duration_from_secs(secs: f64) -> Result<Duration, UnitError> {
    if !secs.is_finite() {
        return Err(UnitError(format!("{secs} seconds is not a finite number")));
    }
    if secs < 0.0 {
        return Err(UnitError(format!("{secs} seconds is negative")));
    }
    if secs > MAX_DURATION.as_secs_f64() {
        return Err(UnitError(format!("{secs} seconds is longer than the maximum of 365 days")));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn invalid_duration(text: &str, why: &str) -> UnitError {
    UnitError(format!("invalid duration '{text}': {why} (expected e.g. 500ms, 2s, 1m30s or a number of seconds)"))
}

/// Parses `64MB`, `512K`, `1GiB`, `1.5G` or a plain number of bytes. Units
/// are binary (1 KB = 1024 bytes), as for memory everywhere else. The size
/// must be at least one byte and at most [`MAX_SIZE`].
///
/// ```
/// use runspace::units::parse_size;
/// assert_eq!(parse_size("64MB").unwrap(), 64 << 20);
/// assert_eq!(parse_size("100").unwrap(), 100);
/// assert!(parse_size("0").is_err());
/// assert!(parse_size("1e300GB").is_err());
/// ```
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let t = text.trim();
    let bad = |why: &str| {
        UnitError(format!("invalid size '{text}': {why} (expected e.g. 64MB, 512KB, 1GB or a number of bytes)"))
    };
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.is_empty() {
        return Err(bad("no number"));
    }
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(bad(&format!("unknown unit '{other}'"))),
    };
    let bytes = if number.contains('.') {
        let n: f64 = number.parse().map_err(|_| bad("not a number"))?;
        let b = n * scale as f64;
        if !(b.is_finite() && b <= MAX_SIZE as f64) {
            return Err(bad("larger than the maximum of 1 TB"));
        }
        b as u64
    } else {
        let n: u64 = number.parse().map_err(|_| bad("larger than the maximum of 1 TB"))?;
        n.checked_mul(scale).filter(|b| *b <= MAX_SIZE).ok_or_else(|| bad("larger than the maximum of 1 TB"))?
    };
    if bytes == 0 {
        return Err(bad("must be at least 1 byte"));
    }
    Ok(bytes)
}

/// A size for people: `64 MB`, `1.5 GB`, `512 bytes` (binary units).
///
/// ```
/// assert_eq!(runspace::units::format_size(64 << 20), "64 MB");
/// ```
pub fn format_size(n: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size {
            return if n.is_multiple_of(size) {
                format!("{} {unit}", n / size)
            } else {
                format!("{:.1} {unit}", n as f64 / size as f64)
            };
        }
    }
    if n == 1 {
        "1 byte".to_string()
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration(" 2s ").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("1e2").unwrap(), Duration::from_secs(100));
        assert_eq!(parse_duration("365days").unwrap(), MAX_DURATION);
        for bad in
            ["", "soon", "-1", "4e31", "18446744073709551615s", "18446744073709551616", "inf", "NaN", "1e", "366d"]
        {
            let e = parse_duration(bad).unwrap_err().to_string();
            assert!(e.contains("duration") || e.contains("seconds"), "{bad}: {e}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MB").unwrap(), 64 << 20);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("1.5K").unwrap(), 1536);
        assert_eq!(parse_size("1TB").unwrap(), MAX_SIZE);
        for bad in ["", "0", "0.1", "12 parsecs", "MB", "2TB", "18446744073709551616", "1.2.3", "99999999999999999999G"]
        {
            assert!(parse_size(bad).unwrap_err().to_string().contains("invalid size"), "{bad}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(format_size(1), "1 byte");
        assert_eq!(format_size(1000), "1000 bytes");
        assert_eq!(format_size(1536), "1.5 KB");
        assert_eq!(format_size(16 << 20), "16 MB");
    }
}
