//! One sandboxed Luau VM: PowerShell's runspace.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::chunk::ChunkMode;
use mlua::thread::ThreadStatus;
use mlua::{Function, Lua, LuaOptions, MultiValue, StdLib, Table, Thread, Value as LuaValue};
use serde_json::Value;

use crate::control::{install_interrupt, ActiveGuard, Control, StopReason};
use crate::convert::{from_lua_within, to_lua};
use crate::error::{Error, Result};
use crate::host::{self, output_limit_message, value_size, Capture, HostContext};
use crate::invocation::InvocationResult;
use crate::script::Script;
use crate::session::SessionState;
use crate::stdlib;
use crate::streams::{Status, Streams};

/// The standard libraries a script gets: pure computation only. `io`, `os`
/// and `debug` are never loaded; files, processes and the network come
/// through capability-gated host functions instead.
fn libraries() -> StdLib {
    StdLib::STRING
        | StdLib::TABLE
        | StdLib::MATH
        | StdLib::UTF8
        | StdLib::COROUTINE
        | StdLib::BUFFER
        | StdLib::BIT
        | StdLib::VECTOR
}

/// Globals mlua or Luau install that would let a script load code or
/// reach another function's environment.
const REMOVED_GLOBALS: &[&str] = &["loadstring", "load", "dofile", "loadfile", "getfenv", "setfenv", "require"];

/// Why an item's top-level `coroutine.yield` fails it. Nothing would
/// resume the item, and returning the yielded values instead would make a
/// yield mean "return" today and something else once host calls that wait
/// suspend items themselves (items as Luau threads).
const TOP_LEVEL_YIELD: &str = "cannot yield from the top level of an item (yield inside a coroutine)";

/// A compiled-script cache larger than this is dropped and rebuilt: a
/// long-lived pool fed many distinct scripts must not grow without bound.
const MAX_CACHED_SCRIPTS: usize = 64;

/// One isolated script environment: a sandboxed Luau VM with the session's
/// variables, modules and host functions.
///
/// Every invocation gets a fresh global table (writes land in a proxy that
/// is cleared afterwards), libraries and session variables are read-only,
/// and nothing reaches files, processes or the network unless the session
/// grants it. A runspace belongs to the thread that opened it.
///
/// ```
/// use runspace::{Runspace, Script, SessionState, Status};
/// use serde_json::json;
///
/// let mut rs = Runspace::open(&SessionState::new()).unwrap();
/// let script = Script::new("counter = (counter or 0) + 1; return counter, _ * 2").unwrap();
/// let first = rs.invoke(&script, &[json!(21)], &[]);
/// assert_eq!(first.status(), Status::Completed);
/// assert_eq!(first.output(), &[json!(1), json!(42)]);
/// // Globals do not leak into the next invocation.
/// assert_eq!(rs.invoke(&script, &[json!(1)], &[]).output()[0], json!(1));
/// ```
pub struct Runspace {
    lua: Lua,
    /// The sandbox's global proxy: where a script's global writes land.
    proxy: Table,
    /// The Luau thread (coroutine) every item runs in, reset to the item's
    /// function each time. Running in a thread, not a call from C on the
    /// main thread, is what makes an item Luau code like any other:
    /// `coroutine.isyieldable()` is true and `pcall` recurses as deep as
    /// Luau allows (~10,000 levels) instead of nesting on the C stack (~200).
    thread: Thread,
    control: Arc<Control>,
    capture: Rc<RefCell<Capture>>,
    functions: HashMap<u64, Function>,
    memory_limit: Option<usize>,
    max_output: usize,
    healthy: bool,
    /// The interned key `_`, kept to spare a string lookup per item.
    underscore: mlua::LuaString,
}

impl Runspace {
    /// Opens a runspace: creates the VM, installs host functions, session
    /// variables and modules, then seals it.
    pub fn open(session: &SessionState) -> Result<Runspace> {
        Runspace::open_with(session, Arc::new(Control::default()))
    }

    /// Opens a runspace that answers to an existing stop switch: a pool
    /// worker keeps one switch for life, across runspace replacements.
    pub(crate) fn open_with(session: &SessionState, control: Arc<Control>) -> Result<Runspace> {
        let vm = |e: mlua::Error| Error::Vm(e.to_string());
        stdlib::set_flags();
        let lua = Lua::new_with(libraries(), LuaOptions::new()).map_err(vm)?;
        stdlib::install(&lua).map_err(vm)?;
        if let Some(limit) = session.memory_limit {
            lua.set_memory_limit(limit).map_err(vm)?;
            control.set_memory_limit(limit);
        }
        install_interrupt(&lua);
        let globals = lua.globals();
        for name in REMOVED_GLOBALS {
            globals.raw_set(*name, LuaValue::Nil).map_err(vm)?;
        }
        let capture = Rc::new(RefCell::new(Capture::default()));
        let ctx = HostContext {
            capture: capture.clone(),
            control: control.clone(),
            grants: session.host_grants(),
            max_output: session.max_output_bytes(),
            surroundings: session.surroundings.clone(),
        };
        host::install(&lua, &globals, &ctx).map_err(vm)?;

        for (name, value) in &session.variables {
            let v = to_lua(&lua, value).map_err(vm)?;
            seal(&v);
            globals.raw_set(name.as_str(), v).map_err(vm)?;
        }

        let loaded = lua.create_table().map_err(vm)?;
        if !session.modules.is_empty() {
            load_modules(&lua, &globals, &loaded, session, &control)?;
        }
        globals.raw_set("require", session_require(&lua, loaded).map_err(vm)?).map_err(vm)?;

        lua.sandbox(true).map_err(vm)?;
        let proxy = lua.globals();
        make_g_the_proxy(&globals, &proxy).map_err(vm)?;
        let underscore = lua.create_string("_").map_err(vm)?;
        // Any function will do: every item resets the thread to its own.
        let thread = lua.create_thread(globals.raw_get("require").map_err(vm)?).map_err(vm)?;
        Ok(Runspace {
            underscore,
            lua,
            proxy,
            thread,
            control,
            capture,
            functions: HashMap::new(),
            memory_limit: session.memory_limit,
            max_output: session.max_output_bytes(),
            healthy: true,
        })
    }

    /// Runs `script` to the end (or to its session's timeout) with positional
    /// `args` (the first is also `_`) and named `params` (plain globals).
    pub fn invoke(&mut self, script: &Script, args: &[Value], params: &[(String, Value)]) -> InvocationResult {
        let generation = self.next_generation();
        match self.prepare(script) {
            Ok(function) => self.execute(&function, args, params, generation, 0, None, None),
            Err(failed) => failed,
        }
    }

    /// A handle that stops whatever this runspace is running, from any thread.
    pub fn stopper(&self) -> Stopper {
        Stopper { control: self.control.clone() }
    }

    /// Bytes the VM holds now.
    pub fn memory_used(&self) -> usize {
        self.lua.used_memory()
    }

    /// False once something left the VM in a state we cannot vouch for;
    /// the pool then replaces the runspace.
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// The generation of the next invocation: handed out by the stop
    /// switch, which outlives the runspace when a pool replaces it.
    pub(crate) fn next_generation(&mut self) -> u64 {
        self.control.next_generation()
    }

    /// Loads `script` into this VM (once; later calls hit a cache).
    // The error is the finished (failed) result itself, built once per
    // script load at most: boxing it would only add an allocation.
    #[allow(clippy::result_large_err)]
    pub(crate) fn prepare(&mut self, script: &Script) -> Result<Function, InvocationResult> {
        self.function(script)
            .map_err(|e| InvocationResult::failed(format!("cannot load script: {}", clean_message(&e)), Duration::ZERO))
    }

    /// Runs one invocation of a prepared script as generation `generation`,
    /// on behalf of `owner`; stops at once if `abort` is set.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn execute(
        &mut self,
        function: &Function,
        args: &[Value],
        params: &[(String, Value)],
        generation: u64,
        owner: u64,
        deadline: Option<Instant>,
        abort: Option<&AtomicBool>,
    ) -> InvocationResult {
        let started = Instant::now();
        self.control.begin(generation, owner, deadline);
        // Whoever sets `abort` then looks for running items (SeqCst on both
        // sides): either it sees this item running, or this sees the flag.
        if abort.is_some_and(|a| a.load(Ordering::SeqCst)) {
            self.control.request_stop(generation, StopReason::Stopped);
        }
        let outcome = {
            let _active = ActiveGuard::new(&self.control);
            self.call(function, args, params)
        };
        let stop = self.control.stop_reason();
        self.control.end();
        let capture = std::mem::take(&mut *self.capture.borrow_mut());
        let result = self.finish(outcome, capture, stop, started.elapsed());
        self.reset(result.status() != Status::Completed && result.status() != Status::CompletedWithErrors);
        result
    }

    fn call(&self, function: &Function, args: &[Value], params: &[(String, Value)]) -> mlua::Result<MultiValue> {
        let mut lua_args = MultiValue::with_capacity(args.len());
        for arg in args {
            lua_args.push_back(to_lua(&self.lua, arg)?);
        }
        if let Some(first) = lua_args.front() {
            self.proxy.raw_set(&self.underscore, first.clone())?;
        }
        for (name, value) in params {
            self.proxy.raw_set(name.as_str(), to_lua(&self.lua, value)?)?;
        }
        self.thread.reset(function.clone())?;
        let outcome = self.thread.resume(lua_args);
        match self.thread.status() {
            ThreadStatus::Finished => outcome,
            status => {
                // Errored or yielded: the thread's stack still holds what
                // the item was using. Resetting it now lets that be
                // collected before the next item, not after it.
                self.thread.reset(function.clone())?;
                match (status, outcome) {
                    (ThreadStatus::Resumable, Ok(_)) => Err(mlua::Error::runtime(TOP_LEVEL_YIELD)),
                    (_, outcome) => outcome,
                }
            }
        }
    }

    fn finish(
        &self,
        outcome: mlua::Result<MultiValue>,
        capture: Capture,
        stop: Option<StopReason>,
        elapsed: Duration,
    ) -> InvocationResult {
        let mut capture = capture;
        let failure = match outcome {
            Ok(values) => values.iter().try_for_each(|v| {
                let value = from_lua_within(v, self.max_output, || output_limit_message(self.max_output))?;
                capture.charge(value_size(&value), self.max_output)?;
                capture.output.push(value);
                Ok(())
            }),
            Err(e) => Err(e),
        };
        let Capture { mut output, mut streams, exceeded, .. } = capture;
        if exceeded {
            // What ran away is dropped rather than handed on: the host's
            // memory stays bounded by the items running, not the records
            // waiting to be printed.
            output = Vec::new();
            streams = Streams::default();
        }
        let (status, failure) = match failure {
            // However it ended (a `pcall` may have caught the error), an
            // invocation past the output limit failed.
            _ if exceeded && stop.is_none() => (Status::Failed, Some(output_limit_message(self.max_output))),
            Ok(()) if streams.error.is_empty() => (Status::Completed, None),
            Ok(()) => (Status::CompletedWithErrors, None),
            Err(e) => match stop {
                Some(StopReason::TimedOut) => (Status::TimedOut, Some("timed out".to_string())),
                Some(StopReason::Stopped) => (Status::Stopped, Some("stopped".to_string())),
                None => (Status::Failed, Some(self.describe(&e))),
            },
        };
        if let Some(message) = &failure {
            streams.error.push(message.clone());
        }
        InvocationResult::new(output, streams, status, failure, elapsed)
    }

    fn describe(&self, error: &mlua::Error) -> String {
        if is_memory_error(error) {
            match self.memory_limit {
                Some(limit) => format!("memory limit of {} exceeded", crate::units::format_size(limit as u64)),
                None => "out of memory".to_string(),
            }
        } else {
            clean_message(error)
        }
    }

    /// Clears what the invocation left behind. After an abnormal end the
    /// garbage is collected at once, so a memory bomb's leftovers do not
    /// count against the next item's limit.
    fn reset(&mut self, abnormal: bool) {
        if self.proxy.clear().is_err() {
            self.healthy = false;
        }
        if abnormal && self.lua.gc_collect().is_err() {
            self.healthy = false;
        }
        self.control.rearm_gc();
    }

    fn function(&mut self, script: &Script) -> mlua::Result<Function> {
        if let Some(f) = self.functions.get(&script.id()) {
            return Ok(f.clone());
        }
        if self.functions.len() >= MAX_CACHED_SCRIPTS {
            self.functions.clear();
        }
        let f = self
            .lua
            .load(script.bytecode())
            .set_name(format!("={}", script.name()))
            .set_mode(ChunkMode::Binary)
            .into_function()?;
        self.functions.insert(script.id(), f.clone());
        Ok(f)
    }
}

/// Stops the invocation a [`Runspace`] is running now, from another thread.
///
/// ```
/// use runspace::{Runspace, Script, SessionState, Status};
/// let mut rs = Runspace::open(&SessionState::new()).unwrap();
/// let stopper = rs.stopper();
/// let t = std::thread::spawn(move || {
///     std::thread::sleep(std::time::Duration::from_millis(50));
///     stopper.stop();
/// });
/// let r = rs.invoke(&Script::new("while true do end").unwrap(), &[], &[]);
/// assert_eq!(r.status(), Status::Stopped);
/// t.join().unwrap();
/// ```
#[derive(Clone)]
pub struct Stopper {
    control: Arc<Control>,
}

impl Stopper {
    /// Stops the running invocation, if any; the next one is unaffected.
    pub fn stop(&self) {
        let (generation, _) = self.control.running();
        self.control.request_stop(generation, StopReason::Stopped);
    }
}

/// How long loading a session's modules may take when the session has no
/// default timeout: a module that builds its tables for longer than this
/// is almost surely stuck.
pub const MODULE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the session's modules, in order, under `control` with a time limit
/// (the session's timeout, else [`MODULE_TIMEOUT`]): an endless module
/// fails the open with an error naming it instead of hanging it.
fn load_modules(
    lua: &Lua,
    globals: &Table,
    loaded: &Table,
    session: &SessionState,
    control: &Arc<Control>,
) -> Result<()> {
    let limit = session.timeout.unwrap_or(MODULE_TIMEOUT);
    let generation = control.next_generation();
    control.begin(generation, 0, Some(Instant::now() + limit));
    // Nothing else watches a runspace being opened, so a timer thread
    // pulls the stop switch; it leaves as soon as loading is over.
    let (done, finished) = crossbeam_channel::bounded::<()>(0);
    let timer = control.clone();
    let alarm = std::thread::Builder::new().name("runspace-module-timer".into()).spawn(move || {
        if finished.recv_timeout(limit).is_err_and(|e| e.is_timeout()) {
            timer.request_stop(generation, StopReason::TimedOut);
        }
    });
    let result = {
        let _active = ActiveGuard::new(control);
        session.modules.iter().try_for_each(|module| {
            let value: LuaValue = lua
                .load(&module.bytecode[..])
                .set_name(format!("={}", module.name))
                .set_mode(ChunkMode::Binary)
                .eval()
                .map_err(|e| {
                    let message = match control.stop_reason() {
                        Some(StopReason::TimedOut) => {
                            format!("did not finish loading within {}", humantime::format_duration(limit))
                        }
                        Some(StopReason::Stopped) => "stopped while loading".to_string(),
                        None => clean_message(&e),
                    };
                    Error::Module { name: module.name.clone(), message }
                })?;
            seal(&value);
            let vm = |e: mlua::Error| Error::Vm(e.to_string());
            globals.raw_set(module.name.as_str(), value.clone()).map_err(vm)?;
            loaded.raw_set(module.name.as_str(), value).map_err(vm)
        })
    };
    drop(done);
    if let Ok(alarm) = alarm {
        let _ = alarm.join();
    }
    control.end();
    result
}

/// Makes `_G` the item's own writable global table, as in plain Lua: the
/// sandbox's proxy, which is cleared after every item. Reads fall through
/// to the libraries and session globals; writes (`_G.x = 1`, `_G[i] = v`)
/// land in the proxy. The proxy's metatable is protected, so no item can
/// unhook the libraries for the items after it.
fn make_g_the_proxy(globals: &Table, proxy: &Table) -> mlua::Result<()> {
    globals.set_readonly(false);
    let set = globals.raw_set("_G", proxy);
    globals.set_readonly(true);
    set?;
    if let Some(meta) = proxy.metatable() {
        // Luau made it read-only, which keeps its fields but not the
        // proxy from being given another metatable.
        meta.set_readonly(false);
        let set = meta.raw_set("__metatable", false);
        meta.set_readonly(true);
        set?;
    }
    Ok(())
}

/// Makes a session value read-only, all the way down, so scripts share it safely.
fn seal(value: &LuaValue) {
    if let LuaValue::Table(t) = value {
        if t.is_readonly() {
            return;
        }
        t.set_readonly(true);
        let _ = t.for_each::<LuaValue, LuaValue>(|k, v| {
            seal(&k);
            seal(&v);
            Ok(())
        });
    }
}

/// `require(name)` that sees only the session's modules.
fn session_require(lua: &Lua, loaded: Table) -> mlua::Result<Function> {
    lua.create_function(move |_, name: String| {
        let value: LuaValue = loaded.raw_get(name.as_str())?;
        if value.is_nil() {
            return Err(mlua::Error::runtime(format!(
                "module '{name}' is not part of this session (add it with --module {name}.luau)"
            )));
        }
        Ok(value)
    })
}

fn is_memory_error(e: &mlua::Error) -> bool {
    match e {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } => is_memory_error(cause),
        mlua::Error::WithContext { cause, .. } => is_memory_error(cause),
        _ => false,
    }
}

/// The message of a script error without mlua's stack traceback.
pub(crate) fn clean_message(e: &mlua::Error) -> String {
    let text = match e {
        mlua::Error::CallbackError { cause, traceback } => {
            let cause = clean_message(cause);
            // Name the script line that made the failing host call.
            match traceback
                .lines()
                .map(str::trim)
                .find(|l| !l.starts_with("[C]") && l.contains(':') && !l.starts_with("stack traceback"))
            {
                Some(at) => {
                    let at = at.split(": in ").next().unwrap_or(at).trim_end_matches(':');
                    // A cause raised with `error(...)` already names the line.
                    match cause.strip_prefix(at).is_some_and(|rest| rest.starts_with(": ")) {
                        true => cause,
                        false => format!("{at}: {cause}"),
                    }
                }
                None => cause,
            }
        }
        mlua::Error::RuntimeError(m) | mlua::Error::MemoryError(m) => m.clone(),
        other => other.to_string(),
    };
    match text.find("\nstack traceback:") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool worker keeps its stop switch when it replaces its runspace. A
    /// stop for the old runspace's last invocation that arrives late must
    /// neither hit the new runspace's invocations nor shadow stops meant
    /// for them.
    #[test]
    fn a_replacement_runspace_continues_the_generations() {
        let control = Arc::new(Control::default());
        let session = SessionState::new();
        let quick = Script::new("return 1").unwrap();
        let mut old = Runspace::open_with(&session, control.clone()).unwrap();
        for _ in 0..3 {
            assert_eq!(old.invoke(&quick, &[], &[]).status(), Status::Completed);
        }
        drop(old);
        control.request_stop(3, StopReason::Stopped);

        let mut new = Runspace::open_with(&session, control.clone()).unwrap();
        for _ in 0..3 {
            assert_eq!(new.invoke(&quick, &[], &[]).status(), Status::Completed);
        }
        let stopper = new.stopper();
        let stopping = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            stopper.stop();
        });
        let endless = Script::new("while true do end").unwrap();
        assert_eq!(new.invoke(&endless, &[], &[]).status(), Status::Stopped);
        stopping.join().unwrap();
    }
}
