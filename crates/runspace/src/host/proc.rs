//! `proc.list()`: the processes of the machine (PowerShell's `Get-Process`),
//! behind the `proc` capability, read through the `sysinfo` crate rather
//! than by parsing `/proc` by hand.

use std::time::{SystemTime, UNIX_EPOCH};

use mlua::{Lua, Table, Value as LuaValue};
use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};

use super::gate::{self, fail, record};
use super::HostContext;
use crate::capability::Capability;

/// Installs the `proc` table.
pub(crate) fn install(lua: &Lua, globals: &Table, ctx: &HostContext) -> mlua::Result<()> {
    let proc_table = lua.create_table()?;
    let c = ctx.clone();
    proc_table.raw_set(
        "list",
        lua.create_function(move |lua, ()| {
            gate::require(&c, Capability::Proc, "proc.list()")?;
            list(lua)
        })?,
    )?;
    globals.raw_set("proc", proc_table)
}

/// One record per process, sorted by pid:
/// `{pid, ppid, name, cpu_seconds, memory_bytes, virtual_bytes, started, status, command}`.
fn list(lua: &Lua) -> mlua::Result<Table> {
    let mut system = System::new().map_err(|e| fail("proc.list", e))?;
    // Only what the records show: CPU time and memory are cheap to read;
    // the command line costs one more file per process and is worth it.
    let kind = ProcessRefreshKind::nothing().with_cpu().with_memory().with_cmd(UpdateKind::Always);
    system.refresh_processes_specifics(ProcessesToUpdate::All, true, kind);
    let mut processes: Vec<_> = system.processes().values().collect();
    processes.sort_by_key(|p| p.pid());
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let out = lua.create_table_with_capacity(processes.len(), 0)?;
    for p in processes {
        let command: Vec<String> = p.cmd().iter().map(|a| a.to_string_lossy().into_owned()).collect();
        let started = p.start_time();
        let t = record(
            lua,
            [
                ("pid", LuaValue::Number(p.pid().as_u32() as f64)),
                ("ppid", p.parent().map_or(LuaValue::Nil, |pp| LuaValue::Number(pp.as_u32() as f64))),
                ("name", LuaValue::String(lua.create_string(p.name().as_encoded_bytes())?)),
                // accumulated_cpu_time is in milliseconds; PowerShell's CPU is seconds.
                ("cpu_seconds", LuaValue::Number(p.accumulated_cpu_time() as f64 / 1000.0)),
                ("memory_bytes", LuaValue::Number(p.memory() as f64)),
                ("virtual_bytes", LuaValue::Number(p.virtual_memory() as f64)),
                ("started", LuaValue::Number(started as f64)),
                ("run_seconds", LuaValue::Number(now.saturating_sub(started) as f64)),
                ("status", LuaValue::String(lua.create_string(p.status().to_string())?)),
                ("command", LuaValue::String(lua.create_string(command.join(" "))?)),
            ],
        )?;
        out.raw_push(t)?;
    }
    Ok(out)
}
