//! The rules a run can be given: retries with back-off, halt rules, and the
//! progress snapshot a caller sees.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::streams::{ProgressRecord, Status};

/// The longest wait between two attempts of an item.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// `fail=P%` is judged only once this many items have finished, so that
/// one early failure does not halt a million-item run.
pub(crate) const MIN_PERCENT_SAMPLE: u64 = 10;

/// Retries of failed and timed-out items; see [`Parallel::retries`](super::Parallel::retries).
///
/// ```
/// use std::time::Duration;
/// use runspace::Retry;
/// let r = Retry { retries: 3, backoff: Duration::from_millis(100) };
/// assert_eq!(r.delay(1), Duration::from_millis(100));
/// assert_eq!(r.delay(3), Duration::from_millis(400));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts after the first.
    pub retries: u32,
    /// The wait before the second attempt; it doubles for each further one.
    pub backoff: Duration,
}

impl Retry {
    /// The wait after attempt `attempt` (from 1) failed: exponential, at most a minute.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.backoff.saturating_mul(factor).min(MAX_BACKOFF)
    }
}

/// When a halt rule fires: stop the running items, or let them finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaltWhen {
    /// Stop at once: running items end as `Stopped`.
    Now,
    /// Start nothing new; running items finish (or time out) and are reported.
    Soon,
}

/// What makes a halt rule fire. A *failure* is an item that ended `Failed`
/// or `TimedOut` (after its retries); a *success* one that ended `Completed`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HaltRule {
    /// After this many failures.
    Failures(u64),
    /// Once at least this percentage of the finished items failed (judged
    /// from the 10th finished item on).
    FailurePercent(f64),
    /// After this many successes.
    Successes(u64),
}

/// A halt rule in the spirit of GNU parallel's `--halt`: `now,fail=1`,
/// `soon,fail=10%`, `now,success=3`; `now` or `soon` alone means `fail=1`.
///
/// ```
/// use runspace::{Halt, HaltRule, HaltWhen};
/// let h: Halt = "soon,fail=25%".parse().unwrap();
/// assert_eq!(h, Halt { when: HaltWhen::Soon, rule: HaltRule::FailurePercent(25.0) });
/// assert_eq!(h.to_string(), "soon,fail=25%");
/// assert!("later,fail=1".parse::<Halt>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Halt {
    /// Whether running items are stopped or let finish.
    pub when: HaltWhen,
    /// What makes it fire.
    pub rule: HaltRule,
}

impl Halt {
    /// Whether the rule fires, given the counts so far.
    pub fn fires(&self, p: &RunProgress) -> bool {
        let failures = p.failures();
        match self.rule {
            HaltRule::Failures(n) => failures >= n.max(1),
            HaltRule::Successes(n) => p.completed >= n.max(1),
            HaltRule::FailurePercent(pct) => {
                p.done >= MIN_PERCENT_SAMPLE.min(p.total.unwrap_or(u64::MAX)).max(1)
                    && failures as f64 * 100.0 >= pct * p.done as f64
                    && failures > 0
            }
        }
    }
}

impl FromStr for Halt {
    type Err = String;

    fn from_str(text: &str) -> Result<Halt, String> {
        let bad = || format!("invalid halt rule {text:?}: expected now|soon[,fail=N|fail=P%|success=N]");
        let (when, rule) = match text.split_once(',') {
            Some((when, rule)) => (when.trim(), Some(rule.trim())),
            None => (text.trim(), None),
        };
        let when = match when {
            "now" => HaltWhen::Now,
            "soon" => HaltWhen::Soon,
            _ => return Err(bad()),
        };
        let rule = match rule {
            None => HaltRule::Failures(1),
            Some(rule) => {
                let (key, value) = rule.split_once('=').ok_or_else(bad)?;
                match (key.trim(), value.trim()) {
                    ("fail", v) if v.ends_with('%') => {
                        let pct: f64 = v.trim_end_matches('%').parse().map_err(|_| bad())?;
                        if !(pct > 0.0 && pct <= 100.0) {
                            return Err(format!("invalid halt rule {text:?}: the percentage must be in (0, 100]"));
                        }
                        HaltRule::FailurePercent(pct)
                    }
                    ("fail", v) => HaltRule::Failures(v.parse().ok().filter(|n| *n > 0).ok_or_else(bad)?),
                    ("success", v) => HaltRule::Successes(v.parse().ok().filter(|n| *n > 0).ok_or_else(bad)?),
                    _ => return Err(bad()),
                }
            }
        };
        Ok(Halt { when, rule })
    }
}

impl fmt::Display for Halt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let when = match self.when {
            HaltWhen::Now => "now",
            HaltWhen::Soon => "soon",
        };
        match self.rule {
            HaltRule::Failures(n) => write!(f, "{when},fail={n}"),
            HaltRule::FailurePercent(p) => write!(f, "{when},fail={p}%"),
            HaltRule::Successes(n) => write!(f, "{when},success={n}"),
        }
    }
}

/// A snapshot of a run's progress, from [`Results::progress`](super::Results::progress)
/// or [`Parallel::on_progress`](super::Parallel::on_progress).
///
/// The status counts always add up: `done == completed + with_errors +
/// failed + timed_out + stopped`.
///
/// ```
/// use runspace::{RunspacePool, Script};
/// use serde_json::json;
/// let pool = RunspacePool::builder().max(2).open().unwrap();
/// let mut results = pool.parallel(&Script::new("if _ % 2 == 0 then error('even') end").unwrap())
///     .run((0..10).map(|n| json!(n)));
/// results.by_ref().for_each(drop);
/// let p = results.progress();
/// assert_eq!((p.done, p.completed, p.failed), (10, 5, 5));
/// assert_eq!(p.done, p.completed + p.with_errors + p.failed + p.timed_out + p.stopped);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunProgress {
    /// The number of inputs, when known ([`Parallel::total`](super::Parallel::total)).
    pub total: Option<u64>,
    /// Inputs read so far.
    pub read: u64,
    /// Items handed to the caller so far.
    pub done: u64,
    /// Of those, `Completed`.
    pub completed: u64,
    /// `CompletedWithErrors`.
    pub with_errors: u64,
    /// `Failed` (after retries).
    pub failed: u64,
    /// `TimedOut` (after retries).
    pub timed_out: u64,
    /// `Stopped`.
    pub stopped: u64,
    /// Items that took more than one attempt.
    pub retried: u64,
    /// Batches formed so far (batch mode).
    pub batches: u64,
    /// Time since the run started.
    pub elapsed: Duration,
    /// Average items per second since the start.
    pub items_per_sec: f64,
    /// Estimated time left, when the total is known and items have finished.
    pub eta: Option<Duration>,
    /// The latest `write_progress` record of any item: the current activity.
    pub activity: Option<ProgressRecord>,
    /// True in the last snapshot of a run.
    pub finished: bool,
}

impl RunProgress {
    /// Items that ended `Failed` or `TimedOut`.
    pub fn failures(&self) -> u64 {
        self.failed + self.timed_out
    }

    /// Counts one finished item (the caller's thread only: plain adds).
    pub(crate) fn count(&mut self, status: Status, attempts: u32) {
        self.done += 1;
        match status {
            Status::Completed => self.completed += 1,
            Status::CompletedWithErrors => self.with_errors += 1,
            Status::Failed => self.failed += 1,
            Status::TimedOut => self.timed_out += 1,
            Status::Stopped => self.stopped += 1,
        }
        if attempts > 1 {
            self.retried += 1;
        }
    }

    /// Fills in the rate and ETA for `elapsed`.
    pub(crate) fn timed(&mut self, elapsed: Duration) {
        self.elapsed = elapsed;
        let secs = elapsed.as_secs_f64();
        self.items_per_sec = if secs > 0.0 { self.done as f64 / secs } else { 0.0 };
        self.eta = match self.total {
            // A huge total at a slow rate can exceed what a Duration holds:
            // no estimate rather than a panic.
            Some(total) if self.items_per_sec > 0.0 => {
                Duration::try_from_secs_f64(total.saturating_sub(self.done) as f64 / self.items_per_sec).ok()
            }
            _ => None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(done: u64, completed: u64, failed: u64) -> RunProgress {
        RunProgress { done, completed, failed, ..RunProgress::default() }
    }

    #[test]
    fn halt_rules_parse_and_fire() {
        let parse = |s: &str| s.parse::<Halt>().unwrap();
        assert_eq!(parse("now").rule, HaltRule::Failures(1));
        assert!(parse("now,fail=2").fires(&progress(5, 3, 2)));
        assert!(!parse("now,fail=3").fires(&progress(5, 3, 2)));
        assert!(parse("soon,success=3").fires(&progress(5, 3, 2)));
        // Percentages wait for ten finished items.
        assert!(!parse("soon,fail=50%").fires(&progress(2, 0, 2)));
        assert!(parse("soon,fail=50%").fires(&progress(10, 5, 5)));
        assert!(!parse("soon,fail=50%").fires(&progress(10, 6, 4)));
        for bad in ["", "now,fail=0", "now,fail=x", "soon,fail=0%", "soon,fail=101%", "now,done=1", "never"] {
            assert!(bad.parse::<Halt>().is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let r = Retry { retries: 30, backoff: Duration::from_secs(1) };
        assert_eq!(r.delay(2), Duration::from_secs(2));
        assert_eq!(r.delay(30), MAX_BACKOFF);
    }

    #[test]
    fn eta_follows_the_rate() {
        let mut p = RunProgress { total: Some(100), done: 25, ..RunProgress::default() };
        p.timed(Duration::from_secs(5));
        assert_eq!(p.items_per_sec, 5.0);
        assert_eq!(p.eta, Some(Duration::from_secs(15)));
        // 2^53 items, one done in an hour: past what a Duration holds.
        let mut p = RunProgress { total: Some(1 << 53), done: 1, ..RunProgress::default() };
        p.timed(Duration::from_secs(3600));
        assert_eq!(p.eta, None);
    }
}
