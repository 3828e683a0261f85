//! The host library: the functions every script has, and (behind
//! capabilities) the ones that reach outside the sandbox.
//!
//! Host functions record into the running invocation's [`Capture`] and
//! wait on its [`Control`], so every blocking call can be stopped.

use std::cell::{RefCell, RefMut};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mlua::{Lua, MultiValue, Table, Value as LuaValue};
use serde_json::Value;

use crate::capability::Grants;
use crate::control::{StopReason, Switch};
use crate::convert::{display, from_lua, from_lua_within, to_lua};
use crate::invocation_result::Output;
use crate::streams::{ProgressRecord, Streams};

mod beneath;
mod env;
#[cfg(feature = "exec")]
mod exec;
mod fs;
mod gate;
#[cfg(feature = "http")]
mod http;
mod measure;
#[cfg(feature = "net")]
mod net;
mod paths;

/// `path` as a grant of it reaches it on disk: every `..` and symbolic link
/// of the part that exists resolved, the rest appended as written (a `..`
/// there is refused). Whoever compares grants across machines or users (a
/// worker capping a job's) compares these, as the engine checks its paths.
pub fn resolve_on_disk(path: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    paths::resolve(path, paths::Last::Follow)
}
#[cfg(feature = "proc")]
mod proc;
mod unavailable;

pub(crate) use env::Surroundings;

/// What one invocation has produced so far.
#[derive(Debug, Default)]
pub(crate) struct Capture {
    output: Output,
    /// Made on the first record: most items write none, and a capture is
    /// part of every waiting item's state and moved twice per resume.
    streams: Option<Box<Streams>>,
    /// Bytes of output and stream records so far (as JSON, roughly).
    pub(crate) bytes: usize,
    /// The output limit was reached: the invocation fails however it ends.
    pub(crate) exceeded: bool,
}

impl Capture {
    /// The stream records, made on first use.
    pub(crate) fn streams(&mut self) -> &mut Streams {
        self.streams.get_or_insert_with(Box::default)
    }

    /// The output values and the stream records, taken.
    /// Adds an output value, converted and counted against `limit`.
    pub(crate) fn emit(&mut self, value: &LuaValue, limit: usize) -> mlua::Result<()> {
        let value = from_lua_within(value, limit, || output_limit_message(limit))?;
        self.keep(value, limit)
    }

    /// Adds an output value that is already JSON (a scalar, as
    /// [`emit`](Self::emit) would have made it), counted as `emit` counts it.
    pub(crate) fn emit_json(&mut self, value: Value, limit: usize) -> mlua::Result<()> {
        // `emit`'s conversion charges a scalar 8 bytes against the limit
        // before the capture counts it.
        if limit < 8 {
            return Err(mlua::Error::runtime(output_limit_message(limit)));
        }
        self.keep(value, limit)
    }

    fn keep(&mut self, value: Value, limit: usize) -> mlua::Result<()> {
        self.charge(value_size(&value), limit)?;
        self.output.push(value);
        Ok(())
    }

    pub(crate) fn take(&mut self) -> (Output, Option<Box<Streams>>) {
        (std::mem::take(&mut self.output), self.streams.take())
    }

    /// Counts `bytes` more against `limit`; past it, refuses them (and
    /// everything after: a `pcall` that catches the error gets nothing more
    /// through).
    pub(crate) fn charge(&mut self, bytes: usize, limit: usize) -> mlua::Result<()> {
        self.bytes = self.bytes.saturating_add(bytes);
        if self.exceeded || self.bytes > limit {
            self.exceeded = true;
            return Err(mlua::Error::runtime(output_limit_message(limit)));
        }
        Ok(())
    }
}

/// Makes a host function that waits: [`Lua::create_async_function`] with
/// each call's future boxed. mlua wraps that future in a boxed `async`
/// block that holds it twice (as a capture and as the value it awaits), so
/// unboxed it costs twice its size for as long as the call waits: a waiting
/// `sleep` took 1,136 bytes, as much as the rest of its item. Boxed, the
/// wrapper holds two pointers.
pub(crate) fn waiting_function<A, F, FR, R>(lua: &Lua, f: F) -> mlua::Result<mlua::Function>
where
    F: Fn(Lua, A) -> FR + 'static,
    A: mlua::FromLuaMulti,
    FR: std::future::Future<Output = mlua::Result<R>> + 'static,
    R: mlua::IntoLuaMulti,
{
    lua.create_async_function(move |lua, args: A| Box::pin(f(lua, args)))
}

/// The error of an invocation that produced more than `limit` bytes.
pub(crate) fn output_limit_message(limit: usize) -> String {
    format!("output limit of {} exceeded", crate::units::format_size(limit as u64))
}

/// Roughly the size of `value` as JSON: what it costs to hold and print.
pub(crate) fn value_size(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 8,
        Value::String(s) => s.len() + 2,
        Value::Array(items) => items.iter().map(|v| value_size(v) + 1).sum::<usize>() + 2,
        Value::Object(map) => map.iter().map(|(k, v)| k.len() + 4 + value_size(v)).sum::<usize>() + 2,
    }
}

/// The item a VM runs right now, as its host functions see it: where its
/// output and streams go, and its stop switch. Many items share a VM, so
/// the runspace swaps them in and out around every resume.
#[derive(Clone, Default)]
pub(crate) struct Polled(Rc<PolledItem>);

#[derive(Default)]
struct PolledItem {
    capture: RefCell<Capture>,
    switch: RefCell<Option<Arc<Switch>>>,
    /// The running item's own Luau thread (its address; 0 outside an item).
    thread: std::cell::Cell<usize>,
}

impl Polled {
    /// Makes `capture` and `switch` the running item's (until
    /// [`Polled::leave`]); `thread` is the address of the item's Luau
    /// thread (its `lua_State`, what `Thread::to_pointer` gives: asked of
    /// mlua per resume, it cost a trivial item 2 % of its time).
    pub(crate) fn enter(&self, capture: &mut Capture, switch: &Arc<Switch>, thread: usize) {
        std::mem::swap(&mut *self.0.capture.borrow_mut(), capture);
        *self.0.switch.borrow_mut() = Some(switch.clone());
        self.0.thread.set(thread);
    }

    /// Hands the running item's capture back to it.
    pub(crate) fn leave(&self, capture: &mut Capture) {
        std::mem::swap(&mut *self.0.capture.borrow_mut(), capture);
        self.0.switch.borrow_mut().take();
        self.0.thread.set(0);
    }

    /// What the running item has produced so far.
    pub(crate) fn capture(&self) -> RefMut<'_, Capture> {
        self.0.capture.borrow_mut()
    }

    /// The running item's stop switch (one that never stops when called
    /// outside an item).
    pub(crate) fn switch(&self) -> Arc<Switch> {
        self.0.switch.borrow().clone().unwrap_or_default()
    }
}

/// What host functions share: where to record, what to wait on, what is granted.
#[derive(Clone)]
pub(crate) struct HostContext {
    pub(crate) polled: Polled,
    pub(crate) grants: Grants,
    /// How a refusal words its hint.
    pub(crate) remedies: crate::remedy::Remedies,
    /// Bytes of output and stream records an invocation may produce.
    pub(crate) max_output: usize,
    /// The session's working directory and environment.
    pub(crate) surroundings: Arc<Surroundings>,
    /// Where lines of commands run with `exec`'s `live` option go.
    #[cfg(feature = "exec")]
    pub(crate) live: Option<crate::live::LiveOutput>,
    /// The runspace's sleeps.
    pub(crate) timer: std::rc::Rc<crate::timer::Timer>,
}

impl HostContext {
    /// Turns a stop seen inside a blocking host call into the error that
    /// unwinds the script.
    pub(crate) fn stopped(reason: StopReason) -> mlua::Error {
        mlua::Error::runtime(reason.message())
    }

    /// The stop switch of the item calling now.
    pub(crate) fn switch(&self) -> Arc<Switch> {
        self.polled.switch()
    }

    /// Fails unless a host call that waits (`what`) is made from the
    /// running item's own thread. Made inside a coroutine the item created,
    /// its wait yields that coroutine, not the item: the script got a
    /// stray value back at once (`sleep` did not sleep), and the call's
    /// work (an `exec` child, a request) ran on with nobody to wait for it
    /// or stop it until the coroutine was collected.
    pub(crate) fn waits_here(&self, lua: &Lua, what: &str) -> mlua::Result<()> {
        let item = self.polled.0.thread.get();
        if item == 0 || lua.current_thread().to_pointer() as usize == item {
            Ok(())
        } else {
            Err(mlua::Error::runtime(format!(
                "{what} cannot wait inside a coroutine: call it from the item's own code, outside coroutine.resume/wrap"
            )))
        }
    }
}

/// Installs the always-available host functions into `globals`.
pub(crate) fn install(lua: &Lua, globals: &Table, ctx: &HostContext) -> mlua::Result<()> {
    let c = ctx.polled.clone();
    let limit = ctx.max_output;
    globals.raw_set(
        "emit",
        lua.create_function(move |_, values: MultiValue| {
            let mut capture = c.capture();
            values.iter().try_for_each(|v| capture.emit(v, limit))
        })?,
    )?;

    type Pick = fn(&mut Streams) -> &mut Vec<String>;
    let streams: [(&str, Pick); 5] = [
        ("write_error", |s| &mut s.error),
        ("write_warning", |s| &mut s.warning),
        ("write_verbose", |s| &mut s.verbose),
        ("write_debug", |s| &mut s.debug),
        ("write_information", |s| &mut s.information),
    ];
    for (name, pick) in streams {
        let c = ctx.polled.clone();
        globals.raw_set(
            name,
            lua.create_function(move |_, values: MultiValue| {
                let text = join(&values);
                let mut capture = c.capture();
                capture.charge(text.len() + 3, limit)?;
                pick(capture.streams()).push(text);
                Ok(())
            })?,
        )?;
    }
    let c = ctx.polled.clone();
    globals.raw_set(
        "print",
        lua.create_function(move |_, values: MultiValue| {
            let text = join(&values);
            let mut capture = c.capture();
            capture.charge(text.len() + 3, limit)?;
            capture.streams().information.push(text);
            Ok(())
        })?,
    )?;

    let c = ctx.polled.clone();
    globals.raw_set(
        "write_progress",
        lua.create_function(move |_, (first, percent, status): (LuaValue, Option<f64>, Option<String>)| {
            let record = match first {
                LuaValue::Table(t) => ProgressRecord {
                    activity: t.get::<Option<String>>("activity")?.unwrap_or_default(),
                    status: t.get("status")?,
                    percent: t.get("percent")?,
                },
                other => ProgressRecord { activity: display(&other), status, percent },
            };
            let size = record.activity.len() + record.status.as_ref().map_or(0, String::len) + 48;
            let mut capture = c.capture();
            capture.charge(size, limit)?;
            capture.streams().progress.push(record);
            Ok(())
        })?,
    )?;

    let c = ctx.clone();
    globals.raw_set(
        "sleep",
        waiting_function(lua, move |lua, seconds: f64| {
            let here = c.waits_here(&lua, "sleep");
            let switch = c.switch();
            let timer = c.timer.clone();
            async move {
                here?;
                let seconds = if seconds.is_finite() { seconds.max(0.0) } else { 0.0 };
                let duration = Duration::from_secs_f64(seconds.min(1e9));
                switch.sleep(duration, &timer).await.map_err(HostContext::stopped)
            }
        })?,
    )?;

    globals.raw_set(
        "now",
        lua.create_function(|_, ()| Ok(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())))?,
    )?;

    globals.raw_set("json", json_library(lua)?)?;
    globals.raw_set("measure", measure::function(lua)?)?;

    // The capability-gated libraries are always there, so a script without
    // the grant gets an error naming the flag, not "attempt to index nil".
    fs::install(lua, globals, ctx)?;
    #[cfg(feature = "proc")]
    proc::install(lua, globals, ctx)?;
    #[cfg(not(feature = "proc"))]
    unavailable::install(lua, globals, "proc", &["list"])?;
    #[cfg(feature = "net")]
    net::install(lua, globals, ctx)?;
    #[cfg(not(feature = "net"))]
    unavailable::install(lua, globals, "net", &["probe", "resolve"])?;
    #[cfg(feature = "http")]
    http::install(lua, globals, ctx)?;
    #[cfg(not(feature = "http"))]
    unavailable::install(lua, globals, "http", &["get", "request", "get_json", "post_json"])?;
    #[cfg(feature = "exec")]
    exec::install(lua, globals, ctx)?;
    #[cfg(not(feature = "exec"))]
    unavailable::install(lua, globals, "exec", &["run"])?;
    env::install(lua, globals, ctx)?;
    Ok(())
}

/// `json.encode(value [, pretty])`, `json.decode(text)` and `json.null`.
fn json_library(lua: &Lua) -> mlua::Result<Table> {
    let json = lua.create_table()?;
    json.raw_set(
        "encode",
        lua.create_function(|_, (value, pretty): (LuaValue, Option<bool>)| {
            let v = from_lua(&value)?;
            let text =
                if pretty.unwrap_or(false) { serde_json::to_string_pretty(&v) } else { serde_json::to_string(&v) };
            text.map_err(mlua::Error::external)
        })?,
    )?;
    json.raw_set(
        "decode",
        lua.create_function(|lua, text: mlua::LuaString| {
            let v: Value =
                crate::json::parse(&text.as_bytes()).map_err(|e| mlua::Error::runtime(format!("json.decode: {e}")))?;
            to_lua(lua, &v)
        })?,
    )?;
    json.raw_set("null", LuaValue::NULL)?;
    Ok(json)
}

/// Joins values the way `print` does: tab-separated.
fn join(values: &MultiValue) -> String {
    let mut out = String::new();
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push('\t');
        }
        out.push_str(&display(v));
    }
    out
}
