//! Port specifications: lists, ranges, "all ports", the top-ports tiers and
//! exclusions.
//!
//! Parsing is strict on purpose: a port scanner that silently drops a typo
//! (`8o`) or swaps a reversed range (`10-5`) reports "nothing open" for ports
//! it never tried. Every rejected spec says which part is wrong.

use std::fmt;

/// The default port list of the PowerShell original (`Invoke-ParallelNetworkScan`):
/// SSH, HTTP, MS-RPC, NetBIOS, HTTPS, SMB, RDP and WinRM.
pub const DEFAULT_PORTS: [u16; 9] = [22, 80, 135, 139, 443, 445, 3389, 5985, 5986];

/// The shipped top-ports tiers; see `data/top-ports.txt` for where they come from.
const TOP_PORTS_DATA: &str = include_str!("../data/top-ports.txt");

/// An ordered list of distinct TCP ports to probe.
///
/// The order is the probe order. Parsed lists are sorted ascending; the
/// top-ports list keeps its tier order, so the most common ports go first.
///
/// ```
/// use runspace_scan::PortList;
/// let ports = PortList::parse("22,80,8000-8002").unwrap();
/// assert_eq!(ports.as_slice(), &[22, 80, 8000, 8001, 8002]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortList {
    ports: Vec<u16>,
}

/// Why a port specification was rejected.
///
/// ```
/// use runspace_scan::PortList;
/// let err = PortList::parse("10-5").unwrap_err();
/// assert!(err.to_string().contains("10-5"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpecError {
    /// The offending part of the specification.
    pub part: String,
    /// What is wrong with it.
    pub problem: String,
}

impl fmt::Display for PortSpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.part.is_empty() {
            write!(f, "invalid port specification: {}", self.problem)
        } else {
            write!(f, "invalid port specification '{}': {}", self.part, self.problem)
        }
    }
}

impl std::error::Error for PortSpecError {}

fn spec_err(part: &str, problem: impl Into<String>) -> PortSpecError {
    PortSpecError { part: part.to_string(), problem: problem.into() }
}

/// Parses one port number, 1–65535, naming the problem otherwise.
fn parse_port(text: &str, part: &str) -> Result<u16, PortSpecError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(spec_err(part, "missing port number"));
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(spec_err(part, format!("'{text}' is not a port number")));
    }
    match text.parse::<u32>() {
        Ok(0) => Err(spec_err(part, "port 0 cannot be scanned (ports are 1-65535)")),
        Ok(n) if n <= 65535 => Ok(n as u16),
        _ => Err(spec_err(part, format!("port {text} is out of range (ports are 1-65535)"))),
    }
}

impl PortList {
    /// Parses an nmap-style port specification.
    ///
    /// Accepted: single ports (`22`), ranges (`8000-8100`), open ranges
    /// (`-1024` from 1, `60000-` to 65535), `-` for all 65535 ports, and
    /// comma-separated combinations of these. Duplicates are removed and the
    /// result is sorted. Port 0, ports above 65535, reversed ranges and
    /// anything that is not a number are errors.
    ///
    /// ```
    /// use runspace_scan::PortList;
    /// assert_eq!(PortList::parse("-").unwrap().len(), 65535);
    /// assert_eq!(PortList::parse("65530-").unwrap().len(), 6);
    /// assert!(PortList::parse("0").is_err());
    /// assert!(PortList::parse("70000").is_err());
    /// assert!(PortList::parse("abc").is_err());
    /// ```
    pub fn parse(spec: &str) -> Result<PortList, PortSpecError> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(spec_err("", "empty port list"));
        }
        let mut seen = vec![false; 65536];
        for part in spec.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(spec_err(spec, "empty item between commas"));
            }
            let (lo, hi) = match part.split_once('-') {
                None => {
                    let p = parse_port(part, part)?;
                    (p, p)
                }
                Some((a, b)) => {
                    let lo = if a.trim().is_empty() { 1 } else { parse_port(a, part)? };
                    let hi = if b.trim().is_empty() { 65535 } else { parse_port(b, part)? };
                    if lo > hi {
                        return Err(spec_err(part, format!("range is reversed ({lo} is greater than {hi})")));
                    }
                    (lo, hi)
                }
            };
            for p in lo..=hi {
                seen[p as usize] = true;
            }
        }
        Ok(PortList { ports: (1..=65535u16).filter(|&p| seen[p as usize]).collect() })
    }

    /// All ports, 1–65535 (nmap's `-p-`).
    ///
    /// ```
    /// assert_eq!(runspace_scan::PortList::all().len(), 65535);
    /// ```
    pub fn all() -> PortList {
        PortList { ports: (1..=65535).collect() }
    }

    /// The PowerShell original's default list, [`DEFAULT_PORTS`].
    ///
    /// ```
    /// assert_eq!(runspace_scan::PortList::default_ports().as_slice()[0], 22);
    /// ```
    pub fn default_ports() -> PortList {
        PortList { ports: DEFAULT_PORTS.to_vec() }
    }

    /// The `n` most common ports: the shipped top-100 tier first, then the
    /// rest of the top-1000 tier, then the remaining ports in numeric order.
    ///
    /// Within a tier the order is numeric (the shipped data has tiers, not a
    /// per-port frequency), so `top(100)` and `top(1000)` are the exact sets
    /// and other values of `n` cut a tier in numeric order. `n` is clamped to
    /// 1..=65535; `top(0)` is an error.
    ///
    /// ```
    /// use runspace_scan::PortList;
    /// let top = PortList::top(100).unwrap();
    /// assert_eq!(top.len(), 100);
    /// assert!(top.contains(80) && top.contains(443));
    /// assert_eq!(PortList::top(1000).unwrap().len(), 1000);
    /// ```
    pub fn top(n: usize) -> Result<PortList, PortSpecError> {
        if n == 0 {
            return Err(spec_err("0", "--top-ports needs a count of at least 1"));
        }
        let mut seen = vec![false; 65536];
        let mut ports = Vec::with_capacity(n.min(65535));
        let tiers = TOP_PORTS_DATA
            .lines()
            .filter_map(|l| l.strip_prefix("tier "))
            .filter_map(|l| l.split_once(':').map(|(_, list)| list.trim()));
        for tier in tiers {
            let list = PortList::parse(tier).expect("shipped top-ports data parses");
            for p in list.ports {
                if !seen[p as usize] {
                    seen[p as usize] = true;
                    ports.push(p);
                }
            }
        }
        for p in 1..=65535u16 {
            if !seen[p as usize] {
                ports.push(p);
            }
        }
        ports.truncate(n.min(65535));
        Ok(PortList { ports })
    }

    /// Removes every port of `other` from this list, keeping the order.
    ///
    /// ```
    /// use runspace_scan::PortList;
    /// let mut ports = PortList::parse("20-25").unwrap();
    /// ports.exclude(&PortList::parse("22,23").unwrap());
    /// assert_eq!(ports.as_slice(), &[20, 21, 24, 25]);
    /// ```
    pub fn exclude(&mut self, other: &PortList) {
        let mut drop = vec![false; 65536];
        for &p in &other.ports {
            drop[p as usize] = true;
        }
        self.ports.retain(|&p| !drop[p as usize]);
    }

    /// Builds a list from explicit ports (duplicates and port 0 removed,
    /// order kept).
    ///
    /// ```
    /// use runspace_scan::PortList;
    /// assert_eq!(PortList::from_ports([443, 80, 443, 0]).as_slice(), &[443, 80]);
    /// ```
    pub fn from_ports(ports: impl IntoIterator<Item = u16>) -> PortList {
        let mut seen = vec![false; 65536];
        seen[0] = true;
        let ports = ports.into_iter().filter(|&p| !std::mem::replace(&mut seen[p as usize], true)).collect();
        PortList { ports }
    }

    /// The ports, in probe order.
    ///
    /// ```
    /// assert_eq!(runspace_scan::PortList::parse("80").unwrap().as_slice(), &[80]);
    /// ```
    pub fn as_slice(&self) -> &[u16] {
        &self.ports
    }

    /// Number of ports.
    ///
    /// ```
    /// assert_eq!(runspace_scan::PortList::parse("1-10").unwrap().len(), 10);
    /// ```
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    /// True when no port is left (for example after exclusions).
    ///
    /// ```
    /// use runspace_scan::PortList;
    /// let mut p = PortList::parse("80").unwrap();
    /// p.exclude(&PortList::parse("80").unwrap());
    /// assert!(p.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// True when `port` is in the list.
    ///
    /// ```
    /// assert!(runspace_scan::PortList::parse("1-100").unwrap().contains(42));
    /// ```
    pub fn contains(&self, port: u16) -> bool {
        self.ports.contains(&port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_ranges() {
        let p = PortList::parse(" 80, 22 ,8000-8002,22").unwrap();
        assert_eq!(p.as_slice(), &[22, 80, 8000, 8001, 8002]);
        assert_eq!(PortList::parse("-3").unwrap().as_slice(), &[1, 2, 3]);
        assert_eq!(PortList::parse("65535").unwrap().as_slice(), &[65535]);
        assert_eq!(PortList::parse("1-65535").unwrap(), PortList::all());
    }

    #[test]
    fn rejects_bad_specs_with_a_reason() {
        for (spec, needle) in [
            ("0", "port 0"),
            ("70000", "out of range"),
            ("65536", "out of range"),
            ("10-5", "reversed"),
            ("abc", "not a port number"),
            ("22,,80", "empty item"),
            ("", "empty port list"),
            ("1-2-3", "not a port number"),
            ("-0", "port 0"),
            ("99999999999999999999", "out of range"),
            ("8o", "not a port number"),
        ] {
            let err = PortList::parse(spec).unwrap_err().to_string();
            assert!(err.contains(needle), "{spec:?}: {err}");
        }
    }

    #[test]
    fn top_ports_tiers() {
        let t100 = PortList::top(100).unwrap();
        let t1000 = PortList::top(1000).unwrap();
        assert_eq!(&t1000.as_slice()[..100], t100.as_slice());
        for p in DEFAULT_PORTS.iter().filter(|&&p| p < 5985) {
            assert!(t100.contains(*p), "{p}");
        }
        assert_eq!(PortList::top(70000).unwrap().len(), 65535);
        assert!(PortList::top(0).is_err());
        let mut all = PortList::top(65535).unwrap().as_slice().to_vec();
        all.sort_unstable();
        assert_eq!(all, PortList::all().as_slice());
    }
}
