//! One sandboxed Luau VM: PowerShell's runspace.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_core::Stream;
use mlua::chunk::ChunkMode;
use mlua::thread::AsyncThread;
use mlua::{Function, Lua, LuaOptions, MultiValue, StdLib, Table, Value as LuaValue};
use serde_json::Value;

use crate::control::{install_interrupt, ActiveGuard, Control, StopReason, Switch};
use crate::convert::{scalar, to_lua, Scalar};
use crate::error::{Error, Result};
use crate::host::{self, output_limit_message, Capture, HostContext};
use crate::invocation_result::{InvocationResult, Output};
use crate::item_thread::{Bound, ItemContext, Names, Resumed, Returned};
use crate::remedy::{Remedies, Remedy};
use crate::script::Script;
use crate::session::SessionState;
use crate::stdlib;
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

/// Why an item's top-level `coroutine.yield` fails it. Nothing would
/// resume the item, and returning the yielded values instead would make a
/// yield mean "return" today and something else once host calls that wait
/// suspend items themselves (items as Luau threads).
const TOP_LEVEL_YIELD: &str = "cannot yield from the top level of an item (yield inside a coroutine)";

/// A compiled-script cache larger than this is dropped and rebuilt: a
/// long-lived pool fed many distinct scripts must not grow without bound.
const MAX_CACHED_SCRIPTS: usize = 64;

/// The longest text argument [`ItemContext::begin`] pushes itself.
const RAW_TEXT_MAX: usize = 1 << 20;

/// Spare item contexts (a Luau thread and a global table) kept for the next
/// items; more than this are let go when a burst of concurrent items ends.
const MAX_SPARE_CONTEXTS: usize = 256;

/// One isolated script environment: a sandboxed Luau VM with the session's
/// variables, modules and host functions.
///
/// Every item runs in a Luau thread of its own with a fresh global table
/// (cleared when it ends); libraries and session variables are read-only,
/// and nothing reaches files, processes or the network unless the session
/// grants it. Items that wait (`sleep`, `http`, `net`, `exec`) yield their
/// thread, so one runspace runs many of them at once. A runspace belongs to
/// the thread that opened it.
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
    /// The metatable of every item's global table: reads fall through to
    /// the shared, read-only globals; the metatable itself is protected.
    env_meta: Table,
    /// Threads and global tables of ended items, ready for the next ones.
    /// Boxed: an item's context moves from set-up to run to wrap-up, and a
    /// pointer moves for free where the struct took a `memcpy` each time;
    /// kept boxed here so that taking one out allocates nothing.
    #[allow(clippy::vec_box)]
    spare: RefCell<Vec<Box<ItemContext>>>,
    /// The script whose last item waited in a host call (0 for none): see
    /// [`Runspace::run`].
    waiting_script: Cell<u64>,
    /// Any function: what a spare thread is reset to, so that it lets go of
    /// what its last item held.
    placeholder: Function,
    control: Arc<Control>,
    /// The capture and stop switch of the item the VM runs now.
    polled: host::Polled,
    functions: RefCell<HashMap<u64, Function>>,
    memory_limit: Option<usize>,
    max_output: usize,
    healthy: Cell<bool>,
    /// An item stopped in a host call left a full collection owed.
    collection_owed: Cell<bool>,
    /// When the last full collection for ended items ran.
    last_collection: Cell<Option<Instant>>,
    /// The keys `_` and `_G` every item's table is given.
    names: Names,
    /// Drives [`Runspace::invoke`] outside a pool; made on first use.
    runtime: OnceCell<tokio::runtime::Runtime>,
}

/// An item's positional arguments, as Luau values.
enum Args {
    None,
    One(LuaValue),
    Many(MultiValue),
}

/// A script loaded into a runspace.
pub(crate) struct Prepared {
    id: u64,
    function: Function,
}

/// One item to run: what [`Runspace::execute`] needs.
pub(crate) struct Execution<'a> {
    /// The script, from [`Runspace::prepare`].
    pub(crate) script: &'a Prepared,
    /// Positional arguments (the first is also `_`).
    pub(crate) args: &'a [Value],
    /// Named parameters: plain globals.
    pub(crate) params: &'a [(String, Value)],
    /// The item's number under the runspace's switchboard.
    pub(crate) generation: u64,
    /// Who the item belongs to (a parallel run's id), 0 for none.
    pub(crate) owner: u64,
    /// The pool lane it runs in (0 outside a pool).
    pub(crate) lane: u64,
    /// The item's own stop switch, with its deadline.
    pub(crate) switch: &'a Arc<Switch>,
    /// A run-wide stop that the item obeys from its start.
    pub(crate) abort: Option<&'a AtomicBool>,
    /// When the item started: its duration counts from here. A lane
    /// running items one after another passes the end of the last one,
    /// which spares a look at the clock per item.
    pub(crate) started: Instant,
    /// Called the first time the item waits in a host call (a parallel
    /// run hands the rest of the item's chunk to other lanes then).
    pub(crate) on_wait: Option<&'a dyn Fn()>,
}

impl Runspace {
    /// Opens a runspace: creates the VM, installs host functions, session
    /// variables and modules, then seals it.
    pub fn open(session: &SessionState) -> Result<Runspace> {
        Runspace::open_with(session, Arc::new(Control::default()))
    }

    /// Opens a runspace that answers to an existing switchboard: a pool
    /// worker keeps one for life, across runspace replacements.
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
        let polled = host::Polled::default();
        let ctx = HostContext {
            polled: polled.clone(),
            grants: session.host_grants(),
            remedies: session.remedies.clone(),
            max_output: session.max_output_bytes(),
            surroundings: session.surroundings.clone(),
            #[cfg(feature = "exec")]
            live: session.live.clone(),
            timer: Default::default(),
        };
        host::install(&lua, &globals, &ctx).map_err(vm)?;

        for (name, value) in &session.variables {
            let v = to_lua(&lua, value).map_err(vm)?;
            seal(&v);
            globals.raw_set(name.as_str(), v).map_err(vm)?;
        }

        let loaded = lua.create_table().map_err(vm)?;
        if !session.modules.is_empty() {
            load_modules(&lua, &globals, &loaded, session, &control, &polled)?;
        }
        let placeholder = session_require(&lua, loaded, session.remedies.clone()).map_err(vm)?;
        globals.raw_set("require", placeholder.clone()).map_err(vm)?;
        // Every item's table has its own `_G`. Were the shared one there,
        // Luau would resolve a script's `_G` once, at load, to it.
        globals.raw_set("_G", LuaValue::Nil).map_err(vm)?;

        lua.sandbox(true).map_err(vm)?;
        let env_meta = item_metatable(&lua, &globals).map_err(vm)?;
        let names = Names::new(&lua, placeholder.clone()).map_err(vm)?;
        Ok(Runspace {
            names,
            lua,
            env_meta,
            spare: RefCell::new(Vec::new()),
            waiting_script: Cell::new(0),
            placeholder,
            control,
            polled,
            functions: RefCell::new(HashMap::new()),
            memory_limit: session.memory_limit,
            max_output: session.max_output_bytes(),
            healthy: Cell::new(true),
            collection_owed: Cell::new(false),
            last_collection: Cell::new(None),
            runtime: OnceCell::new(),
        })
    }

    /// Runs `script` to the end with positional `args` (the first is also
    /// `_`) and named `params` (plain globals).
    ///
    /// Outside a pool nothing watches the clock, so a script runs until it
    /// ends or a [`Stopper`] stops it. Must not be called from inside an
    /// async runtime (use a [`RunspacePool`](crate::RunspacePool) there).
    pub fn invoke(&mut self, script: &Script, args: &[Value], params: &[(String, Value)]) -> InvocationResult {
        let generation = self.next_generation();
        let prepared = match self.prepare(script) {
            Ok(prepared) => prepared,
            Err(failed) => return failed,
        };
        let runtime = match self.runtime.get() {
            Some(rt) => rt,
            None => match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => self.runtime.get_or_init(|| rt),
                Err(e) => return InvocationResult::failed(format!("cannot start an event loop: {e}"), Duration::ZERO),
            },
        };
        let switch = Arc::new(Switch::new(None));
        let execution = Execution {
            script: &prepared,
            args,
            params,
            generation,
            owner: 0,
            lane: 0,
            switch: &switch,
            abort: None,
            started: Instant::now(),
            on_wait: None,
        };
        let result = runtime.block_on(self.execute(&execution));
        // One item at a time here: nothing to wait for before collecting.
        self.collect_if_owed(Duration::ZERO);
        // The request's connection task, woken by the drop, closes the
        // socket once the loop runs again: let it, before returning.
        runtime.block_on(tokio::task::yield_now());
        result
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
        self.healthy.get()
    }

    /// The generation of the next item: handed out by the switchboard,
    /// which outlives the runspace when a pool replaces it.
    pub(crate) fn next_generation(&self) -> u64 {
        self.control.next_generation()
    }

    /// Loads `script` into this VM (once; later calls hit a cache).
    // The error is the finished (failed) result itself, built once per
    // script load at most: boxing it would only add an allocation.
    #[allow(clippy::result_large_err)]
    pub(crate) fn prepare(&self, script: &Script) -> Result<Prepared, InvocationResult> {
        self.function(script)
            .map(|function| Prepared { id: script.id(), function })
            .map_err(|e| InvocationResult::failed(format!("cannot load script: {}", clean_message(&e)), Duration::ZERO))
    }

    /// Runs one item to its end as a Luau thread of its own. The future is
    /// pending while the item waits in a host call; other items of the
    /// runspace run meanwhile.
    pub(crate) async fn execute(&self, e: &Execution<'_>) -> InvocationResult {
        // Only what the item needs while it waits lives across the await:
        // every waiting item holds this future's state (10,000 of them in a
        // VM), so set-up and wrap-up are plain functions.
        let mut capture = Capture::default();
        let (context, args) = match self.admit(e) {
            Ok(admitted) => admitted,
            Err(err) => return self.conclude(e, None, Err(err), capture),
        };
        let outcome = self.run(&context, args, e, &mut capture).await;
        self.conclude(e, Some(context), outcome, capture)
    }

    /// Registers the item with the switchboard and sets its thread up.
    fn admit(&self, e: &Execution<'_>) -> mlua::Result<(Box<ItemContext>, Args)> {
        self.control.admit(e.generation, e.owner, e.switch.clone());
        // Whoever sets `abort` then stops the items in flight (SeqCst on
        // both sides): either it sees this item, or this sees the flag.
        if e.abort.is_some_and(|a| a.load(Ordering::SeqCst)) {
            e.switch.stop(StopReason::Stopped);
        }
        self.start(e)
    }

    /// Ends the item: its result, and its context kept for the next one.
    fn conclude(
        &self,
        e: &Execution<'_>,
        context: Option<Box<ItemContext>>,
        outcome: mlua::Result<Returned>,
        capture: Capture,
    ) -> InvocationResult {
        self.control.dismiss(e.generation);
        let mut result = self.finish(outcome, capture, e.switch.reason(), Duration::ZERO);
        let abnormal = !matches!(result.status(), Status::Completed | Status::CompletedWithErrors);
        self.release(context, abnormal, e.switch.reason().is_some());
        // Read after the wrap-up (its output's conversion, a collection
        // after an abnormal end): the next item on the lane starts now.
        result.set_duration(e.started.elapsed());
        result
    }

    /// Runs the item's thread to its end.
    ///
    /// Most items never wait, so the thread is first resumed straight
    /// away; only one that yields in a host call that waits goes on under
    /// mlua's async polling (a future per item cost a trivial item about a
    /// tenth of its time). The host call's future was then polled once
    /// without a waker; the next poll, under the event loop's waker, is the
    /// one that registers it. That first poll is wasted work for items
    /// that do wait, so once an item of a script has waited, the next items
    /// of that script start under the async polling, until one does not wait.
    async fn run(
        &self,
        context: &ItemContext,
        args: Args,
        e: &Execution<'_>,
        capture: &mut Capture,
    ) -> mlua::Result<Returned> {
        let thread = &context.thread;
        if self.waiting_script.get() == e.script.id {
            let waiting = match args {
                Args::None => thread.clone().into_async::<MultiValue>(()),
                Args::One(value) => thread.clone().into_async::<MultiValue>(value),
                Args::Many(values) => thread.clone().into_async::<MultiValue>(values),
            }?;
            let (outcome, waited) = self.poll(context, waiting, e, capture).await;
            if !waited {
                self.waiting_script.set(0);
            }
            return outcome.map(Returned::Values);
        }
        let resumed = self.as_item(e, context, capture, || {
            let values = match args {
                // SAFETY: `start` left the thread fresh with the closure and
                // its arguments on its stack, and this is the runspace's thread.
                Args::None => return unsafe { context.resume(&self.lua) },
                Args::One(value) => thread.resume::<MultiValue>(value),
                Args::Many(values) => thread.resume::<MultiValue>(values),
            };
            values.map(|v| Resumed::from_values(v, context.yielded()))
        })?;
        match resumed {
            Resumed::Finished(returned) => Ok(returned),
            Resumed::Yielded { pending: false } => Err(mlua::Error::runtime(TOP_LEVEL_YIELD)),
            Resumed::Yielded { pending: true } => {
                self.waiting_script.set(e.script.id);
                let waiting = thread.clone().into_async::<MultiValue>(())?;
                self.poll(context, waiting, e, capture).await.0.map(Returned::Values)
            }
        }
    }

    /// Polls the item's thread to its end under the event loop; also says
    /// whether it ever waited.
    async fn poll(
        &self,
        context: &ItemContext,
        mut thread: AsyncThread<MultiValue>,
        e: &Execution<'_>,
        capture: &mut Capture,
    ) -> (mlua::Result<MultiValue>, bool) {
        let mut waited = false;
        let outcome = std::future::poll_fn(|cx| {
            let polled = self.as_item(e, context, capture, || Pin::new(&mut thread).poll_next(cx));
            match polled {
                Poll::Pending => {
                    if !waited {
                        waited = true;
                        if let Some(on_wait) = e.on_wait {
                            on_wait();
                        }
                    }
                    Poll::Pending
                }
                Poll::Ready(None) => Poll::Ready(Err(mlua::Error::runtime(TOP_LEVEL_YIELD))),
                Poll::Ready(Some(_)) if context.yielded() => Poll::Ready(Err(mlua::Error::runtime(TOP_LEVEL_YIELD))),
                Poll::Ready(Some(outcome)) => Poll::Ready(outcome),
            }
        })
        .await;
        (outcome, waited)
    }

    /// Takes a spare context (or makes one) and sets it up for `e`: the
    /// thread holds the script's closure, bound to the item's globals.
    fn start(&self, e: &Execution<'_>) -> mlua::Result<(Box<ItemContext>, Args)> {
        let spare = self.spare.borrow_mut().pop();
        let mut context = match spare {
            Some(context) => context,
            None => self.new_context()?,
        };
        self.bind(&mut context, e.script)?;
        let unprotected = self.memory_limit.is_none();
        let raw = match e.args {
            [one] if unprotected => self.raw_arg(one),
            _ => None,
        };
        match &context.bound {
            Some(bound) if unprotected => {
                if !context.fresh() {
                    // `release` resets every thread it keeps: a safety net.
                    context.reset(self.placeholder.clone())?;
                }
                // SAFETY: the thread is fresh, the slot is `bind`'s
                // closure, the VM has no memory limit, and `raw_arg` keeps
                // text short.
                unsafe { context.begin(bound.key.id(), raw.as_ref(), &self.names) };
            }
            // Under a memory limit every step goes through mlua, each one
            // protected: an allocation can fail there (a table an item
            // shrank has to grow back, say), and the error must come back
            // as a value.
            Some(bound) => {
                context.reset(bound.closure.clone())?;
                context.env.raw_set(&self.names.g, &context.env)?;
            }
            None => return Err(mlua::Error::runtime("the item's closure is missing")),
        }
        let env = &context.env;
        let args = match e.args {
            [] => Args::None,
            [_] if raw.is_some() => Args::None,
            [one] => Args::One(to_lua(&self.lua, one)?),
            many => Args::Many(many.iter().map(|arg| to_lua(&self.lua, arg)).collect::<mlua::Result<_>>()?),
        };
        let first = match &args {
            Args::None => None,
            Args::One(value) => Some(value),
            Args::Many(values) => values.front(),
        };
        if let Some(first) = first {
            env.raw_set(&self.names.underscore, first)?;
        }
        for (name, value) in e.params {
            env.raw_set(name.as_str(), to_lua(&self.lua, value)?)?;
        }
        Ok((context, args))
    }

    /// `arg` as a scalar [`ItemContext::begin`] may push itself: text only
    /// when short (Luau raises past 1 GiB; long text gains nothing here).
    fn raw_arg<'v>(&self, arg: &'v Value) -> Option<Scalar<'v>> {
        match scalar(arg)? {
            Scalar::Text(text) if text.len() > RAW_TEXT_MAX => None,
            raw => Some(raw),
        }
    }

    /// Makes sure the context's closure is `script`'s, bound to its
    /// globals: made once per script and context.
    fn bind(&self, context: &mut ItemContext, script: &Prepared) -> mlua::Result<()> {
        if context.bound.as_ref().is_some_and(|bound| bound.script == script.id) {
            return Ok(());
        }
        // A closure of the script's prototype whose globals are the
        // item's table (`Thread::sandbox` would not re-bind an
        // already-loaded function). Luau resolves a chunk's imports
        // (`string`, `math`...) once, at load, from the shared globals,
        // which is right for them; the shared globals have no `_G` (see
        // `open_with`), so `_G` is looked up when read, in the item's table.
        let closure = script.function.deep_clone()?;
        closure.set_environment(context.env.clone())?;
        let key = self.lua.create_registry_value(&closure)?;
        context.bound = Some(Bound { script: script.id, closure, key });
        Ok(())
    }

    fn new_context(&self) -> mlua::Result<Box<ItemContext>> {
        // Room for `_G` and `_` (see `ItemContext::begin`).
        let env = self.lua.create_table_with_capacity(0, 2)?;
        env.set_metatable(Some(self.env_meta.clone()))?;
        // "safeenv" lets Luau call builtins (math.floor...) directly, as
        // luaL_sandboxthread does for the table it makes.
        env.set_safeenv(true);
        let env_key = self.lua.create_registry_value(&env)?;
        let thread = self.lua.create_thread(self.placeholder.clone())?;
        Ok(Box::new(ItemContext::new(thread, env, env_key)))
    }

    /// Runs `f` (a resume of an item's thread) as the item: its switch is
    /// the one the interrupt checks, its capture the one host functions
    /// record into.
    fn as_item<R>(&self, e: &Execution<'_>, context: &ItemContext, capture: &mut Capture, f: impl FnOnce() -> R) -> R {
        let deadline = e.switch.deadline();
        if deadline.is_some_and(|d| d <= Instant::now()) {
            // It waited for its turn past its deadline.
            e.switch.stop(StopReason::TimedOut);
        }
        self.control.begin(e.generation, e.owner, e.lane, deadline);
        self.polled.enter(capture, e.switch, context.state as usize);
        let result = {
            let _active = ActiveGuard::new(&self.control, e.switch);
            f()
        };
        self.polled.leave(capture);
        self.control.end();
        result
    }

    fn finish(
        &self,
        outcome: mlua::Result<Returned>,
        capture: Capture,
        stop: Option<StopReason>,
        elapsed: Duration,
    ) -> InvocationResult {
        let mut capture = capture;
        let failure = match outcome {
            Ok(Returned::One(value)) => capture.emit_json(value, self.max_output),
            Ok(Returned::Values(values)) => values.iter().try_for_each(|v| capture.emit(v, self.max_output)),
            Err(e) => Err(e),
        };
        let exceeded = capture.exceeded;
        let (mut output, mut streams) = capture.take();
        if exceeded {
            // What ran away is dropped rather than handed on: the host's
            // memory stays bounded by the items running, not the records
            // waiting to be printed.
            output = Output::default();
            streams = None;
        }
        let (status, failure) = match failure {
            // However it ended (a `pcall` may have caught the error), an
            // invocation past the output limit failed.
            _ if exceeded && stop.is_none() => (Status::Failed, Some(output_limit_message(self.max_output))),
            Ok(()) if streams.as_ref().is_none_or(|s| s.error.is_empty()) => (Status::Completed, None),
            Ok(()) => (Status::CompletedWithErrors, None),
            Err(e) => match stop {
                Some(StopReason::TimedOut) => (Status::TimedOut, Some("timed out".to_string())),
                Some(StopReason::Stopped) => (Status::Stopped, Some("stopped".to_string())),
                None => (Status::Failed, Some(within_output_limit(self.describe(&e), self.max_output))),
            },
        };
        if let Some(message) = &failure {
            streams.get_or_insert_with(Box::default).error.push(message.clone());
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

    /// Clears what the item left behind and keeps its context for the
    /// next one. After an abnormal end the garbage is collected at once, so
    /// a memory bomb's leftovers do not count against the next item's limit.
    fn release(&self, context: Option<Box<ItemContext>>, abnormal: bool, stopped: bool) {
        if let Some(context) = context {
            // Errored or yielded: the thread's stack still holds what the
            // item was using. Resetting it now lets that be collected
            // before the next item, not after it.
            let reset = match context.finished() {
                true => Ok(()),
                false => context.reset(self.placeholder.clone()),
            };
            if reset.is_err() {
                self.healthy.set(false);
            } else {
                context.clear();
                let mut spare = self.spare.borrow_mut();
                if spare.len() < MAX_SPARE_CONTEXTS {
                    spare.push(context);
                }
            }
        }
        // A full collection walks the heap every item in flight shares: one
        // per abnormal end made failing or stopping 10,000 waiting items
        // quadratic (25 s instead of 0.9 s; `rsp run | head -1` ran on for
        // 30 s after its reader left). It is needed at once only when the
        // leftovers could fail the next allocation (under a limit, past half
        // of it). A stopped item also needs one, later: the stop is raised
        // when its thread resumes, before the host call it waited in is
        // polled again, so that call's future (the child to kill, the
        // connection to close) is dropped only when collected. Owed, it is
        // paid by the worker's loop once the burst of ends is over.
        let near_limit = self.memory_limit.is_some_and(|limit| self.lua.used_memory() >= limit / 2);
        if abnormal && near_limit {
            self.collect();
        } else if stopped {
            self.collection_owed.set(true);
        }
        self.control.rearm_gc();
    }

    /// Runs the full collection an item stopped in a host call left owed,
    /// unless one ran less than `gap` ago (then it stays owed). True if it ran.
    pub(crate) fn collect_if_owed(&self, gap: Duration) -> bool {
        let recent = self.last_collection.get().is_some_and(|at| at.elapsed() < gap);
        let due = self.collection_owed.get() && !recent;
        if due {
            self.collect();
        }
        due
    }

    fn collect(&self) {
        self.collection_owed.set(false);
        self.last_collection.set(Some(Instant::now()));
        if self.lua.gc_collect().is_err() {
            self.healthy.set(false);
        }
    }

    fn function(&self, script: &Script) -> mlua::Result<Function> {
        let mut functions = self.functions.borrow_mut();
        if let Some(f) = functions.get(&script.id()) {
            return Ok(f.clone());
        }
        if functions.len() >= MAX_CACHED_SCRIPTS {
            functions.clear();
        }
        let f = self
            .lua
            .load(script.bytecode())
            .set_name(format!("={}", script.name()))
            .set_mode(ChunkMode::Binary)
            .into_function()?;
        functions.insert(script.id(), f.clone());
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
        self.control.stop_all(StopReason::Stopped);
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
    polled: &host::Polled,
) -> Result<()> {
    let limit = session.timeout.unwrap_or(MODULE_TIMEOUT);
    let switch = Arc::new(Switch::new(Some(Instant::now() + limit)));
    // Nothing else watches a runspace being opened, so a timer thread
    // pulls the stop switch; it leaves as soon as loading is over.
    let (done, finished) = crossbeam_channel::bounded::<()>(0);
    let timer = switch.clone();
    let alarm = std::thread::Builder::new().name("runspace-module-timer".into()).spawn(move || {
        if finished.recv_timeout(limit).is_err_and(|e| e.is_timeout()) {
            timer.stop(StopReason::TimedOut);
        }
    });
    let mut capture = host::Capture::default();
    polled.enter(&mut capture, &switch, lua.current_thread().to_pointer() as usize);
    let result = {
        let _active = ActiveGuard::new(control, &switch);
        session.modules.iter().try_for_each(|module| {
            let value: LuaValue = lua
                .load(&module.bytecode[..])
                .set_name(format!("={}", module.name))
                .set_mode(ChunkMode::Binary)
                .eval()
                .map_err(|e| {
                    let message = match switch.reason() {
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
    polled.leave(&mut capture);
    drop(done);
    if let Ok(alarm) = alarm {
        let _ = alarm.join();
    }
    result
}

/// The metatable of every item's global table: reads fall through to the
/// shared globals (libraries, session variables, modules: all read-only),
/// and `__metatable` keeps a script from unhooking them for the items after
/// it. `_G` is the item's own table (set per item), as in plain Lua.
fn item_metatable(lua: &Lua, globals: &Table) -> mlua::Result<Table> {
    let meta = lua.create_table()?;
    meta.raw_set("__index", globals)?;
    meta.raw_set("__metatable", false)?;
    meta.set_readonly(true);
    Ok(meta)
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
fn session_require(lua: &Lua, loaded: Table, remedies: Remedies) -> mlua::Result<Function> {
    lua.create_function(move |_, name: String| {
        let value: LuaValue = loaded.raw_get(name.as_str())?;
        if value.is_nil() {
            let remedy = remedies.word(Remedy::AddModule(&name));
            return Err(mlua::Error::runtime(format!("module '{name}' is not part of this session ({remedy})")));
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
/// An error message cut to the output limit. The message is part of the
/// item's record like its output: uncut, `error(string.rep('x', 2^25))`
/// put 32 MB in a record past `max_output`, for every item that did it.
fn within_output_limit(mut message: String, limit: usize) -> String {
    if message.len() <= limit {
        return message;
    }
    let total = crate::units::format_size(message.len() as u64);
    let mut end = limit;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push_str(&format!("... (an error message of {total}, cut at the output limit)"));
    message
}

pub(crate) fn clean_message(e: &mlua::Error) -> String {
    let text = match e {
        mlua::Error::CallbackError { cause, traceback } => {
            let cause = clean_message(cause);
            // Name the script line that made the failing host call. An async
            // host call runs under mlua's own Lua-side poll loop
            // (`__mlua_async_poll`), which is not the script's line either.
            match traceback.lines().map(str::trim).find(|l| {
                !l.starts_with("[C]")
                    && !l.starts_with("__mlua")
                    && l.contains(':')
                    && !l.starts_with("stack traceback")
            }) {
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

    /// A pool worker keeps its switchboard when it replaces its runspace:
    /// the new one continues the generations, so a late stop meant for the
    /// old runspace's item cannot hit a new one.
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
        assert!(new.next_generation() > 3);
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
