//! The limits a job request may ask for, checked in one place: the API
//! checks every request with [`JobLimits::check`], and `rsp job start`
//! checks its flags with the same function before sending them, so the two
//! never disagree on what is valid.
//!
//! Messages name the API field (`throttle: …`); a command-line caller maps
//! the field to its own option name.
//!
//! A running job's refusals name its fields too (`job_remedies`).

use std::fmt;
use std::time::Duration;

use runspace::units::{duration_from_secs, format_size, MAX_SIZE};
use runspace::{Remedies, Remedy};

/// The most runspaces a run over inputs may use (each is a thread).
pub const MAX_THROTTLE: u64 = 1024;
/// The smallest memory limit a job may set: below it no script starts.
pub const MIN_MEMORY_LIMIT: u64 = 1 << 20;
/// The most items in one job.
pub const MAX_ITEMS: u64 = 10_000_000;
/// The most records (or jobs) in one page of a listing.
pub const MAX_PAGE: u64 = 10_000;
/// The most bytes of records in one page of output (a page holds at least
/// one record, however large): a client reads any output in bounded steps.
pub const MAX_PAGE_BYTES: usize = 4 << 20;
/// The largest request body the API reads (a job's script, modules and inputs).
pub const MAX_REQUEST_BODY: u64 = 32 << 20;
/// The largest offset into a listing (offsets are signed 64-bit in the store).
pub const MAX_OFFSET: u64 = i64::MAX as u64;

/// A limit that is out of range: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitError {
    /// The API field: `throttle`, `memory_limit`, `timeout_ms`, `items`, `offset`, `limit`.
    pub field: &'static str,
    /// What is wrong, and what is allowed.
    pub message: String,
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for LimitError {}

fn error(field: &'static str, message: String) -> LimitError {
    LimitError { field, message }
}

/// What a job request asks for, as given (absent fields are `None`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobLimits {
    /// Runspaces for a run over inputs: 1 to [`MAX_THROTTLE`].
    pub throttle: Option<u64>,
    /// Bytes each runspace may allocate: [`MIN_MEMORY_LIMIT`] to `MAX_SIZE`.
    pub memory_limit: Option<u64>,
    /// Milliseconds before the run (or each item) fails: more than 0, at most a year.
    pub timeout_ms: Option<u64>,
    /// How many items the job runs: at most [`MAX_ITEMS`].
    pub items: u64,
}

/// Limits that passed [`JobLimits::check`], in the types the engine takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckedLimits {
    /// Runspaces for a run over inputs.
    pub throttle: Option<usize>,
    /// Bytes each runspace may allocate.
    pub memory_limit: Option<usize>,
    /// How long the run (or each item) may take.
    pub timeout: Option<Duration>,
}

impl JobLimits {
    /// Checks every limit; the first out of range is the error.
    pub fn check(&self) -> Result<CheckedLimits, LimitError> {
        let throttle = match self.throttle {
            None => None,
            Some(n @ 1..=MAX_THROTTLE) => Some(n as usize),
            Some(n) => return Err(error("throttle", format!("must be between 1 and {MAX_THROTTLE} (got {n})"))),
        };
        let memory_limit = match self.memory_limit {
            None => None,
            Some(n) if (MIN_MEMORY_LIMIT..=MAX_SIZE).contains(&n) => {
                Some(usize::try_from(n).map_err(|_| error("memory_limit", "too large for this machine".into()))?)
            }
            Some(n) => {
                return Err(error(
                    "memory_limit",
                    format!(
                        "must be between {} and {} (got {n} bytes); leave it out for no limit",
                        format_size(MIN_MEMORY_LIMIT),
                        format_size(MAX_SIZE)
                    ),
                ))
            }
        };
        let timeout = match self.timeout_ms {
            None => None,
            Some(0) => return Err(error("timeout_ms", "must be more than 0; leave it out for no timeout".into())),
            Some(ms) => Some(duration_from_secs(ms as f64 / 1000.0).map_err(|e| error("timeout_ms", e.to_string()))?),
        };
        if self.items > MAX_ITEMS {
            return Err(error(
                "items",
                format!(
                    "{} items is more than the {MAX_ITEMS} one job may run; split it into several jobs",
                    self.items
                ),
            ));
        }
        Ok(CheckedLimits { throttle, memory_limit, timeout })
    }
}

/// Checks a page of a listing: `offset` at most [`MAX_OFFSET`], `limit`
/// from 1 to [`MAX_PAGE`].
pub fn check_page(offset: u64, limit: u64) -> Result<(), LimitError> {
    if offset > MAX_OFFSET {
        return Err(error("offset", format!("must be at most {MAX_OFFSET} (got {offset})")));
    }
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(error("limit", format!("must be between 1 and {MAX_PAGE} (got {limit})")));
    }
    Ok(())
}

/// A job's refusal names the field of the job that fixes it (a job may come
/// from `rsp job submit`, the HTTP API or the dashboard alike).
pub(crate) fn job_remedies() -> Remedies {
    Remedies::new(|remedy| match remedy {
        Remedy::Grant(capability) => format!("add \"{capability}\" to the job's allow list"),
        Remedy::GrantPath(capability) => format!("add \"{capability}:DIR\" to the job's allow list"),
        Remedy::AddModule(name) => format!("add a module named \"{name}\" to the job's modules"),
        _ => String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(limits: JobLimits) -> Result<CheckedLimits, String> {
        limits.check().map_err(|e| e.to_string())
    }

    #[test]
    fn throttle_must_be_between_1_and_the_maximum() {
        assert!(check(JobLimits { throttle: Some(0), ..Default::default() }).unwrap_err().starts_with("throttle:"));
        assert!(check(JobLimits { throttle: Some(20_000), ..Default::default() }).unwrap_err().contains("1024"));
        assert!(check(JobLimits { throttle: Some(u64::MAX), ..Default::default() }).is_err());
        assert_eq!(check(JobLimits { throttle: Some(1024), ..Default::default() }).unwrap().throttle, Some(1024));
    }

    #[test]
    fn memory_limit_zero_or_tiny_or_huge_is_refused() {
        for bad in [0, 1, MIN_MEMORY_LIMIT - 1, MAX_SIZE + 1, u64::MAX] {
            let e = check(JobLimits { memory_limit: Some(bad), ..Default::default() }).unwrap_err();
            assert!(e.starts_with("memory_limit:") && e.contains("between 1 MB and 1 TB"), "{e}");
        }
        let ok = check(JobLimits { memory_limit: Some(64 << 20), ..Default::default() }).unwrap();
        assert_eq!(ok.memory_limit, Some(64 << 20));
    }

    #[test]
    fn timeout_zero_or_beyond_a_year_is_refused() {
        assert!(check(JobLimits { timeout_ms: Some(0), ..Default::default() }).is_err());
        let e = check(JobLimits { timeout_ms: Some(u64::MAX), ..Default::default() }).unwrap_err();
        assert!(e.starts_with("timeout_ms:") && e.contains("365 days"), "{e}");
        let ok = check(JobLimits { timeout_ms: Some(1500), ..Default::default() }).unwrap();
        assert_eq!(ok.timeout, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn too_many_items_are_refused() {
        assert!(check(JobLimits { items: MAX_ITEMS, ..Default::default() }).is_ok());
        assert!(check(JobLimits { items: MAX_ITEMS + 1, ..Default::default() }).unwrap_err().starts_with("items:"));
    }

    #[test]
    fn pages_do_not_wrap_or_exceed_the_maximum() {
        assert!(check_page(0, 1).is_ok() && check_page(MAX_OFFSET, MAX_PAGE).is_ok());
        assert!(check_page(1 << 63, 10).unwrap_err().to_string().starts_with("offset:"));
        assert!(check_page(0, 0).is_err() && check_page(0, MAX_PAGE + 1).is_err());
    }
}
