//! The back-off against guessing the server's token, shared by the two
//! doors that check it: the API's bearer token and the dashboard's login
//! form. After a few wrong tokens, each further attempt waits out a
//! back-off that doubles with every failure (1 s to 60 s), answered 429;
//! during it no token is checked at all, the right one included, so a
//! guess inside the back-off learns nothing.
//!
//! Counted for the server, not per client address: the token is the
//! server's, and an attacker has many addresses. One count for both
//! doors, so alternating them gains nothing. A login with the right token
//! clears the count (the owner is back); an API request with it does not
//! (a client busy with the right token would otherwise give a guesser a
//! fresh allowance between its requests). Failures are forgotten after a
//! quiet quarter of an hour.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Wrong tokens allowed before the back-off starts.
const FREE_FAILURES: u32 = 5;
/// The longest back-off between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Failures this old are forgotten.
const FORGET_FAILURES: Duration = Duration::from_secs(15 * 60);

/// The wrong tokens given to this server, for the back-off.
#[derive(Default)]
pub(crate) struct Attempts(Mutex<Failures>);

#[derive(Default)]
struct Failures {
    count: u32,
    last: Option<Instant>,
}

impl Failures {
    /// How long until the next attempt may be checked (zero: now).
    fn wait(&mut self, now: Instant) -> Duration {
        let Some(last) = self.last else { return Duration::ZERO };
        let since = now.saturating_duration_since(last);
        if since >= FORGET_FAILURES {
            *self = Failures::default();
            return Duration::ZERO;
        }
        if self.count < FREE_FAILURES {
            return Duration::ZERO;
        }
        let backoff = Duration::from_secs(1 << (self.count - FREE_FAILURES).min(6)).min(MAX_BACKOFF);
        backoff.saturating_sub(since)
    }
}

impl Attempts {
    /// Checks a token with `right` (whether it is the server's), unless
    /// the back-off is running: then `Err` says how long is left, and the
    /// token is not looked at (so even the right one is no answer). The
    /// check happens under the lock, so parallel guesses queue behind it
    /// rather than all slipping through before the first failure counts.
    /// The right token leaves the count as it is (see the module).
    pub(crate) fn attempt(&self, right: impl FnOnce() -> bool) -> Result<bool, Duration> {
        self.check(right, false)
    }

    /// [`Attempts::attempt`] for a login: the right token clears the count.
    pub(crate) fn login(&self, right: impl FnOnce() -> bool) -> Result<bool, Duration> {
        self.check(right, true)
    }

    fn check(&self, right: impl FnOnce() -> bool, clears: bool) -> Result<bool, Duration> {
        let mut failures = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let wait = failures.wait(now);
        if !wait.is_zero() {
            return Err(wait);
        }
        if right() {
            if clears {
                *failures = Failures::default();
            }
            return Ok(true);
        }
        failures.count = failures.count.saturating_add(1);
        failures.last = Some(now);
        Ok(false)
    }
}

/// Whole seconds to wait, rounded up, as `Retry-After` says them.
pub(crate) fn retry_after(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_tokens_back_off_doubling_and_are_forgotten() {
        let attempts = Attempts::default();
        for _ in 0..FREE_FAILURES {
            assert_eq!(attempts.attempt(|| false), Ok(false));
        }
        // Now every attempt waits, and the right token is not even looked at.
        let wait = attempts.attempt(|| panic!("checked during the back-off")).unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1), "{wait:?}");
        assert_eq!(retry_after(wait), 1);
        let mut failures = Failures { count: FREE_FAILURES + 3, last: Some(Instant::now()) };
        let wait = failures.wait(Instant::now());
        assert!(wait > Duration::from_secs(7) && wait <= Duration::from_secs(8), "doubling: {wait:?}");
        failures.count = 1000;
        assert!(failures.wait(Instant::now()) <= MAX_BACKOFF, "bounded");
        let later = Instant::now() + MAX_BACKOFF + Duration::from_secs(1);
        assert_eq!(failures.wait(later), Duration::ZERO, "waited out");
        assert_eq!(failures.count, 1000, "but not forgotten yet");
        assert_eq!(failures.wait(Instant::now() + FORGET_FAILURES), Duration::ZERO);
        assert_eq!(failures.count, 0, "forgotten after a quiet while");
    }

    #[test]
    fn a_login_with_the_right_token_resets_the_count() {
        let attempts = Attempts::default();
        for _ in 0..3 {
            attempts.attempt(|| false).unwrap();
        }
        assert_eq!(attempts.login(|| true), Ok(true));
        assert_eq!(attempts.0.lock().unwrap().count, 0);
    }

    #[test]
    fn a_request_with_the_right_token_does_not_give_a_guesser_a_fresh_allowance() {
        let attempts = Attempts::default();
        for _ in 0..FREE_FAILURES - 1 {
            attempts.attempt(|| false).unwrap();
        }
        assert_eq!(attempts.attempt(|| true), Ok(true));
        assert_eq!(attempts.attempt(|| false), Ok(false));
        assert!(attempts.attempt(|| true).is_err(), "the fifth failure since starts the back-off");
    }
}
