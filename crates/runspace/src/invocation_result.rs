//! What one invocation produced, and the helpers that build results of
//! items that never ran or were cut short. Below the runspace, so that the
//! runspace, the pool and the runs all depend on it, not on each other.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::control::StopReason;
use crate::streams::{Status, Streams, NO_STREAMS};

/// What one invocation produced: its output, its streams, how it ended.
///
/// ```
/// use runspace::{Runspace, Script, SessionState, Status};
/// use serde_json::json;
/// let mut rs = Runspace::open(&SessionState::new()).unwrap();
/// let r = rs.invoke(&Script::new("emit(1) write_warning('careful') return 2").unwrap(), &[], &[]);
/// assert_eq!(r.output(), &[json!(1), json!(2)]);
/// assert_eq!(r.result(), json!([1, 2]));
/// assert_eq!(r.streams().warning, vec!["careful".to_string()]);
/// assert_eq!(r.status(), Status::Completed);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct InvocationResult {
    output: Output,
    /// Boxed, and only when there are records: most invocations have none,
    /// and a small result moves without a call to `memcpy`.
    streams: Option<Box<Streams>>,
    status: Status,
    error: Option<String>,
    duration: Duration,
}

impl InvocationResult {
    pub(crate) fn new(
        output: Output,
        streams: Option<Box<Streams>>,
        status: Status,
        error: Option<String>,
        duration: Duration,
    ) -> InvocationResult {
        InvocationResult { output, streams, status, error, duration }
    }

    pub(crate) fn failed(message: String, duration: Duration) -> InvocationResult {
        InvocationResult::ended(Status::Failed, message, duration)
    }

    pub(crate) fn ended(status: Status, message: String, duration: Duration) -> InvocationResult {
        let streams = Streams { error: vec![message.clone()], ..Streams::default() };
        InvocationResult::new(Output::default(), Some(Box::new(streams)), status, Some(message), duration)
    }

    /// Every output value: each `emit(v)`, then the script's return values.
    pub fn output(&self) -> &[Value] {
        self.output.as_slice()
    }

    /// The output as one value: `null` when there was none, the value when
    /// there was one, an array when there were several.
    pub fn result(&self) -> Value {
        match self.output() {
            [] => Value::Null,
            [one] => one.clone(),
            many => Value::Array(many.to_vec()),
        }
    }

    /// Like [`result`](Self::result), without cloning.
    pub fn into_result(self) -> Value {
        self.output.into_value()
    }

    /// The error, warning, verbose, debug, information and progress streams.
    /// A terminating error is the last record of the error stream.
    pub fn streams(&self) -> &Streams {
        self.streams.as_deref().unwrap_or(&NO_STREAMS)
    }

    /// How the invocation ended.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The terminating error (with its line), when the status is `Failed`,
    /// `TimedOut` or `Stopped`.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// How long it ran.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    pub(crate) fn set_duration(&mut self, duration: Duration) {
        self.duration = duration;
    }

    pub(crate) fn into_parts(self) -> (Output, Option<Box<Streams>>, Status, Duration) {
        (self.output, self.streams, self.status, self.duration)
    }
}

/// An invocation's output values. Most items have exactly one, and that
/// one is kept without a vector: no allocation per item.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Output {
    One(Value),
    Many(Vec<Value>),
}

impl Default for Output {
    fn default() -> Output {
        Output::Many(Vec::new())
    }
}

impl Output {
    pub(crate) fn push(&mut self, value: Value) {
        match self {
            Output::Many(values) if values.is_empty() => *self = Output::One(value),
            Output::Many(values) => values.push(value),
            Output::One(first) => {
                let first = std::mem::take(first);
                *self = Output::Many(vec![first, value]);
            }
        }
    }

    pub(crate) fn as_slice(&self) -> &[Value] {
        match self {
            Output::One(value) => std::slice::from_ref(value),
            Output::Many(values) => values,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Null for none, the value for one, an array for several.
    pub(crate) fn into_value(self) -> Value {
        match self {
            Output::One(value) => value,
            Output::Many(values) => collapse(values),
        }
    }

    pub(crate) fn into_vec(self) -> Vec<Value> {
        match self {
            Output::One(value) => vec![value],
            Output::Many(values) => values,
        }
    }
}

/// The error of an item the watchdog ended while it was stuck in a C call.
pub(crate) fn abandoned_message(reason: StopReason) -> String {
    format!("{} (stuck in a library call; its runspace was replaced)", reason.message())
}

/// How long an abandoned invocation ran, known from its deadline and
/// timeout (zero when it had none).
pub(crate) fn ran_for(deadline: Option<Instant>, timeout: Option<Duration>) -> Duration {
    match (deadline, timeout) {
        (Some(deadline), Some(timeout)) => {
            deadline.checked_sub(timeout).map_or(Duration::ZERO, |started| started.elapsed())
        }
        _ => Duration::ZERO,
    }
}

/// Null for no output, the value for one, an array for several.
pub(crate) fn collapse(mut output: Vec<Value>) -> Value {
    match output.len() {
        0 => Value::Null,
        1 => output.pop().unwrap_or(Value::Null),
        _ => Value::Array(output),
    }
}
