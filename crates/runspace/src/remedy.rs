//! What a refusal tells the user to do about it.
//!
//! The engine knows *what* is missing (a capability, a path under a grant,
//! a module) but not *how* its user supplies it: a Rust program calls
//! [`SessionState::allow`](crate::SessionState::allow), `rsp` takes
//! `--allow exec`, a job names it in its `allow` list. So the engine's
//! messages name the capability or the module, and the front end that made
//! the session words the hint ([`SessionState::remedies`]). Without one the
//! hint names this library's own API.
//!
//! [`SessionState::remedies`]: crate::SessionState::remedies

use std::fmt;
use std::sync::Arc;

use crate::Capability;

/// Something a session lacks that its user can add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Remedy<'a> {
    /// Grant the capability (it is not granted at all).
    Grant(Capability),
    /// Grant the capability on a further path (it is granted on others).
    GrantPath(Capability),
    /// Add the module of this name.
    AddModule(&'a str),
}

/// How a front end words a [`Remedy`]: the text after "; " or inside the
/// parentheses of a refusal, e.g. `grant it with --allow exec`.
///
/// ```
/// use runspace::{Capability, Remedies, Remedy};
/// let cli = Remedies::new(|remedy| match remedy {
///     Remedy::Grant(c) => format!("grant it with --allow {c}"),
///     Remedy::GrantPath(c) => format!("grant it with --allow {c}:DIR"),
///     Remedy::AddModule(name) => format!("add it with --module {name}.luau"),
///     _ => String::new(),
/// });
/// assert_eq!(cli.word(Remedy::Grant(Capability::Net)), "grant it with --allow net");
/// assert!(Remedies::default().word(Remedy::Grant(Capability::Net)).contains("SessionState::allow(Capability::Net)"));
/// ```
#[derive(Clone)]
pub struct Remedies(Arc<dyn Fn(Remedy<'_>) -> String + Send + Sync>);

impl Remedies {
    /// Words each remedy with `f`.
    pub fn new(f: impl Fn(Remedy<'_>) -> String + Send + Sync + 'static) -> Remedies {
        Remedies(Arc::new(f))
    }

    /// The hint for `remedy`.
    pub fn word(&self, remedy: Remedy<'_>) -> String {
        (self.0)(remedy)
    }
}

impl Default for Remedies {
    /// Names this library's API.
    fn default() -> Remedies {
        Remedies::new(|remedy| match remedy {
            Remedy::Grant(c) => format!("grant it with SessionState::allow(Capability::{c:?})"),
            Remedy::GrantPath(c) => format!("grant it with Grants::grant_path(Capability::{c:?}, DIR)"),
            Remedy::AddModule(name) => format!("add it with SessionState::module(\"{name}\", ..)"),
        })
    }
}

impl fmt::Debug for Remedies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Remedies(..)")
    }
}
