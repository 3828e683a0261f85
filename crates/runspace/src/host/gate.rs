//! What every capability-gated host function does first and while it waits:
//! check its grant, read its options, and wait for blocking work without
//! outliving a stop.

use mlua::{Lua, Table, Value as LuaValue};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::HostContext;
use crate::capability::Capability;
use crate::convert::from_lua;

/// Fails with the message that names the capability and how to grant it.
pub(crate) fn require(ctx: &HostContext, capability: Capability, what: &str) -> mlua::Result<()> {
    ctx.grants.require(capability, what, &ctx.remedies).map_err(mlua::Error::runtime)
}

/// Fails with the stop's error when the calling item has been stopped or timed out.
pub(crate) fn check(ctx: &HostContext) -> mlua::Result<()> {
    ctx.switch().check().map_err(HostContext::stopped)
}

#[cfg(any(feature = "http", feature = "net", feature = "exec"))]
/// Waits for `work`, failing with the stop's error when the calling item
/// is stopped or times out first (then `work` is dropped, which cancels it).
pub(crate) async fn guard<F: std::future::Future>(switch: &crate::control::Switch, work: F) -> mlua::Result<F::Output> {
    switch.guard(work).await.map_err(HostContext::stopped)
}

/// A runtime error prefixed with the function's name.
pub(crate) fn fail(what: &str, message: impl std::fmt::Display) -> mlua::Error {
    mlua::Error::runtime(format!("{what}: {message}"))
}

/// Reads an options table into `T` through JSON, so unknown or mistyped
/// options are reported by name instead of being silently ignored.
pub(crate) fn options<T: DeserializeOwned + Default>(what: &str, value: Option<LuaValue>) -> mlua::Result<T> {
    let json = match value {
        None | Some(LuaValue::Nil) => return Ok(T::default()),
        Some(v @ LuaValue::Table(_)) => from_lua(&v)?,
        Some(other) => return Err(fail(what, format!("options must be a table, not {}", other.type_name()))),
    };
    // An empty Luau table converts to `[]`.
    let json = match json {
        Value::Array(a) if a.is_empty() => Value::Object(Default::default()),
        v => v,
    };
    serde_json::from_value(json).map_err(|e| fail(what, format!("bad options: {e}")))
}

#[cfg(any(feature = "http", feature = "net", feature = "exec"))]
/// A timeout given in seconds (like `sleep`), checked.
pub(crate) fn seconds(what: &str, value: f64) -> mlua::Result<std::time::Duration> {
    if value.is_finite() && value >= 0.0 {
        Ok(std::time::Duration::from_secs_f64(value.min(1e9)))
    } else {
        Err(fail(what, format!("timeout must be a non-negative number of seconds, not {value}")))
    }
}

/// A Luau table from `(key, value)` pairs.
pub(crate) fn record<'a>(lua: &Lua, fields: impl IntoIterator<Item = (&'a str, LuaValue)>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    for (k, v) in fields {
        t.raw_set(k, v)?;
    }
    Ok(t)
}

/// Bytes from a Luau string or buffer (what the write functions accept).
pub(crate) fn bytes(what: &str, value: &LuaValue) -> mlua::Result<Vec<u8>> {
    match value {
        LuaValue::String(s) => Ok(s.as_bytes().to_vec()),
        LuaValue::Buffer(b) => Ok(b.to_vec()),
        LuaValue::Number(_) | LuaValue::Integer(_) => Ok(crate::convert::display(value).into_bytes()),
        other => Err(fail(what, format!("expected a string or buffer, not {}", other.type_name()))),
    }
}
