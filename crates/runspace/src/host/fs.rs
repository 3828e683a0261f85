//! `fs`: list, read, write and inspect files, behind the `fs` (read) and
//! `fs-write` (create, write, remove) capabilities.
//!
//! The two are separate on purpose: a script that writes reports into
//! `/tmp/out` need not read anything, and one that sums log sizes under
//! `/var/log` must not write there. `fs-write` does not imply `fs`; a session
//! that needs both grants both. Every path is resolved (`..` and symbolic
//! links) and checked against the granted roots before it is touched; see
//! [`super::paths`].

use std::fs::{self, Metadata, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use mlua::{Lua, Table, Value as LuaValue};
use serde::Deserialize;

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
            let file = read_path(&c, what, &path)?;
            let data = fs::read(&file).map_err(|e| fail(what, format!("{path}: {e}")))?;
            lua.create_string(data)
        })?,
    )?;

    let c = ctx.clone();
    fs_table.raw_set(
        "read_bytes",
        lua.create_function(move |lua, path: String| {
            let what = "fs.read_bytes";
            let file = read_path(&c, what, &path)?;
            let data = fs::read(&file).map_err(|e| fail(what, format!("{path}: {e}")))?;
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
                let mut f = OpenOptions::new()
                    .create(true)
                    .write(true)
                    .append(append)
                    .truncate(!append)
                    .open(&file)
                    .map_err(|e| fail(what, format!("{path}: {e}")))?;
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
            fs::create_dir_all(&dir).map_err(|e| fail(what, format!("{path}: {e}")))
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
            let meta = match fs::symlink_metadata(&target) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(fail(what, format!("{path}: {e}"))),
            };
            let result = if !meta.is_dir() {
                fs::remove_file(&target)
            } else if opts.recursive {
                // Does not follow symbolic links inside the tree.
                fs::remove_dir_all(&target)
            } else {
                fs::remove_dir(&target)
            };
            result.map_err(|e| fail(what, format!("{path}: {e}")))?;
            Ok(true)
        })?,
    )?;

    let c = ctx.clone();
    fs_table.raw_set(
        "stat",
        lua.create_function(move |lua, path: String| {
            let what = "fs.stat";
            let file = read_path(&c, what, &path)?;
            match fs::metadata(&file) {
                Ok(meta) => Ok(LuaValue::Table(entry(lua, &file, &file, &meta)?)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LuaValue::Nil),
                Err(e) => Err(fail(what, format!("{path}: {e}"))),
            }
        })?,
    )?;

    let c = ctx.clone();
    fs_table.raw_set(
        "exists",
        lua.create_function(move |_, path: String| {
            let file = read_path(&c, "fs.exists", &path)?;
            Ok(file.exists())
        })?,
    )?;

    globals.raw_set("fs", fs_table)
}

/// Checks the `fs` grant and the path for a read.
fn read_path(ctx: &HostContext, what: &str, path: &str) -> mlua::Result<PathBuf> {
    gate::require(ctx, Capability::Fs, &format!("{what}()"))?;
    let path = ctx.surroundings.absolute(path);
    paths::check(&ctx.grants, Capability::Fs, what, &path, Last::Follow).map_err(mlua::Error::runtime)
}

/// Checks the `fs-write` grant and the path for a change.
fn write_path(ctx: &HostContext, what: &str, path: &str, last: Last) -> mlua::Result<PathBuf> {
    gate::require(ctx, Capability::FsWrite, &format!("{what}()"))?;
    let path = ctx.surroundings.absolute(path);
    paths::check(&ctx.grants, Capability::FsWrite, what, &path, last).map_err(mlua::Error::runtime)
}

/// Lists `dir` (resolved) as the script named it (`shown`), depth first,
/// each directory's entries sorted by name. Symbolic links are listed, not
/// followed: following them could leave the granted root or loop.
fn list(lua: &Lua, ctx: &HostContext, dir: &Path, shown: &Path, recursive: bool) -> mlua::Result<Table> {
    let out = lua.create_table()?;
    let mut stack = vec![(dir.to_path_buf(), shown.to_path_buf())];
    let mut seen = 0usize;
    while let Some((real, display)) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&real)
            .map_err(|e| fail("fs.list", format!("{}: {e}", display.display())))?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.file_name());
        let mut subdirs = Vec::new();
        for e in entries {
            seen += 1;
            if seen.is_multiple_of(CHECK_EVERY) {
                gate::check(&ctx.control)?;
            }
            // Entries can vanish while we list; skip them.
            let Ok(meta) = e.metadata() else { continue };
            let shown_path = display.join(e.file_name());
            if recursive && meta.is_dir() {
                subdirs.push((e.path(), shown_path.clone()));
            }
            out.raw_push(entry(lua, &e.path(), &shown_path, &meta)?)?;
        }
        // Reversed so the stack pops them in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(out)
}

/// One file's record: `{name, path, size, modified, kind}`.
fn entry(lua: &Lua, real: &Path, shown: &Path, meta: &Metadata) -> mlua::Result<Table> {
    let name = real.file_name().map_or_else(|| real.display().to_string(), |n| n.to_string_lossy().into_owned());
    let modified =
        meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0.0, |d| d.as_secs_f64());
    let kind = if meta.is_symlink() {
        "symlink"
    } else if meta.is_dir() {
        "dir"
    } else if meta.is_file() {
        "file"
    } else {
        "other"
    };
    record(
        lua,
        [
            ("name", LuaValue::String(lua.create_string(name)?)),
            ("path", LuaValue::String(lua.create_string(shown.as_os_str().as_encoded_bytes())?)),
            ("size", LuaValue::Number(meta.len() as f64)),
            ("modified", LuaValue::Number(modified)),
            ("kind", LuaValue::String(lua.create_string(kind)?)),
        ],
    )
}
