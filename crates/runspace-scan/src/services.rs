//! TCP service names from the system's services database (`/etc/services`).

use std::collections::HashMap;
use std::path::Path;

/// A port → service-name table for TCP.
///
/// ```
/// use runspace_scan::Services;
/// let s = Services::parse("ssh 22/tcp\nhttp 80/tcp www # web\ndomain 53/udp\n");
/// assert_eq!(s.get(22), Some("ssh"));
/// assert_eq!(s.get(53), None);
/// ```
#[derive(Clone, Debug, Default)]
pub struct Services {
    names: HashMap<u16, String>,
}

impl Services {
    /// Loads `/etc/services`; empty when the file is missing or unreadable.
    ///
    /// ```
    /// let s = runspace_scan::Services::system();
    /// let _maybe_ssh = s.get(22);
    /// ```
    pub fn system() -> Services {
        Services::load(Path::new("/etc/services")).unwrap_or_default()
    }

    /// Loads a services file in the `/etc/services` format.
    ///
    /// ```
    /// assert!(runspace_scan::Services::load("/nonexistent".as_ref()).is_err());
    /// ```
    pub fn load(path: &Path) -> std::io::Result<Services> {
        Ok(Services::parse(&std::fs::read_to_string(path)?))
    }

    /// Parses the `name port/proto [aliases] [# comment]` format; the first
    /// name listed for a TCP port wins.
    ///
    /// ```
    /// let s = runspace_scan::Services::parse("# c\nftp 21/tcp\nfsp 21/udp\n");
    /// assert_eq!(s.get(21), Some("ftp"));
    /// ```
    pub fn parse(text: &str) -> Services {
        let mut names = HashMap::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut fields = line.split_whitespace();
            let (Some(name), Some(port_proto)) = (fields.next(), fields.next()) else {
                continue;
            };
            let Some((port, proto)) = port_proto.split_once('/') else {
                continue;
            };
            if proto != "tcp" {
                continue;
            }
            if let Ok(port) = port.parse::<u16>() {
                names.entry(port).or_insert_with(|| name.to_string());
            }
        }
        Services { names }
    }

    /// The service name of a TCP port, if the database has one.
    ///
    /// ```
    /// assert_eq!(runspace_scan::Services::default().get(22), None);
    /// ```
    pub fn get(&self, port: u16) -> Option<&str> {
        self.names.get(&port).map(String::as_str)
    }
}
