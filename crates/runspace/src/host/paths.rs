//! Where a file-system call may go: resolving a script's path the way the
//! kernel will (`..` and symbolic links included), then checking it against
//! the roots the session granted.
//!
//! Checking the text of a path is not enough: `/grant/../etc/passwd` and
//! `/grant/link-to-etc/passwd` both start with `/grant`. So the path is
//! resolved first: the longest part of it that exists is canonicalized (the
//! kernel resolves every `..` and symbolic link in it), and the part that
//! does not exist yet (a file about to be written) is appended as plain
//! names. The resolved path must lie under a canonicalized root.
//!
//! The check names the root and explains a refusal; the operation itself
//! then starts again from that root and cannot leave it (see
//! [`super::beneath`]), so a symbolic link swapped in after the check
//! cannot send it elsewhere.

use std::io;
use std::path::{Component, Path, PathBuf};

use super::beneath::Checked;
use crate::capability::{Capability, Grants};
use crate::remedy::{Remedies, Remedy};

/// Whether the last component of a path is followed when it is a symbolic link.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Last {
    /// Follow it: the operation acts on what the link points to.
    Follow,
    /// Keep it: the operation acts on the link itself (removing it).
    Keep,
}

/// Resolves `path` (relative to the working directory) the way the kernel
/// will, and checks it against the roots granted for `capability`.
/// Returns the resolved path with the root it lies under, or a message
/// explaining the refusal.
pub(crate) fn check(
    grants: &Grants,
    remedies: &Remedies,
    capability: Capability,
    what: &str,
    path: &str,
    last: Last,
) -> Result<Checked, String> {
    if path.is_empty() {
        return Err(format!("{what}: empty path"));
    }
    let resolved = resolve(Path::new(path), last).map_err(|e| format!("{what}: {path}: {e}"))?;
    let Some(roots) = grants.roots(capability) else {
        // Callers check the grant first; be safe anyway.
        return Err(format!("{what}: the '{capability}' capability is not granted"));
    };
    if roots.is_empty() {
        return Ok(Checked { path: resolved, root: None });
    }
    if let Some(root) = roots.iter().map(|r| canonical_root(r)).find(|root| resolved.starts_with(root)) {
        return Ok(Checked { path: resolved, root: Some(root) });
    }
    let granted: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
    let shown =
        if resolved.as_os_str() == path { String::new() } else { format!(" (resolves to {})", resolved.display()) };
    Err(format!(
        "{what}: {path}{shown} is outside the paths granted to '{capability}' ({}); {}",
        granted.join(", "),
        remedies.word(Remedy::GrantPath(capability))
    ))
}

/// A granted root as the kernel sees it; a root that does not exist (yet)
/// is taken as written, made absolute.
fn canonical_root(root: &Path) -> PathBuf {
    root.canonicalize().unwrap_or_else(|_| absolute(root))
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Resolves every `..` and symbolic link of `path`; the part that does not
/// exist yet is appended as it is, and may hold no `..`.
pub(crate) fn resolve(path: &Path, last: Last) -> io::Result<PathBuf> {
    let path = absolute(path);
    if last == Last::Keep {
        let name = match path.components().next_back() {
            Some(Component::Normal(name)) => name.to_os_string(),
            _ => return Err(invalid("names no file or directory")),
        };
        let parent = path.parent().ok_or_else(|| invalid("has no parent directory"))?;
        return Ok(resolve(parent, Last::Follow)?.join(name));
    }
    // The longest prefix that exists, as far as `lstat` can tell: a
    // dangling symbolic link exists, and must not be written through.
    let mut existing = path.as_path();
    let mut rest = Vec::new();
    while std::fs::symlink_metadata(existing).is_err() {
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => break,
        }
    }
    let mut resolved = existing.canonicalize().map_err(|e| {
        if std::fs::symlink_metadata(existing).is_ok_and(|m| m.file_type().is_symlink()) {
            io::Error::new(io::ErrorKind::NotFound, format!("{} is a dangling symbolic link", existing.display()))
        } else {
            e
        }
    })?;
    // `file_name()` skips `.` and stops at `..`: a `..` under a part that
    // does not exist cannot be resolved, so it is refused.
    if existing != path.as_path() && path.strip_prefix(existing).is_ok_and(has_parent_dir) {
        return Err(invalid("has '..' after a part that does not exist"));
    }
    for name in rest.iter().rev() {
        resolved.push(name);
    }
    Ok(resolved)
}

fn has_parent_dir(path: &Path) -> bool {
    path.components().any(|c| c == Component::ParentDir)
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_dots_links_and_missing_tails() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("a")).unwrap();
        std::os::unix::fs::symlink("/", root.join("up")).unwrap();
        assert_eq!(resolve(&root.join("a/../a/new.txt"), Last::Follow).unwrap(), root.join("a/new.txt"));
        assert_eq!(resolve(&root.join("up/etc"), Last::Follow).unwrap(), PathBuf::from("/etc"));
        assert_eq!(resolve(&root.join("up"), Last::Keep).unwrap(), root.join("up"));
        assert!(resolve(&root.join("missing/../x"), Last::Follow).is_err());
        std::os::unix::fs::symlink(root.join("nowhere"), root.join("dangling")).unwrap();
        let e = resolve(&root.join("dangling"), Last::Follow).unwrap_err().to_string();
        assert!(e.contains("dangling"), "{e}");
    }

    #[test]
    fn roots_are_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let mut g = Grants::default();
        g.grant_path(Capability::Fs, &root);
        let inside = root.join("x").display().to_string();
        let remedies = Remedies::new(|r| format!("{r:?} wanted"));
        assert!(check(&g, &remedies, Capability::Fs, "fs.read", &inside, Last::Follow).is_ok());
        let outside = format!("{}/../", root.display());
        let e = check(&g, &remedies, Capability::Fs, "fs.read", &outside, Last::Follow).unwrap_err();
        assert!(e.contains("outside the paths granted to 'fs'") && e.ends_with("; GrantPath(Fs) wanted"), "{e}");
    }
}
