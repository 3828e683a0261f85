//! One script run on a pool: PowerShell's `[powershell]::Create()` with
//! `AddScript`, `AddArgument`, `AddParameter`, `Invoke` and `BeginInvoke`.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::control::{Control, StopReason};
use crate::error::{Error, Result};
use crate::pool::{RunspacePool, Work};
use crate::runspace::Runspace;
use crate::script::Script;
use crate::session::check_name;
use crate::streams::{Status, Streams};
use crate::watchdog::{Slot, Task};

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
    output: Vec<Value>,
    streams: Streams,
    status: Status,
    error: Option<String>,
    duration: Duration,
}

impl InvocationResult {
    pub(crate) fn new(
        output: Vec<Value>,
        streams: Streams,
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
        InvocationResult::new(Vec::new(), streams, status, Some(message), duration)
    }

    /// Every output value: each `emit(v)`, then the script's return values.
    pub fn output(&self) -> &[Value] {
        &self.output
    }

    /// The output as one value: `null` when there was none, the value when
    /// there was one, an array when there were several.
    pub fn result(&self) -> Value {
        match self.output.as_slice() {
            [] => Value::Null,
            [one] => one.clone(),
            many => Value::Array(many.to_vec()),
        }
    }

    /// Like [`result`](Self::result), without cloning.
    pub fn into_result(self) -> Value {
        collapse(self.output)
    }

    /// The error, warning, verbose, debug, information and progress streams.
    /// A terminating error is the last record of the error stream.
    pub fn streams(&self) -> &Streams {
        &self.streams
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

    pub(crate) fn into_parts(self) -> (Vec<Value>, Streams, Status, Duration) {
        (self.output, self.streams, self.status, self.duration)
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

/// A script with its arguments and parameters, ready to run on a pool.
///
/// ```
/// use runspace::{RunspacePool, Script};
/// use serde_json::json;
/// let pool = RunspacePool::builder().max(2).open().unwrap();
/// let script = Script::new("return greeting .. ', ' .. _").unwrap();
/// let r = pool.invocation(&script).arg(json!("world")).param("greeting", json!("hello")).invoke().unwrap();
/// assert_eq!(r.result(), json!("hello, world"));
/// ```
#[must_use = "an invocation does nothing until invoke() or begin()"]
pub struct Invocation<'p> {
    pool: &'p RunspacePool,
    script: Script,
    args: Vec<Value>,
    params: Vec<(String, Value)>,
    timeout: Option<Duration>,
    error: Option<Error>,
}

impl<'p> Invocation<'p> {
    pub(crate) fn new(pool: &'p RunspacePool, script: &Script) -> Invocation<'p> {
        Invocation {
            pool,
            script: script.clone(),
            args: Vec::new(),
            params: Vec::new(),
            timeout: pool.session().timeout,
            error: None,
        }
    }

    /// Adds a positional argument (`...` in the script; the first is also `_`).
    pub fn arg(mut self, value: Value) -> Self {
        self.args.push(value);
        self
    }

    /// Adds a named parameter: a plain global in the script.
    pub fn param(mut self, name: &str, value: Value) -> Self {
        if let Err(e) = check_name("parameter", name) {
            self.error.get_or_insert(e);
        }
        self.params.retain(|(n, _)| n != name);
        self.params.push((name.to_string(), value));
        self
    }

    /// Stops the invocation with status `TimedOut` after `timeout`
    /// (overrides the session's default).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Runs it and waits for the result.
    pub fn invoke(self) -> Result<InvocationResult> {
        Ok(self.begin()?.end())
    }

    /// Starts it in the background and returns at once.
    pub fn begin(self) -> Result<InvocationHandle> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let shared = Arc::new(Pending {
            script: self.script,
            args: self.args,
            params: self.params,
            timeout: self.timeout,
            state: Mutex::new(State::Queued),
            done: Condvar::new(),
        });
        self.pool.submit(Work::Invoke(shared.clone()))?;
        Ok(InvocationHandle { shared })
    }
}

/// A running invocation: PowerShell's `IAsyncResult` plus `EndInvoke` and `Stop`.
///
/// ```
/// use runspace::{RunspacePool, Script, Status};
/// use std::time::Duration;
/// let pool = RunspacePool::builder().open().unwrap();
/// let handle = pool.invocation(&Script::new("sleep(3600)").unwrap()).begin().unwrap();
/// assert!(!handle.wait(Duration::from_millis(20)));
/// handle.stop();
/// assert_eq!(handle.end().status(), Status::Stopped);
/// ```
pub struct InvocationHandle {
    shared: Arc<Pending>,
}

impl InvocationHandle {
    /// True once it has ended, however it ended.
    pub fn is_completed(&self) -> bool {
        matches!(*self.shared.lock(), State::Done(_))
    }

    /// Waits up to `timeout` for it to end; true if it has.
    pub fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if matches!(*state, State::Done(_)) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self.shared.done.wait_timeout(state, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Waits for the end and returns the result.
    pub fn end(self) -> InvocationResult {
        let mut state = self.shared.lock();
        loop {
            if let State::Done(result) = &*state {
                return result.clone();
            }
            state = self.shared.done.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Asks it to stop and returns at once; [`end`](Self::end) then returns
    /// promptly with status `Stopped`. Stopping a queued invocation means it
    /// never starts.
    pub fn stop(&self) {
        self.shared.finish_early(StopReason::Stopped);
    }
}

/// A submitted invocation, shared between its handle and the worker.
pub(crate) struct Pending {
    script: Script,
    args: Vec<Value>,
    params: Vec<(String, Value)>,
    timeout: Option<Duration>,
    state: Mutex<State>,
    done: Condvar,
}

enum State {
    Queued,
    Running { control: Arc<Control>, generation: u64 },
    Done(InvocationResult),
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the result, unless the watchdog already ended it.
    fn complete(&self, result: InvocationResult) {
        let mut state = self.lock();
        if !matches!(*state, State::Done(_)) {
            *state = State::Done(result);
            self.done.notify_all();
        }
    }

    /// Ends it as `reason` says while its worker is stuck in a C call (the
    /// watchdog abandons that worker).
    /// `deadline` is the running invocation's, from which its run time is known.
    pub(crate) fn finish_abandoned(&self, reason: StopReason, deadline: Option<Instant>) {
        let status = match reason {
            StopReason::Stopped => Status::Stopped,
            StopReason::TimedOut => Status::TimedOut,
        };
        let ran = ran_for(deadline, self.timeout);
        self.complete(InvocationResult::ended(status, abandoned_message(reason), ran));
    }

    /// Stops it if running; ends it with `reason` if still queued.
    pub(crate) fn finish_early(&self, reason: StopReason) {
        let mut state = self.lock();
        match &*state {
            State::Queued => {
                let status = match reason {
                    StopReason::Stopped => Status::Stopped,
                    StopReason::TimedOut => Status::TimedOut,
                };
                *state = State::Done(InvocationResult::ended(status, reason.message().into(), Duration::ZERO));
                self.done.notify_all();
            }
            State::Running { control, generation } => control.request_stop(*generation, reason),
            State::Done(_) => {}
        }
    }

    /// Runs it on `runspace` (called by a pool worker).
    pub(crate) fn run(self: &Arc<Self>, runspace: &mut Runspace, slot: &Slot) {
        let generation = runspace.next_generation();
        {
            let mut state = self.lock();
            if !matches!(*state, State::Queued) {
                return; // stopped before it started
            }
            *state = State::Running { control: slot.control.clone(), generation };
        }
        *slot.task() = Task::Invoke(self.clone());
        let result = match runspace.prepare(&self.script) {
            Ok(function) => {
                let deadline = self.timeout.map(|t| Instant::now() + t);
                runspace.execute(&function, &self.args, &self.params, generation, 0, deadline, None)
            }
            Err(failed) => failed,
        };
        *slot.task() = Task::Idle;
        self.complete(result);
    }

    /// Ends it without running (the pool could not open a runspace, or closed).
    pub(crate) fn abandon(&self, status: Status, message: String) {
        let mut state = self.lock();
        if matches!(*state, State::Queued) {
            *state = State::Done(InvocationResult::ended(status, message, Duration::ZERO));
            self.done.notify_all();
        }
    }
}
