//! `exec(program, args, opts)`: run an external program, behind the `exec`
//! capability.
//!
//! No shell is involved unless the script asks for one (`shell = true`), so
//! arguments are never re-split or expanded. The child gets its own process
//! group; when its timeout passes or the item is stopped, the whole group is
//! killed (a shell's children too), so nothing it started keeps running or
//! keeps its output pipes open. The item's thread yields while the child
//! runs, so many items can wait on children side by side; a stopped item
//! drops its wait, which kills the group and reaps the child.
//!
//! With the `live` option, each line the child writes is also handed to the
//! session's [`LiveOutput`](crate::LiveOutput) as soon as it is read (see
//! `crate::live`); the result still carries the whole output.

use std::collections::BTreeMap;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use mlua::{Lua, Table, Value as LuaValue};
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::gate::{self, fail, record};
use super::HostContext;
use crate::capability::Capability;
use crate::control::Switch;
use crate::convert::from_lua;
use crate::live::{LineStream, Lines, LiveLine, LiveOutput};

/// Output kept per stream unless `max_output` says otherwise; the rest is
/// read and dropped, so a chatty child never blocks on a full pipe.
const DEFAULT_MAX_OUTPUT: usize = 16 << 20;

/// How long, after the child ended, to wait for its pipes to close. A
/// grandchild outside the group may hold them open indefinitely.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Bytes read per `read` call.
const CHUNK: usize = 64 << 10;

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
    /// A name for the command: its lines go to the session's live-output
    /// handler as they are read, with this name (ignored without one).
    live: Option<Value>,
}

/// Installs `exec`: a callable table (`exec(...)`, also `exec.run(...)`).
pub(crate) fn install(lua: &Lua, globals: &Table, ctx: &HostContext) -> mlua::Result<()> {
    let exec = lua.create_table()?;
    let c = ctx.clone();
    exec.raw_set(
        "run",
        super::waiting_function(lua, move |lua, (program, args, opts): (String, Option<Table>, Option<LuaValue>)| {
            let (c, switch, here) = (c.clone(), c.switch(), c.waits_here(&lua, "exec"));
            async move {
                here?;
                run(&lua, &c, &switch, &program, args, opts).await
            }
        })?,
    )?;
    let meta = lua.create_table()?;
    let c = ctx.clone();
    meta.raw_set(
        "__call",
        super::waiting_function(
            lua,
            move |lua, (_exec, program, args, opts): (Table, String, Option<Table>, Option<LuaValue>)| {
                let (c, switch, here) = (c.clone(), c.switch(), c.waits_here(&lua, "exec"));
                async move {
                    here?;
                    run(&lua, &c, &switch, &program, args, opts).await
                }
            },
        )?,
    )?;
    // Scripts may not swap the metatable for other items of the runspace to see.
    meta.raw_set("__metatable", false)?;
    meta.set_readonly(true);
    exec.set_metatable(Some(meta))?;
    globals.raw_set("exec", exec)
}

async fn run(
    lua: &Lua,
    ctx: &HostContext,
    switch: &Switch,
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
    let live = ctx.live.clone().zip(opts.live);

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
    let mut cmd = tokio::process::Command::from(cmd);
    // A stopped item drops this future: the child is killed and reaped.
    cmd.kill_on_drop(true);

    gate::check(ctx)?;
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| fail(what, format!("{program}: {e}")))?;
    // Kills the child's whole group if the item is stopped while it runs.
    let mut group = Group(child.id().map(|pid| pid as libc::pid_t));
    if let (Some(text), Some(mut pipe)) = (opts.stdin, child.stdin.take()) {
        // A child that never reads its input must not block us: write on the side.
        tokio::spawn(async move {
            let _ = pipe.write_all(text.as_bytes()).await;
        });
    }
    let (mut out, mut err) =
        (Kept::new(max_output, &live, LineStream::Stdout), Kept::new(max_output, &live, LineStream::Stderr));
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let deadline = timeout.map(|t| started + t);
    let ended = gate::guard(switch, async {
        let read = async { tokio::join!(read_capped(stdout, &mut out), read_capped(stderr, &mut err)) };
        tokio::pin!(read);
        let waiting = wait(&mut child, &group, deadline);
        tokio::pin!(waiting);
        let mut read_all = false;
        let ended = loop {
            tokio::select! {
                ended = &mut waiting => break ended,
                _ = &mut read, if !read_all => read_all = true,
            }
        };
        if !read_all {
            // A grandchild outside the group may hold the pipes open.
            let _ = tokio::time::timeout(DRAIN_GRACE, &mut read).await;
        }
        ended
    })
    .await;
    // Last lines without a newline (or cut short by a stop) still go out.
    let (out, err) = (out.finish(), err.finish());
    let (status, timed_out) = ended?.map_err(|e| fail(what, e))?;
    group.0 = None;
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

/// The child's process group, killed when dropped while it is set: the
/// item was stopped (its future dropped) with the child still running.
struct Group(Option<libc::pid_t>);

impl Group {
    fn kill(&self) {
        if let Some(pid) = self.0 {
            // SAFETY: plain kill(2). The group id is the child's pid
            // (`process_group(0)`), and the child is not reaped yet (the
            // group is disarmed once it is), so the id cannot have been reused.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits for the child, killing its group at its own deadline (then `timed_out`).
async fn wait(
    child: &mut tokio::process::Child,
    group: &Group,
    deadline: Option<Instant>,
) -> std::io::Result<(ExitStatus, bool)> {
    let Some(deadline) = deadline else { return Ok((child.wait().await?, false)) };
    match tokio::time::timeout_at(deadline.into(), child.wait()).await {
        Ok(status) => Ok((status?, false)),
        Err(_elapsed) => {
            group.kill();
            let _ = child.start_kill();
            Ok((child.wait().await?, true))
        }
    }
}

/// What is kept of one of the child's streams: its first bytes, up to the
/// cap, also handed line by line to the live-output handler when there is
/// one.
struct Kept<'a> {
    bytes: Vec<u8>,
    max: usize,
    live: Option<Live<'a>>,
}

/// Where a stream's lines go as they are read.
struct Live<'a> {
    handler: &'a LiveOutput,
    name: &'a Value,
    stream: LineStream,
    lines: Lines,
}

impl Live<'_> {
    fn push(&mut self, bytes: &[u8]) {
        let (handler, name, stream) = (self.handler, self.name, self.stream);
        self.lines.push(bytes, |text, end| handler.send(&LiveLine { name, stream, text, end }));
    }

    fn finish(&mut self) {
        let (handler, name, stream) = (self.handler, self.name, self.stream);
        self.lines.finish(|text, end| handler.send(&LiveLine { name, stream, text, end }));
    }
}

impl<'a> Kept<'a> {
    fn new(max: usize, live: &'a Option<(LiveOutput, Value)>, stream: LineStream) -> Kept<'a> {
        let live = live.as_ref().map(|(handler, name)| Live { handler, name, stream, lines: Lines::default() });
        Kept { bytes: Vec::new(), max, live }
    }

    fn keep(&mut self, chunk: &[u8]) {
        let room = self.max.saturating_sub(self.bytes.len());
        let kept = &chunk[..chunk.len().min(room)];
        self.bytes.extend_from_slice(kept);
        if let Some(live) = &mut self.live {
            live.push(kept);
            if room <= chunk.len() {
                // Past the cap nothing is kept, so nothing more is shown.
                live.finish();
            }
        }
    }

    /// The kept bytes, after handing over a last line without a newline.
    fn finish(mut self) -> Vec<u8> {
        if let Some(live) = &mut self.live {
            live.finish();
        }
        self.bytes
    }
}

/// Reads `pipe` to its end into `kept` (what passes the cap is read and
/// dropped, so a chatty child never blocks on a full pipe).
async fn read_capped(pipe: Option<impl AsyncRead + Unpin>, kept: &mut Kept<'_>) {
    let Some(mut pipe) = pipe else { return };
    // Read into spare capacity: no zeroing of 64 KiB per stream per
    // command, most of which write a few bytes.
    let mut chunk = Vec::with_capacity(CHUNK);
    loop {
        chunk.clear();
        match pipe.read_buf(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(_) => kept.keep(&chunk),
        }
    }
}
