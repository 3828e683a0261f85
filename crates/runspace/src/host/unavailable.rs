//! Host libraries left out of the build (cargo features `http`, `net`,
//! `proc`, `exec`): the names stay, so a script that calls one learns why
//! it cannot, instead of "attempt to index nil".

use mlua::{Lua, Table};

/// Installs table `library` whose `functions` (and the table itself, when
/// called) fail with a message naming the cargo feature.
#[cfg_attr(all(feature = "http", feature = "net", feature = "proc", feature = "exec"), allow(dead_code))]
pub(crate) fn install(lua: &Lua, globals: &Table, library: &'static str, functions: &[&str]) -> mlua::Result<()> {
    let table = lua.create_table()?;
    let refuse = lua.create_function(move |_, _: mlua::MultiValue| -> mlua::Result<()> {
        Err(mlua::Error::runtime(format!(
            "{library}: not available in this build of the runspace library (cargo feature '{library}')"
        )))
    })?;
    for name in functions {
        table.raw_set(*name, refuse.clone())?;
    }
    let meta = lua.create_table()?;
    meta.raw_set("__call", refuse)?;
    meta.raw_set("__metatable", false)?;
    meta.set_readonly(true);
    table.set_metatable(Some(meta))?;
    globals.raw_set(library, table)
}
