//! `fs`: list, read, write and inspect files, behind the `fs` (read) and
//! `fs-write` (create, write, remove) capabilities.
//!
//! The two are separate on purpose: a script that writes reports into
//! `/tmp/out` need not read anything, and one that sums log sizes under
//! `/var/log` must not write there. `fs-write` does not imply `fs`; a session
//! that needs both grants both. Every path is resolved (`..` and symbolic
//! links) and checked against the granted roots before it is touched; see
//! [`super::paths`].

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::Path;

use mlua::{Lua, Table, Value as LuaValue};
use serde::Deserialize;

use super::beneath::{self, Checked, Dir, Stat};
use super::gate::{self, fail, record};
use super::paths::{self, Last};
use super::HostContext;
use crate::capability::Capability;

/// How many directory entries `fs.list` reads between looks at the stop switch.
const CHECK_EVERY: usize = 256;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ListOptions {
    #[serde(default)]
    recursive: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RemoveOptions {
    #[serde(default)]
    recursive: bool,
}

/// Installs the `fs` table.
pub(crate) fn install(lua: &Lua, globals: &Table, ctx: &HostContext) -> mlua::Result<()> {
    let fs_table = lua.create_table()?;

    let c = ctx.clone();
    fs_table.raw_set(
        "list",
        lua.create_function(move |lua, (path, opts): (String, Option<LuaValue>)| {
            let what = "fs.list";
            let dir = read_path(&c, what, &path)?;
            let opts: ListOptions = gate::options(what, opts)?;
            list(lua, &c, &dir, Path::new(&path), opts.recursive)
        })?,
    )?;

    let c = ctx.clone();
    fs_table.raw_set(
        "read",
        lua.create_function(move |lua, path: String| {
            let what = "fs.read";
            let data = read_file(&c, what, &path)?;
            lua.create_string(data)
        })?,
    )?;

    let c = ctx.clone();
    fs_table.raw_set(
        "read_bytes",
        lua.create_function(move |lua, path: String| {
            let what = "fs.read_bytes";
            let data = read_file(&c, what, &path)?;
            lua.create_buffer(data)
        })?,
    )?;

    for (name, append) in [("write", false), ("append", true)] {
        let c = ctx.clone();
        fs_table.raw_set(
            name,
            lua.create_function(move |_, (path, data): (String, LuaValue)| {
                let what = if append { "fs.append" } else { "fs.write" };
                let file = write_path(&c, what, &path, Last::Follow)?;
                let data = gate::bytes(what, &data)?;
                let mut f = beneath::open_write(&file, append).map_err(|e| fail(what, format!("{path}: {e}")))?;
                f.write_all(&data).map_err(|e| fail(what, format!("{path}: {e}")))?;
                Ok(data.len())
            })?,
        )?;
    }

    let c = ctx.clone();
    fs_table.raw_set(
        "mkdir",
        lua.create_function(move |_, path: String| {
            let what = "fs.mkdir";
            let dir = write_path(&c, what, &path, Last::Follow)?;
            beneath::mkdir_all(&dir).map_err(|e| fail(what, format!("{path}: {e}")))
        })?,
    )?;

    let c = ctx.clone();
    fs_table.raw_set(
        "remove",
        lua.create_function(move |_, (path, opts): (String, Option<LuaValue>)| {
            let what = "fs.remove";
            // A symbolic link is removed itself, never what it points to.
            let target = write_path(&c, what, &path, Last::Keep)?;
            let opts: RemoveOptions = gate::options(what, opts)?;
            let switch = c.switch();
            match beneath::remove(&target, opts.recursive, &|| switch.check().is_ok()) {
                Ok(removed) => Ok(removed),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => gate::check(&c).map(|()| false),
                Err(e) => Err(fail(what, format!("{path}: {e}"))),
            }
        })?,
    )?;

    let c = ctx.clone();
    fs_table.raw_set(
        "stat",
        lua.create_function(move |lua, path: String| {
            let what = "fs.stat";
            let file = read_path(&c, what, &path)?;
            match beneath::stat(&file) {
                Ok(Some(stat)) => Ok(LuaValue::Table(entry(lua, name_of(&file.path), &file.path, &stat)?)),
                Ok(None) => Ok(LuaValue::Nil),
                Err(e) => Err(fail(what, format!("{path}: {e}"))),
            }
        })?,
    )?;

    let c = ctx.clone();
    fs_table.raw_set(
        "exists",
        lua.create_function(move |_, path: String| {
            let what = "fs.exists";
            let file = read_path(&c, what, &path)?;
            beneath::stat(&file).map(|s| s.is_some()).map_err(|e| fail(what, format!("{path}: {e}")))
        })?,
    )?;

    globals.raw_set("fs", fs_table)
}

/// Checks the `fs` grant and the path for a read.
fn read_path(ctx: &HostContext, what: &str, path: &str) -> mlua::Result<Checked> {
    gate::require(ctx, Capability::Fs, &format!("{what}()"))?;
    let path = ctx.surroundings.absolute(path);
    paths::check(&ctx.grants, &ctx.remedies, Capability::Fs, what, &path, Last::Follow).map_err(mlua::Error::runtime)
}

/// Checks the `fs-write` grant and the path for a change.
fn write_path(ctx: &HostContext, what: &str, path: &str, last: Last) -> mlua::Result<Checked> {
    gate::require(ctx, Capability::FsWrite, &format!("{what}()"))?;
    let path = ctx.surroundings.absolute(path);
    paths::check(&ctx.grants, &ctx.remedies, Capability::FsWrite, what, &path, last).map_err(mlua::Error::runtime)
}

/// Reads a whole regular file, checked and opened beneath its root.
fn read_file(ctx: &HostContext, what: &str, path: &str) -> mlua::Result<Vec<u8>> {
    let file = read_path(ctx, what, path)?;
    let mut data = Vec::new();
    beneath::open_read(&file)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|e| fail(what, format!("{path}: {e}")))?;
    Ok(data)
}

/// Lists `dir` (checked) as the script named it (`shown`), depth first,
/// each directory's entries sorted by name. Symbolic links are listed, not
/// followed: following them could leave the granted root or loop. Each
/// directory is opened from its parent's descriptor, never by path.
fn list(lua: &Lua, ctx: &HostContext, dir: &Checked, shown: &Path, recursive: bool) -> mlua::Result<Table> {
    let what = "fs.list";
    let out = lua.create_table()?;
    let top = Dir::open(dir).map_err(|e| fail(what, format!("{}: {e}", shown.display())))?;
    let mut stack = vec![(top, shown.to_path_buf())];
    let mut seen = 0usize;
    while let Some((dir, display)) = stack.pop() {
        let mut names = dir.names().map_err(|e| fail(what, format!("{}: {e}", display.display())))?;
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            seen += 1;
            if seen.is_multiple_of(CHECK_EVERY) {
                gate::check(ctx)?;
            }
            // Entries can vanish while we list; skip them.
            let Ok(stat) = dir.stat(&name) else { continue };
            let shown_path = display.join(&name);
            out.raw_push(entry(lua, &name, &shown_path, &stat)?)?;
            if recursive && stat.kind == beneath::Kind::Dir {
                if let Ok(sub) = Dir::open_at(dir.fd(), &name) {
                    subdirs.push((sub, shown_path));
                }
            }
        }
        // Reversed so the stack pops them in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(out)
}

/// The last component of `path`, or the whole path for `/`.
fn name_of(path: &Path) -> &OsStr {
    path.file_name().unwrap_or(path.as_os_str())
}

/// One file's record: `{name, path, size, modified, kind}`.
fn entry(lua: &Lua, name: &OsStr, shown: &Path, stat: &Stat) -> mlua::Result<Table> {
    record(
        lua,
        [
            ("name", LuaValue::String(lua.create_string(name.as_encoded_bytes())?)),
            ("path", LuaValue::String(lua.create_string(shown.as_os_str().as_encoded_bytes())?)),
            ("size", LuaValue::Number(stat.size as f64)),
            ("modified", LuaValue::Number(stat.modified)),
            ("kind", LuaValue::String(lua.create_string(stat.kind.script_name())?)),
        ],
    )
}
