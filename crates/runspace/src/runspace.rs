//! One sandboxed Luau VM: PowerShell's runspace.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::chunk::ChunkMode;
use mlua::{Function, Lua, LuaOptions, MultiValue, StdLib, Table, Value as LuaValue};
use serde_json::Value;

use crate::control::{install_interrupt, ActiveGuard, Control, StopReason};
use crate::convert::{from_lua, to_lua};
use crate::error::{Error, Result};
use crate::host::{self, Capture, HostContext};
use crate::invocation::InvocationResult;
use crate::script::Script;
use crate::session::SessionState;
use crate::streams::Status;

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
    control: Arc<Control>,
    capture: Rc<RefCell<Capture>>,
    functions: HashMap<u64, Function>,
    memory_limit: Option<usize>,
    generation: u64,
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
        let lua = Lua::new_with(libraries(), LuaOptions::new()).map_err(vm)?;
        if let Some(limit) = session.memory_limit {
            lua.set_memory_limit(limit).map_err(vm)?;
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
            surroundings: session.surroundings.clone(),
        };
        host::install(&lua, &globals, &ctx).map_err(vm)?;

        for (name, value) in &session.variables {
            let v = to_lua(&lua, value).map_err(vm)?;
            seal(&v);
            globals.raw_set(name.as_str(), v).map_err(vm)?;
        }

        let loaded = lua.create_table().map_err(vm)?;
        for module in &session.modules {
            let value: LuaValue = lua
                .load(&module.bytecode[..])
                .set_name(format!("={}", module.name))
                .set_mode(ChunkMode::Binary)
                .eval()
                .map_err(|e| Error::Module { name: module.name.clone(), message: clean_message(&e) })?;
            seal(&value);
            globals.raw_set(module.name.as_str(), value.clone()).map_err(vm)?;
            loaded.raw_set(module.name.as_str(), value).map_err(vm)?;
        }
        globals.raw_set("require", session_require(&lua, loaded).map_err(vm)?).map_err(vm)?;

        lua.sandbox(true).map_err(vm)?;
        let proxy = lua.globals();
        let underscore = lua.create_string("_").map_err(vm)?;
        Ok(Runspace {
            underscore,
            lua,
            proxy,
            control,
            capture,
            functions: HashMap::new(),
            memory_limit: session.memory_limit,
            generation: 0,
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

    pub(crate) fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
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
        function.call(lua_args)
    }

    fn finish(
        &self,
        outcome: mlua::Result<MultiValue>,
        capture: Capture,
        stop: Option<StopReason>,
        elapsed: Duration,
    ) -> InvocationResult {
        let Capture { mut output, mut streams } = capture;
        let failure = match outcome {
            Ok(values) => values.iter().try_for_each(|v| {
                output.push(from_lua(v)?);
                Ok(())
            }),
            Err(e) => Err(e),
        };
        let (status, failure) = match failure {
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
                Some(limit) => format!("memory limit of {} exceeded", human_bytes(limit)),
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
                    format!("{at}: {cause}")
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

fn human_bytes(n: usize) -> String {
    const UNITS: [(&str, usize); 3] = [("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size && n.is_multiple_of(size) {
            return format!("{} {unit}", n / size);
        }
    }
    format!("{n} bytes")
}
