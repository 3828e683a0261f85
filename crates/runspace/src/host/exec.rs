//! `exec(program, args, opts)`: run an external program, behind the `exec`
//! capability.
//!
//! No shell is involved unless the script asks for one (`shell = true`), so
//! arguments are never re-split or expanded. The child gets its own process
//! group; when its timeout passes or the item is stopped, the whole group is
//! killed (a shell's children too), so nothing it started keeps running or
//! keeps its output pipes open.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mlua::{Lua, Table, Value as LuaValue};
use serde::Deserialize;
use serde_json::Value;

use super::gate::{self, fail, record};
use super::HostContext;
use crate::capability::Capability;
use crate::control::Control;
use crate::convert::from_lua;

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
    if let Some(dir) = &opts.cwd {
        cmd.current_dir(dir);
    }
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
    let stdout = drain(child.stdout.take(), max_output);
    let stderr = drain(child.stderr.take(), max_output);

    let deadline = timeout.map(|t| started + t);
    let (status, timed_out) = match supervise(&mut child, &ctx.control, deadline) {
        Ok(ended) => ended,
        Err(e) => {
            kill(&mut child);
            return Err(e);
        }
    };
    let grace = Instant::now() + DRAIN_GRACE;
    let (out, err) = (stdout.take(grace), stderr.take(grace));
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
fn supervise(child: &mut Child, control: &Control, deadline: Option<Instant>) -> mlua::Result<(ExitStatus, bool)> {
    // Start with short naps so quick commands return quickly.
    let mut slice = Duration::from_millis(1);
    let exited = ExitFd::open(child);
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
        match &exited {
            // Woken by the exit itself; the stop switch is looked at every slice.
            Some(exited) => {
                exited.wait(deadline.map_or(MAX_SLICE, |d| MAX_SLICE.min(d - now)));
                control.check().map_err(super::HostContext::stopped)?;
            }
            None => {
                let nap = deadline.map_or(slice, |d| slice.min(d - now));
                control.sleep(nap).map_err(super::HostContext::stopped)?;
                slice = (slice * 2).min(MAX_SLICE);
            }
        }
    }
}

/// A pidfd of the child: it becomes readable when the child exits, so a
/// short command is seen to end at once instead of at the next nap (which
/// capped command mode at a few hundred `true`s a second per slot).
struct ExitFd(OwnedFd);

impl ExitFd {
    /// None where pidfds are missing (Linux before 5.3): then naps it is.
    fn open(child: &Child) -> Option<ExitFd> {
        // SAFETY: pidfd_open(2) takes a pid and a flags word and returns a new
        // descriptor or -1. The child is not reaped yet, so the pid is still its.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
        let fd = RawFd::try_from(fd).ok().filter(|&fd| fd >= 0)?;
        // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
        Some(ExitFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Returns once the child has exited or `timeout` passed (or on a signal).
    fn wait(&self, timeout: Duration) {
        let mut poll = libc::pollfd { fd: self.0.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd for the call's duration, and the count says one.
        unsafe { libc::poll(&mut poll, 1, ms) };
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

/// A pipe being read on a thread into a bounded buffer.
struct Drain {
    buffer: Arc<Mutex<Vec<u8>>>,
    done: Receiver<()>,
}

fn drain(pipe: Option<impl Read + Send + 'static>, max: usize) -> Drain {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let (tx, done) = crossbeam_channel::bounded(1);
    if let Some(mut pipe) = pipe {
        let buffer = buffer.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                let mut b = buffer.lock().unwrap_or_else(|e| e.into_inner());
                let room = max.saturating_sub(b.len());
                b.extend_from_slice(&chunk[..n.min(room)]);
            }
            drop(tx);
        });
    }
    Drain { buffer, done }
}

impl Drain {
    /// What was read, once the pipe closed or `until` passed.
    fn take(self, until: Instant) -> Vec<u8> {
        let _ = self.done.recv_deadline(until);
        std::mem::take(&mut *self.buffer.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
