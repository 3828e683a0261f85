//! The streams an invocation produces besides its output, and its final status.

use serde::{Deserialize, Serialize};

/// How an invocation (or one item of a parallel run) ended.
///
/// ```
/// use runspace::Status;
/// assert!(Status::Completed.is_success());
/// assert!(!Status::CompletedWithErrors.is_success());
/// assert_eq!(serde_json::to_string(&Status::TimedOut).unwrap(), "\"TimedOut\"");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Status {
    /// Ran to the end with nothing on the error stream.
    Completed,
    /// Ran to the end, but wrote to the error stream (`write_error`).
    CompletedWithErrors,
    /// Raised an error (`error(...)`, a runtime fault, the memory limit).
    Failed,
    /// Ran past its timeout and was interrupted.
    TimedOut,
    /// Was stopped by its caller, or never started because the run was stopped.
    Stopped,
}

impl Status {
    /// True only for [`Status::Completed`].
    pub fn is_success(self) -> bool {
        self == Status::Completed
    }

    /// The name used in output (`Completed`, `TimedOut`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Completed => "Completed",
            Status::CompletedWithErrors => "CompletedWithErrors",
            Status::Failed => "Failed",
            Status::TimedOut => "TimedOut",
            Status::Stopped => "Stopped",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `write_progress` record.
///
/// ```
/// use runspace::ProgressRecord;
/// let p = ProgressRecord { activity: "copy".into(), status: None, percent: Some(50.0) };
/// assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"activity":"copy","percent":50.0}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressRecord {
    /// What is being done.
    pub activity: String,
    /// A free-form status line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Percent complete, 0–100, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
}

/// The non-output streams of one invocation, PowerShell's
/// `Streams.Error/Warning/Verbose/Debug/Information/Progress`.
///
/// ```
/// use runspace::Streams;
/// let s = Streams::default();
/// assert!(s.is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Streams {
    /// `write_error` records, then the terminating error if the script raised one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub error: Vec<String>,
    /// `write_warning` records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warning: Vec<String>,
    /// `write_verbose` records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verbose: Vec<String>,
    /// `write_debug` records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub debug: Vec<String>,
    /// `write_information` and `print` records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub information: Vec<String>,
    /// `write_progress` records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub progress: Vec<ProgressRecord>,
}

/// No records: lent by whatever keeps its streams only when it has some.
pub(crate) static NO_STREAMS: Streams = Streams {
    error: Vec::new(),
    warning: Vec::new(),
    verbose: Vec::new(),
    debug: Vec::new(),
    information: Vec::new(),
    progress: Vec::new(),
};

impl Streams {
    /// True when no stream has a record.
    pub fn is_empty(&self) -> bool {
        self.error.is_empty()
            && self.warning.is_empty()
            && self.verbose.is_empty()
            && self.debug.is_empty()
            && self.information.is_empty()
            && self.progress.is_empty()
    }
}
