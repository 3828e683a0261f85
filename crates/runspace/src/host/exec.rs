//! `exec(program, args, opts)`: run an external program, behind the `exec`
//! capability.
//!
//! No shell is involved unless the script asks for one (`shell = true`), so
//! arguments are never re-split or expanded. The child gets its own process
//! group; when its timeout passes or the item is stopped, the whole group is
//! killed (a shell's children too), so nothing it started keeps running or
//! keeps its output pipes open.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use mlua::{Lua, Table, Value as LuaValue};
use serde::Deserialize;
use serde_json::Value;

use super::gate::{self, fail, record};
use super::HostContext;
use crate::capability::Capability;
use crate::control::Control;
use crate::convert::from_lua;
use pipes::Pipes;

mod pipes;

/// Output kept per stream unless `max_output` says otherwise; the rest is
/// read and dropped, so a chatty child never blocks on a full pipe.
const DEFAULT_MAX_OUTPUT: usize = 16 << 20;

/// How long, after the child ended, to wait for its pipes to close. A
/// grandchild outside the group may hold them open indefinitely.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Longest pause between looks at the child and the stop switch.
const MAX_SLICE: Duration = Duration::from_millis(20);

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ExecOptions {
    /// Seconds before the child is killed (the result then has `timed_out = true`).
    timeout: Option<f64>,
    /// Text written to the child's standard input (else it reads nothing).
    stdin: Option<String>,
    /// Run `program` as a `/bin/sh -c` command line, `args` as `$1…`.
    #[serde(default)]
    shell: bool,
    /// Working directory of the child.
    cwd: Option<String>,
    /// Extra environment variables for the child.
    env: Option<BTreeMap<String, String>>,
    /// Bytes of stdout and of stderr kept (default 16 MiB each).
    max_output: Option<usize>,
}

/// Installs `exec`: a callable table (`exec(...)`, also `exec.run(...)`).
pub(crate) fn install(lua: &Lua, globals: &Table, ctx: &HostContext) -> mlua::Result<()> {
    let exec = lua.create_table()?;
    let c = ctx.clone();
    let run_fn =
        lua.create_function(move |lua, (program, args, opts): (String, Option<Table>, Option<LuaValue>)| {
            run(lua, &c, &program, args, opts)
        })?;
    exec.raw_set("run", run_fn.clone())?;
    let meta = lua.create_table()?;
    meta.raw_set(
        "__call",
        lua.create_function(move |_, (_exec, rest): (Table, mlua::MultiValue)| run_fn.call::<Table>(rest))?,
    )?;
    // Scripts may not swap the metatable for other items of the runspace to see.
    meta.raw_set("__metatable", false)?;
    meta.set_readonly(true);
    exec.set_metatable(Some(meta))?;
    globals.raw_set("exec", exec)
}

fn run(
    lua: &Lua,
    ctx: &HostContext,
    program: &str,
    args: Option<Table>,
    opts: Option<LuaValue>,
) -> mlua::Result<Table> {
    let what = "exec";
    gate::require(ctx, Capability::Exec, "exec()")?;
    let opts: ExecOptions = gate::options(what, opts)?;
    let args = arguments(args)?;
    let timeout = opts.timeout.map(|t| gate::seconds(what, t)).transpose()?;
    let max_output = opts.max_output.unwrap_or(DEFAULT_MAX_OUTPUT);

    let mut cmd = if opts.shell {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(program).arg("sh").args(&args);
        c
    } else {
        let mut c = Command::new(program);
        c.args(&args);
        c
    };
    cmd.stdin(if opts.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    ctx.surroundings.apply(&mut cmd, opts.cwd.as_deref());
    cmd.envs(opts.env.iter().flatten());

    gate::check(&ctx.control)?;
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| fail(what, format!("{program}: {e}")))?;
    if let (Some(text), Some(mut pipe)) = (opts.stdin, child.stdin.take()) {
        // A child that never reads its input must not block us: write from a thread.
        std::thread::spawn(move || {
            let _ = pipe.write_all(text.as_bytes());
        });
    }
    let mut pipes = Pipes::new(&mut child, max_output);

    let deadline = timeout.map(|t| started + t);
    let (status, timed_out) = match supervise(&mut child, &mut pipes, &ctx.control, deadline) {
        Ok(ended) => ended,
        Err(e) => {
            kill(&mut child);
            return Err(e);
        }
    };
    let (out, err) = pipes.finish(Instant::now() + DRAIN_GRACE);
    record(
        lua,
        [
            ("code", status.code().map_or(LuaValue::Nil, |c| LuaValue::Number(c as f64))),
            ("signal", status.signal().map_or(LuaValue::Nil, |s| LuaValue::Number(s as f64))),
            ("ok", LuaValue::Boolean(status.success() && !timed_out)),
            ("timed_out", LuaValue::Boolean(timed_out)),
            ("stdout", LuaValue::String(lua.create_string(out)?)),
            ("stderr", LuaValue::String(lua.create_string(err)?)),
            ("duration", LuaValue::Number(started.elapsed().as_secs_f64())),
        ],
    )
}

/// Arguments as strings; numbers are written the way `tostring` would.
fn arguments(args: Option<Table>) -> mlua::Result<Vec<String>> {
    let Some(args) = args else { return Ok(Vec::new()) };
    match from_lua(&LuaValue::Table(args))? {
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                Value::Number(n) => Ok(n.to_string()),
                Value::Bool(b) => Ok(b.to_string()),
                other => Err(fail("exec", format!("arguments must be strings, not {other}"))),
            })
            .collect(),
        _ => Err(fail("exec", "arguments must be a list of strings, e.g. {\"-l\", \"/tmp\"}")),
    }
}

/// Waits for the child, killing it at its own deadline (then `timed_out`),
/// and failing with the stop's error when the item is stopped (the caller kills).
/// Output is read meanwhile.
fn supervise(
    child: &mut Child,
    pipes: &mut Pipes,
    control: &Control,
    deadline: Option<Instant>,
) -> mlua::Result<(ExitStatus, bool)> {
    // Naps, when there is nothing to poll, start short so quick commands return quickly.
    let mut slice = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait().map_err(|e| fail("exec", e))? {
            return Ok((status, false));
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| d <= now) {
            kill(child);
            let status = child.wait().map_err(|e| fail("exec", e))?;
            return Ok((status, true));
        }
        // Woken by output or the exit itself; the stop switch is looked at every slice.
        if pipes.pump(deadline.map_or(MAX_SLICE, |d| MAX_SLICE.min(d - now))) {
            control.check().map_err(super::HostContext::stopped)?;
        } else {
            let nap = deadline.map_or(slice, |d| slice.min(d - now));
            control.sleep(nap).map_err(super::HostContext::stopped)?;
            slice = (slice * 2).min(MAX_SLICE);
        }
    }
}

/// Kills the child's whole process group, then reaps the child.
fn kill(child: &mut Child) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: plain kill(2). The group id is the child's pid (`process_group(0)`),
    // and the child is not reaped yet, so the id cannot have been reused.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let _ = child.kill();
    let _ = child.wait();
}
