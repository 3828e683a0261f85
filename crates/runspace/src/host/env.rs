//! `env.get(name)` and `env.vars()`: the process's environment variables,
//! read-only, behind the `env` capability (they often hold secrets).
//! There is no `env.set`: the environment is shared by every runspace of
//! the process, and changing it from one script would leak into the others.

use mlua::{Lua, Table};

use super::gate;
use super::HostContext;
use crate::capability::Capability;

/// Installs the `env` table.
pub(crate) fn install(lua: &Lua, globals: &Table, ctx: &HostContext) -> mlua::Result<()> {
    let env_table = lua.create_table()?;
    let c = ctx.clone();
    env_table.raw_set(
        "get",
        lua.create_function(move |lua, name: String| {
            gate::require(&c, Capability::Env, "env.get()")?;
            std::env::var_os(&name).map(|v| lua.create_string(v.as_encoded_bytes())).transpose()
        })?,
    )?;
    let c = ctx.clone();
    env_table.raw_set(
        "vars",
        lua.create_function(move |lua, ()| {
            gate::require(&c, Capability::Env, "env.vars()")?;
            let t = lua.create_table()?;
            for (k, v) in std::env::vars_os() {
                t.raw_set(lua.create_string(k.as_encoded_bytes())?, lua.create_string(v.as_encoded_bytes())?)?;
            }
            Ok(t)
        })?,
    )?;
    globals.raw_set("env", env_table)
}
