//! Target specifications: addresses, CIDR blocks, nmap-style ranges and host
//! names, their lazy expansion, exclusions and name resolution.
//!
//! Expansion is lazy because a `/8` is 16 million hosts: the scanner pulls
//! addresses only when a host slot frees up, so memory is bounded by the
//! throttle, never by the size of the target list.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};

/// The largest IPv6 block accepted (a /96: 2^32 addresses). Bigger blocks
/// cannot be scanned exhaustively in any useful time.
const MIN_V6_PREFIX: u8 = 96;

/// One parsed target specification, as given on the command line or in a
/// targets file.
///
/// ```
/// use runspace_scan::TargetSpec;
/// let spec: TargetSpec = "127.0.0.1-3".parse().unwrap();
/// assert_eq!(spec.address_count(), Some(3));
/// assert_eq!(spec.addresses().count(), 3);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetSpec {
    text: String,
    kind: Kind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    /// An inclusive range of IPv4 addresses (single address, CIDR, a-b).
    V4Span(u32, u32),
    /// Per-octet inclusive ranges, nmap's `10.0.0-3.1-20`.
    V4Octets([(u8, u8); 4]),
    /// An inclusive range of IPv6 addresses (single address or CIDR).
    V6Span(u128, u128),
    /// A host name, resolved when the scan reaches it.
    Name(String),
}

/// A target that could not be parsed or resolved. The message names the
/// target; the other targets are still scanned.
///
/// ```
/// use runspace_scan::TargetSpec;
/// let err = "127.0.0.300".parse::<TargetSpec>().unwrap_err();
/// assert_eq!(err.target, "127.0.0.300");
/// assert!(err.to_string().contains("127.0.0.300"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetError {
    /// The target as it was written.
    pub target: String,
    /// What is wrong with it.
    pub problem: String,
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "target '{}': {}", self.target, self.problem)
    }
}

impl std::error::Error for TargetError {}

fn terr(target: &str, problem: impl Into<String>) -> TargetError {
    TargetError { target: target.to_string(), problem: problem.into() }
}

/// A resolved address to scan, with the name the user gave for it.
///
/// ```
/// use runspace_scan::Target;
/// let t = Target::new("127.0.0.1".parse().unwrap());
/// assert_eq!(t.host, "127.0.0.1");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// The name as given (a host name), or the address in text form.
    pub host: String,
    /// The address that is actually scanned.
    pub address: IpAddr,
}

impl Target {
    /// A target named after its own address.
    ///
    /// ```
    /// let t = runspace_scan::Target::new("::1".parse().unwrap());
    /// assert_eq!(t.host, "::1");
    /// ```
    pub fn new(address: IpAddr) -> Target {
        Target { host: address.to_string(), address }
    }
}

fn parse_octet(text: &str, whole: &str) -> Result<u8, TargetError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(terr(whole, format!("'{text}' is not an address octet")));
    }
    text.parse::<u8>().map_err(|_| terr(whole, format!("octet {text} is out of range (0-255)")))
}

fn looks_numeric(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'*')
}

fn valid_hostname(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').enumerate().all(|(i, label)| {
            // A trailing dot (fully qualified name) leaves one empty label.
            (!label.is_empty() || i > 0 && s.ends_with('.'))
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
        })
}

impl std::str::FromStr for TargetSpec {
    type Err = TargetError;

    /// Parses `ADDRESS`, `[IPv6]`, `ADDRESS/PREFIX`, `A.B.C.D-E` (last
    /// octet range), per-octet ranges (`10.0.0-3.1-20`, `*` for 0-255),
    /// `ADDRESS-ADDRESS`, or a host name.
    fn from_str(text: &str) -> Result<TargetSpec, TargetError> {
        let t = text.trim();
        let kind = parse_kind(t)?;
        Ok(TargetSpec { text: t.to_string(), kind })
    }
}

fn parse_addr(s: &str) -> Option<IpAddr> {
    let s = s.strip_prefix('[').and_then(|x| x.strip_suffix(']')).unwrap_or(s);
    s.parse().ok()
}

fn parse_kind(t: &str) -> Result<Kind, TargetError> {
    if t.is_empty() {
        return Err(terr(t, "empty target"));
    }
    if let Some(addr) = parse_addr(t) {
        return Ok(match addr {
            IpAddr::V4(a) => Kind::V4Span(a.into(), a.into()),
            IpAddr::V6(a) => Kind::V6Span(a.into(), a.into()),
        });
    }
    if let Some((addr, prefix)) = t.split_once('/') {
        let Some(addr) = parse_addr(addr) else {
            return Err(terr(t, format!("'{addr}' is not an IP address (CIDR blocks need one)")));
        };
        let prefix: u8 = prefix.parse().map_err(|_| terr(t, format!("'{prefix}' is not a prefix length")))?;
        return match addr {
            IpAddr::V4(a) => {
                if prefix > 32 {
                    return Err(terr(t, format!("prefix /{prefix} is longer than 32")));
                }
                let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
                let base = u32::from(a) & mask;
                Ok(Kind::V4Span(base, base | !mask))
            }
            IpAddr::V6(a) => {
                if prefix > 128 {
                    return Err(terr(t, format!("prefix /{prefix} is longer than 128")));
                }
                if prefix < MIN_V6_PREFIX {
                    return Err(terr(t, format!("IPv6 blocks larger than /{MIN_V6_PREFIX} are too big to scan")));
                }
                let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix) };
                let base = u128::from(a) & mask;
                Ok(Kind::V6Span(base, base | !mask))
            }
        };
    }
    // ADDRESS-ADDRESS (either family).
    if let Some((a, b)) = t.split_once('-') {
        if let (Some(a), Some(b)) = (parse_addr(a), parse_addr(b)) {
            return match (a, b) {
                (IpAddr::V4(a), IpAddr::V4(b)) if a <= b => Ok(Kind::V4Span(a.into(), b.into())),
                (IpAddr::V6(a), IpAddr::V6(b)) if a <= b => {
                    let (a, b) = (u128::from(a), u128::from(b));
                    if b - a >= 1 << 32 {
                        return Err(terr(t, "IPv6 range is too big to scan"));
                    }
                    Ok(Kind::V6Span(a, b))
                }
                (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                    Err(terr(t, "range is reversed (first address is after the last)"))
                }
                _ => Err(terr(t, "range mixes IPv4 and IPv6")),
            };
        }
    }
    if looks_numeric(t) {
        return parse_octets(t);
    }
    if t.contains(':') {
        return Err(terr(t, "not a valid IPv6 address"));
    }
    if valid_hostname(t) {
        return Ok(Kind::Name(t.trim_end_matches('.').to_string()));
    }
    Err(terr(t, "not an IP address, range, CIDR block or host name"))
}

fn parse_octets(t: &str) -> Result<Kind, TargetError> {
    let parts: Vec<&str> = t.split('.').collect();
    if parts.len() != 4 {
        return Err(terr(t, "an IPv4 address or range needs four octets"));
    }
    let mut oct = [(0u8, 0u8); 4];
    for (i, part) in parts.iter().enumerate() {
        oct[i] = if *part == "*" {
            (0, 255)
        } else if let Some((a, b)) = part.split_once('-') {
            let lo = if a.is_empty() { 0 } else { parse_octet(a, t)? };
            let hi = if b.is_empty() { 255 } else { parse_octet(b, t)? };
            if lo > hi {
                return Err(terr(t, format!("octet range {part} is reversed")));
            }
            (lo, hi)
        } else {
            let v = parse_octet(part, t)?;
            (v, v)
        };
    }
    Ok(Kind::V4Octets(oct))
}

impl fmt::Display for TargetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl TargetSpec {
    /// Parses one target; same as `text.parse()`.
    ///
    /// ```
    /// use runspace_scan::TargetSpec;
    /// assert!(TargetSpec::parse("10.0.0.0/30").is_ok());
    /// assert!(TargetSpec::parse("127.0.0.20-1").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<TargetSpec, TargetError> {
        text.parse()
    }

    /// The specification as written.
    ///
    /// ```
    /// assert_eq!(runspace_scan::TargetSpec::parse("::1").unwrap().as_str(), "::1");
    /// ```
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Number of addresses, or `None` for a host name (resolved later).
    ///
    /// ```
    /// use runspace_scan::TargetSpec;
    /// assert_eq!(TargetSpec::parse("127.0.0.0/24").unwrap().address_count(), Some(256));
    /// assert_eq!(TargetSpec::parse("localhost").unwrap().address_count(), None);
    /// ```
    pub fn address_count(&self) -> Option<u64> {
        match &self.kind {
            Kind::V4Span(a, b) => Some(u64::from(b - a) + 1),
            Kind::V4Octets(o) => Some(o.iter().map(|(a, b)| u64::from(b - a) + 1).product()),
            Kind::V6Span(a, b) => Some((b - a) as u64 + 1),
            Kind::Name(_) => None,
        }
    }

    /// True for host names, which need resolving.
    ///
    /// ```
    /// assert!(runspace_scan::TargetSpec::parse("localhost").unwrap().is_name());
    /// ```
    pub fn is_name(&self) -> bool {
        matches!(self.kind, Kind::Name(_))
    }

    /// The literal addresses of this spec, lazily (empty for a host name).
    ///
    /// ```
    /// use runspace_scan::TargetSpec;
    /// let v: Vec<String> = TargetSpec::parse("127.0.0-2.1").unwrap()
    ///     .addresses().map(|a| a.to_string()).collect();
    /// assert_eq!(v, ["127.0.0.1", "127.0.1.1", "127.0.2.1"]);
    /// ```
    pub fn addresses(&self) -> Box<dyn Iterator<Item = IpAddr> + Send + '_> {
        match &self.kind {
            Kind::V4Span(a, b) => Box::new((*a..=*b).map(|x| IpAddr::V4(Ipv4Addr::from(x)))),
            Kind::V6Span(a, b) => Box::new((*a..=*b).map(|x| IpAddr::V6(Ipv6Addr::from(x)))),
            Kind::V4Octets(o) => Box::new((o[0].0..=o[0].1).flat_map(move |a| {
                (o[1].0..=o[1].1).flat_map(move |b| {
                    (o[2].0..=o[2].1)
                        .flat_map(move |c| (o[3].0..=o[3].1).map(move |d| IpAddr::V4(Ipv4Addr::new(a, b, c, d))))
                })
            })),
            Kind::Name(_) => Box::new(std::iter::empty()),
        }
    }

    /// True when `addr` is one of this spec's literal addresses (host names
    /// never match; resolve them with [`TargetSpec::resolve`] first).
    ///
    /// ```
    /// use runspace_scan::TargetSpec;
    /// let spec = TargetSpec::parse("127.0.0.0/8").unwrap();
    /// assert!(spec.contains("127.1.2.3".parse().unwrap()));
    /// assert!(!spec.contains("::1".parse().unwrap()));
    /// ```
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (&self.kind, addr) {
            (Kind::V4Span(a, b), IpAddr::V4(x)) => (*a..=*b).contains(&u32::from(x)),
            (Kind::V6Span(a, b), IpAddr::V6(x)) => (*a..=*b).contains(&u128::from(x)),
            (Kind::V4Octets(o), IpAddr::V4(x)) => x.octets().iter().zip(o).all(|(v, (lo, hi))| (*lo..=*hi).contains(v)),
            _ => false,
        }
    }

    /// Resolves this spec to the targets to scan. A host name resolves to
    /// one address (IPv4 preferred, as nmap does), reported with the name.
    ///
    /// ```
    /// use runspace_scan::TargetSpec;
    /// let t = TargetSpec::parse("127.0.0.1").unwrap().resolve().unwrap();
    /// assert_eq!(t.len(), 1);
    /// ```
    pub fn resolve(&self) -> Result<Vec<Target>, TargetError> {
        match &self.kind {
            Kind::Name(name) => Ok(vec![Target { host: name.clone(), address: resolve_name(name)? }]),
            _ => Ok(self.addresses().map(Target::new).collect()),
        }
    }
}

/// Resolves a host name with the system resolver, preferring IPv4.
///
/// ```
/// let addr = runspace_scan::target::resolve_name("localhost").unwrap();
/// assert!(addr.is_loopback());
/// ```
pub fn resolve_name(name: &str) -> Result<IpAddr, TargetError> {
    let addrs: Vec<IpAddr> = (name, 0)
        .to_socket_addrs()
        .map_err(|e| terr(name, format!("cannot resolve host name: {e}")))?
        .map(|sa| sa.ip())
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| terr(name, "host name has no addresses"))
}

/// A set of excluded addresses (`--exclude`), with host names resolved once.
///
/// ```
/// use runspace_scan::{Exclusions, TargetSpec};
/// let (ex, errors) = Exclusions::new(&[TargetSpec::parse("127.0.0.2").unwrap()]);
/// assert!(errors.is_empty());
/// assert!(ex.contains("127.0.0.2".parse().unwrap()));
/// ```
#[derive(Clone, Debug, Default)]
pub struct Exclusions {
    specs: Vec<TargetSpec>,
    addrs: Vec<IpAddr>,
}

impl Exclusions {
    /// Builds the set; names that cannot be resolved are returned as errors.
    ///
    /// ```
    /// let (ex, _) = runspace_scan::Exclusions::new(&[]);
    /// assert!(!ex.contains("127.0.0.1".parse().unwrap()));
    /// ```
    pub fn new(specs: &[TargetSpec]) -> (Exclusions, Vec<TargetError>) {
        let mut ex = Exclusions::default();
        let mut errors = Vec::new();
        for spec in specs {
            match &spec.kind {
                Kind::Name(name) => match (name.as_str(), 0).to_socket_addrs() {
                    Ok(it) => ex.addrs.extend(it.map(|sa| sa.ip())),
                    Err(e) => errors.push(terr(name, format!("cannot resolve host name: {e}"))),
                },
                _ => ex.specs.push(spec.clone()),
            }
        }
        (ex, errors)
    }

    /// True when `addr` is excluded.
    ///
    /// ```
    /// let (ex, _) = runspace_scan::Exclusions::new(&["127.0.0.0/30".parse().unwrap()]);
    /// assert!(ex.contains("127.0.0.3".parse().unwrap()));
    /// ```
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.addrs.contains(&addr) || self.specs.iter().any(|s| s.contains(addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(s: &str) -> Vec<String> {
        TargetSpec::parse(s).unwrap().addresses().map(|a| a.to_string()).collect()
    }

    #[test]
    fn parses_forms() {
        assert_eq!(addrs("127.0.0.1"), ["127.0.0.1"]);
        assert_eq!(addrs("[::1]"), ["::1"]);
        assert_eq!(addrs("127.0.0.1-3"), ["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
        assert_eq!(addrs("127.0.0.1/31"), ["127.0.0.0", "127.0.0.1"]);
        assert_eq!(addrs("127.0.0.254-127.0.1.0"), ["127.0.0.254", "127.0.0.255", "127.0.1.0"]);
        assert_eq!(addrs("::1/127"), ["::", "::1"]);
        assert_eq!(addrs("127.0.0.*").len(), 256);
        assert_eq!(TargetSpec::parse("0.0.0.0/0").unwrap().address_count(), Some(1 << 32));
        assert!(TargetSpec::parse("localhost").unwrap().is_name());
        assert!(TargetSpec::parse("example.com.").unwrap().is_name());
    }

    #[test]
    fn rejects_malformed_with_reason() {
        for (t, needle) in [
            ("127.0.0.300", "out of range"),
            ("127.0.0.20-1", "reversed"),
            ("127.0.0.1/33", "longer than 32"),
            ("127.0.0.1/x", "prefix length"),
            ("::1/64", "too big"),
            ("127.0.0", "four octets"),
            ("host name", "not an IP address"),
            ("", "empty"),
            ("::1::2", "IPv6"),
            ("127.0.0.2-127.0.0.1", "reversed"),
            ("127.0.0.1-::1", "mixes"),
            ("-bad.example", "not an IP address"),
            ("name/24", "not an IP address"),
        ] {
            let e = TargetSpec::parse(t).unwrap_err();
            assert!(e.to_string().contains(needle), "{t:?}: {e}");
            assert_eq!(e.target, t);
        }
    }

    #[test]
    fn contains_and_exclusions() {
        let spec = TargetSpec::parse("127.0.0-1.5-6").unwrap();
        assert!(spec.contains("127.0.1.6".parse().unwrap()));
        assert!(!spec.contains("127.0.2.6".parse().unwrap()));
        let (ex, err) = Exclusions::new(&[spec, TargetSpec::parse("localhost").unwrap()]);
        assert!(err.is_empty());
        assert!(ex.contains("127.0.0.1".parse().unwrap()));
        assert!(ex.contains("127.0.0.5".parse().unwrap()));
    }

    #[test]
    fn resolves_localhost_preferring_ipv4() {
        let t = TargetSpec::parse("localhost").unwrap().resolve().unwrap();
        assert_eq!(t[0].host, "localhost");
        assert_eq!(t[0].address, IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
}
