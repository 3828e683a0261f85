//! One script run on a pool: PowerShell's `[powershell]::Create()` with
//! `AddScript`, `AddArgument`, `AddParameter`, `Invoke` and `BeginInvoke`.

use std::any::Any;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::control::{StopReason, Switch};
use crate::error::{Error, Result};
use crate::invocation_result::{abandoned_message, ran_for, InvocationResult};
use crate::pool::{Lane, LocalFuture, RunspacePool, Task};
use crate::runspace::Execution;
use crate::script::Script;
use crate::session::check_name;
use crate::streams::Status;

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
        // Past MAX_DURATION a deadline (now + timeout) overflows `Instant` and
        // panics: `Duration::MAX` means "no real limit", so it is clamped.
        self.timeout = Some(timeout.min(crate::units::MAX_DURATION));
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
        self.pool.submit(Box::new(Invoke(shared.clone())))?;
        Ok(InvocationHandle { shared })
    }
}

impl RunspacePool {
    /// Prepares one invocation of `script` on this pool.
    pub fn invocation(&self, script: &Script) -> Invocation<'_> {
        Invocation::new(self, script)
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
        // Clamped: `wait(Duration::MAX)` (wait for ever) must not overflow `Instant`.
        let deadline = Instant::now() + timeout.min(crate::units::MAX_DURATION);
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
struct Pending {
    script: Script,
    args: Vec<Value>,
    params: Vec<(String, Value)>,
    timeout: Option<Duration>,
    state: Mutex<State>,
    done: Condvar,
}

// One per invocation, and it ends as `Done`: boxing the result would only
// add an allocation.
#[allow(clippy::large_enum_variant)]
enum State {
    Queued,
    Running(Arc<Switch>),
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
    fn finish_abandoned(&self, reason: StopReason, deadline: Option<Instant>) {
        let status = match reason {
            StopReason::Stopped => Status::Stopped,
            StopReason::TimedOut => Status::TimedOut,
        };
        let ran = ran_for(deadline, self.timeout);
        self.complete(InvocationResult::ended(status, abandoned_message(reason), ran));
    }

    /// Stops it if running; ends it with `reason` if still queued.
    fn finish_early(&self, reason: StopReason) {
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
            State::Running(switch) => switch.stop(reason),
            State::Done(_) => {}
        }
    }

    /// Runs it on `lane` (called by a pool worker).
    async fn run(self: Arc<Self>, lane: Lane) {
        let rs = &lane.runspace;
        let generation = rs.next_generation();
        let switch = Arc::new(Switch::new(self.timeout.map(|t| Instant::now() + t)));
        {
            let mut state = self.lock();
            if !matches!(*state, State::Queued) {
                return; // stopped before it started
            }
            *state = State::Running(switch.clone());
        }
        lane.slot.hold(lane.id, Box::new(Held(self.clone())));
        let result = match rs.prepare(&self.script) {
            Ok(script) => {
                let (args, params) = (&self.args, &self.params);
                let owner = 0;
                rs.execute(&Execution {
                    script: &script,
                    args,
                    params,
                    generation,
                    owner,
                    lane: lane.id,
                    switch: &switch,
                    abort: None,
                    started: Instant::now(),
                    on_wait: None,
                })
                .await
            }
            Err(failed) => failed,
        };
        if lane.slot.release(lane.id).is_some() {
            self.complete(result);
        } // else the watchdog ended it, or re-queued it elsewhere
    }

    /// Ends it without running (the pool could not open a runspace, or closed).
    fn abandon(&self, status: Status, message: String) {
        let mut state = self.lock();
        if matches!(*state, State::Queued) {
            *state = State::Done(InvocationResult::ended(status, message, Duration::ZERO));
            self.done.notify_all();
        }
    }
}

/// An invocation as a pool task.
struct Invoke(Arc<Pending>);

impl Task for Invoke {
    fn run(self: Box<Self>, lane: Lane) -> LocalFuture {
        Box::pin(self.0.run(lane))
    }

    fn fail(self: Box<Self>, message: &str) {
        self.0.abandon(Status::Failed, message.to_string());
    }

    fn skip(self: Box<Self>) {
        self.0.abandon(Status::Stopped, "stopped: the pool was closed".into());
    }
}

/// A running invocation as the watchdog holds it.
struct Held(Arc<Pending>);

impl crate::pool::Held for Held {
    fn take_over(self: Box<Self>, reason: StopReason, deadline: Option<Instant>) -> Option<Box<dyn Task>> {
        self.0.finish_abandoned(reason, deadline);
        None
    }

    fn restart(self: Box<Self>) -> Option<Box<dyn Task>> {
        let mut state = self.0.lock();
        if !matches!(*state, State::Running(_)) {
            return None;
        }
        *state = State::Queued;
        drop(state);
        Some(Box::new(Invoke(self.0)))
    }

    fn close(self: Box<Self>) {
        self.0.finish_abandoned(StopReason::Stopped, None);
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}
