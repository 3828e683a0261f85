//! What a script may reach beyond pure computation.
//!
//! Runspaces are sandboxed: nothing outside the VM is reachable unless the
//! session grants it. Each capability gates one family of host functions.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::remedy::{Remedies, Remedy};

/// One family of host functions a session can grant.
///
/// ```
/// use runspace::Capability;
/// assert_eq!("fs-write".parse::<Capability>().unwrap(), Capability::FsWrite);
/// assert_eq!(Capability::Net.to_string(), "net");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    /// Read files and list directories.
    Fs,
    /// Create, write and remove files.
    FsWrite,
    /// List processes.
    Proc,
    /// TCP probes and name resolution.
    Net,
    /// HTTP requests.
    Http,
    /// Run external programs.
    Exec,
    /// Read environment variables.
    Env,
}

impl Capability {
    /// Every capability, in a stable order.
    pub const ALL: [Capability; 7] = [
        Capability::Fs,
        Capability::FsWrite,
        Capability::Proc,
        Capability::Net,
        Capability::Http,
        Capability::Exec,
        Capability::Env,
    ];

    /// The name used on the command line (`fs`, `fs-write`, …).
    pub fn name(self) -> &'static str {
        match self {
            Capability::Fs => "fs",
            Capability::FsWrite => "fs-write",
            Capability::Proc => "proc",
            Capability::Net => "net",
            Capability::Http => "http",
            Capability::Exec => "exec",
            Capability::Env => "env",
        }
    }

    /// Whether the grant can be limited to paths (`fs:/var/log`).
    pub fn takes_paths(self) -> bool {
        matches!(self, Capability::Fs | Capability::FsWrite)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Capability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Capability::ALL.into_iter().find(|c| c.name() == s).ok_or_else(|| {
            let names: Vec<_> = Capability::ALL.iter().map(|c| c.name()).collect();
            format!("unknown capability '{s}' (expected one of: {})", names.join(", "))
        })
    }
}

/// The capabilities a session grants, with optional path limits for the
/// file-system ones.
///
/// ```
/// use runspace::{Capability, Grants};
/// let mut g = Grants::default();
/// g.grant_spec("fs:/var/log").unwrap();
/// g.grant_spec("net").unwrap();
/// assert!(g.allows(Capability::Net));
/// assert!(!g.allows(Capability::Exec));
/// assert_eq!(g.roots(Capability::Fs), Some(&[std::path::PathBuf::from("/var/log")][..]));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Granted capability → the roots it is limited to (empty: anywhere).
    granted: BTreeMap<Capability, Vec<PathBuf>>,
}

impl Grants {
    /// Grants `capability` everywhere.
    pub fn grant(&mut self, capability: Capability) {
        self.granted.entry(capability).or_default().clear();
    }

    /// Grants `capability`, limited to `root` and what lies under it. Several
    /// roots may be granted; an unrestricted grant stays unrestricted.
    pub fn grant_path(&mut self, capability: Capability, root: impl Into<PathBuf>) {
        match self.granted.get_mut(&capability) {
            Some(roots) if roots.is_empty() => {}
            Some(roots) => roots.push(root.into()),
            None => {
                self.granted.insert(capability, vec![root.into()]);
            }
        }
    }

    /// Parses and grants a command-line spec: `net`, `fs`, `fs:/var/log`, or a
    /// comma-separated list of them.
    pub fn grant_spec(&mut self, spec: &str) -> Result<(), String> {
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once(':') {
                Some((name, path)) => {
                    let cap: Capability = name.parse()?;
                    if !cap.takes_paths() {
                        return Err(format!("capability '{name}' cannot be limited to a path"));
                    }
                    if path.is_empty() {
                        return Err(format!("empty path in '{part}'"));
                    }
                    self.grant_path(cap, path);
                }
                None => self.grant(part.parse()?),
            }
        }
        Ok(())
    }

    /// Whether `capability` is granted at all.
    pub fn allows(&self, capability: Capability) -> bool {
        self.granted.contains_key(&capability)
    }

    /// The roots a granted capability is limited to (empty: anywhere), or
    /// `None` when it is not granted.
    pub fn roots(&self, capability: Capability) -> Option<&[PathBuf]> {
        self.granted.get(&capability).map(Vec::as_slice)
    }

    /// The same grants with relative roots joined onto `base`, so that
    /// `fs:.` means `base` rather than the process's working directory.
    pub fn relative_to(&self, base: &std::path::Path) -> Grants {
        let mut granted = self.granted.clone();
        for root in granted.values_mut().flatten().filter(|r| r.is_relative()) {
            *root = base.join(&*root);
        }
        Grants { granted }
    }

    /// The granted capabilities.
    pub fn iter(&self) -> impl Iterator<Item = Capability> + '_ {
        self.granted.keys().copied()
    }

    /// Fails, when `capability` is not granted, with a message naming it
    /// and what `remedies` says to do.
    pub(crate) fn require(&self, capability: Capability, what: &str, remedies: &Remedies) -> Result<(), String> {
        if self.allows(capability) {
            Ok(())
        } else {
            Err(format!(
                "{what} needs the '{capability}' capability, which this session does not grant ({})",
                remedies.word(Remedy::Grant(capability))
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_reject_nonsense() {
        let mut g = Grants::default();
        g.grant_spec("fs:/a, fs:/b,proc").unwrap();
        assert_eq!(g.roots(Capability::Fs).unwrap().len(), 2);
        assert!(g.allows(Capability::Proc));
        assert!(g.grant_spec("bogus").unwrap_err().contains("unknown capability 'bogus'"));
        assert!(g.grant_spec("net:/x").unwrap_err().contains("cannot be limited"));
        g.grant(Capability::Fs);
        assert_eq!(g.roots(Capability::Fs).unwrap().len(), 0, "unrestricted wins");
        g.grant_path(Capability::Fs, "/c");
        assert_eq!(g.roots(Capability::Fs).unwrap().len(), 0);
    }

    #[test]
    fn require_names_the_capability_and_the_front_ends_remedy() {
        let g = Grants::default();
        let err = g.require(Capability::Exec, "exec()", &Remedies::default()).unwrap_err();
        assert!(err.contains("'exec' capability") && err.contains("SessionState::allow(Capability::Exec)"), "{err}");
        assert!(!err.contains("--allow"), "the library names no CLI flag: {err}");
        let cli = Remedies::new(|r| format!("{r:?} wanted"));
        let err = g.require(Capability::Exec, "exec()", &cli).unwrap_err();
        assert!(err.ends_with("(Grant(Exec) wanted)"), "{err}");
    }
}
