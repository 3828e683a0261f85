//! The open-file limit and the default socket budget derived from it.
//!
//! Every in-flight probe holds one file descriptor. A scanner that ignores
//! `RLIMIT_NOFILE` either crawls (a 1024 soft limit) or fails probes with
//! "too many open files" and, worse, may report them as closed. We raise the
//! soft limit to the hard limit once at start (any process may do that), then
//! size the default budget to stay well inside it.

use std::io;

/// File descriptors kept free for everything that is not a probe: stdio,
/// epoll sets, the resolver, the output file, a progress bar.
const RESERVED_FDS: u64 = 64;
/// Upper bound of the default budget: enough to keep a 1 s timeout scan of
/// filtered ports busy, small enough not to look like a SYN flood to one host.
pub const MAX_DEFAULT_CONCURRENCY: usize = 2048;

/// The process's open-file limits.
///
/// ```
/// let l = runspace_scan::limits::nofile_limit().unwrap();
/// assert!(l.soft <= l.hard);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NofileLimit {
    /// Current soft limit (what applies).
    pub soft: u64,
    /// Hard limit (how far the soft limit may be raised without privileges).
    pub hard: u64,
}

/// Reads `RLIMIT_NOFILE`.
///
/// ```
/// assert!(runspace_scan::limits::nofile_limit().unwrap().soft > 0);
/// ```
pub fn nofile_limit() -> io::Result<NofileLimit> {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: rl is valid for writes.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // rlim_t is not u64 on every platform.
    #[allow(clippy::unnecessary_cast)]
    Ok(NofileLimit { soft: rl.rlim_cur as u64, hard: rl.rlim_max as u64 })
}

/// Raises the soft open-file limit toward the hard limit (capped at
/// 1,048,576, beyond which some kernels refuse) and returns the limits now
/// in force. Failing to raise is not an error: the old limits are returned.
///
/// ```
/// let after = runspace_scan::limits::raise_nofile_limit().unwrap();
/// assert!(after.soft >= 1);
/// ```
pub fn raise_nofile_limit() -> io::Result<NofileLimit> {
    let cur = nofile_limit()?;
    let want = cur.hard.min(1 << 20);
    if want > cur.soft {
        let rl = libc::rlimit { rlim_cur: want as libc::rlim_t, rlim_max: cur.hard as libc::rlim_t };
        // SAFETY: rl is a valid rlimit.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) };
    }
    nofile_limit()
}

/// The default socket budget for a soft limit: 90 % of what is left after
/// the reserve, at most [`MAX_DEFAULT_CONCURRENCY`], at least 1.
///
/// ```
/// use runspace_scan::limits::default_concurrency;
/// assert_eq!(default_concurrency(1024), 864);
/// assert_eq!(default_concurrency(1_000_000), 2048);
/// assert_eq!(default_concurrency(10), 1);
/// ```
pub fn default_concurrency(soft_limit: u64) -> usize {
    let usable = soft_limit.saturating_sub(RESERVED_FDS) * 9 / 10;
    (usable as usize).clamp(1, MAX_DEFAULT_CONCURRENCY)
}

/// The default budget for the limit currently in force.
///
/// ```
/// assert!(runspace_scan::limits::current_default_concurrency() >= 1);
/// ```
pub fn current_default_concurrency() -> usize {
    nofile_limit().map(|l| default_concurrency(l.soft)).unwrap_or(256)
}
