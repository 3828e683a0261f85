//! An item's Luau thread, worked straight through Luau's C API.
//!
//! Each item runs in a Luau thread of its own ([`ItemContext`]). Setting
//! it up and starting it happen once per item, so both skip mlua where it
//! costs: through `Table::raw_set` and `Thread::reset` the set-up took a
//! trivial item about a fifth of its time, and mlua's `Thread::resume`
//! about a tenth more (a lock and status checks, the results moved to the
//! main stack, a `VecDeque` allocated for them, each made an mlua value
//! and then converted again, into JSON). Most items return one nil,
//! boolean or number and never wait: those results are read straight off
//! the item's own stack. Everything else (several results, text, tables,
//! a yield, an error) goes to mlua exactly as its own resume would have
//! handed it over: the same values, the same errors. Every `unsafe` block
//! says why nothing in it can raise a Luau error through Rust frames.

use std::ffi::c_int;
use std::ptr;

use mlua::{ffi, Function, Lua, LuaString, MultiValue, RegistryKey, Table, Thread, Value as LuaValue};
use serde_json::Value;

use crate::convert::{float_to_json, Scalar};

/// Where one item runs: a Luau thread and the item's own global table.
///
/// Running in a thread, not a call from C on the main thread, is what makes
/// an item Luau code like any other: `coroutine.isyieldable()` is true,
/// `pcall` recurses as deep as Luau allows (~10,000 levels) instead of
/// nesting on the C stack (~200), and a host call that waits can yield it.
pub(crate) struct ItemContext {
    pub(crate) thread: Thread,
    /// `thread`'s own state, to read its status without a round trip
    /// through mlua (which looks at its call frames too).
    pub(crate) state: *mut ffi::lua_State,
    /// The item's globals (Luau's `luaL_sandboxthread` model): writes land
    /// here, reads fall through to the shared globals. It is also the
    /// thread's own globals (`LUA_GLOBALSINDEX`), as `luaL_sandboxthread`
    /// makes it: C code running in the item sees the item's globals, and
    /// [`ItemContext::begin`] reaches the table without a registry lookup.
    pub(crate) env: Table,
    /// `env` in the registry, to make it the thread's globals again after
    /// mlua resets the thread (which makes them the main thread's).
    env_key: RegistryKey,
    /// The last script run here, bound to `env`.
    pub(crate) bound: Option<Bound>,
}

/// A script's closure bound to an item's globals.
pub(crate) struct Bound {
    /// The script's id.
    pub(crate) script: u64,
    pub(crate) closure: Function,
    /// `closure` in the registry, for [`ItemContext::begin`].
    pub(crate) key: RegistryKey,
}

impl ItemContext {
    /// A context of `thread` (fresh, never run) and `env`, the item's table
    /// with its metatable set, whose registry slot is `env_key`.
    pub(crate) fn new(thread: Thread, env: Table, env_key: RegistryKey) -> ItemContext {
        let state = thread.state();
        let context = ItemContext { thread, state, env, env_key, bound: None };
        context.point_globals();
        context
    }

    /// Resets the thread (whatever state it is in) to run `function`, its
    /// globals still the item's table. The only way contexts are reset:
    /// mlua's `Thread::reset` gives a thread the main thread's globals, and
    /// [`clear`](Self::clear) and [`begin`](Self::begin) would then write
    /// into those.
    pub(crate) fn reset(&self, function: Function) -> mlua::Result<()> {
        self.thread.reset(function)?;
        self.point_globals();
        Ok(())
    }

    /// Makes the item's table the thread's globals (`LUA_GLOBALSINDEX`), as
    /// `luaL_sandboxthread` does.
    fn point_globals(&self) {
        // SAFETY: `state` is this context's thread, alive while the context
        // is, and the runspace's thread is the only one that touches the VM;
        // the thread is not running (it is new, or was just reset: its stack
        // holds at most its function, so one more slot is free). Reading a
        // registry slot and `lua_replace` into `LUA_GLOBALSINDEX` allocate
        // nothing and cannot raise: the value is a table, as it requires.
        unsafe {
            ffi::lua_rawgeti(self.state, ffi::LUA_REGISTRYINDEX, self.env_key.id() as ffi::lua_Integer);
            ffi::lua_replace(self.state, ffi::LUA_GLOBALSINDEX);
        }
    }

    /// Whether the thread's globals are the item's table, as
    /// [`point_globals`](Self::point_globals) made them: what `clear` and
    /// `begin` rely on (checked in debug builds).
    fn globals_are_env(&self) -> bool {
        // SAFETY: as in `yielded`; reading a pseudo-index's address pushes
        // nothing and cannot raise.
        unsafe { ffi::lua_topointer(self.state, ffi::LUA_GLOBALSINDEX) == self.env.to_pointer() }
    }

    /// Empties the item's table (its metatable and "safeenv" flag stay).
    pub(crate) fn clear(&self) {
        debug_assert!(self.globals_are_env(), "the thread's globals are not the item's table");
        // SAFETY: as in `point_globals`, and the thread's globals are the
        // item's table. `lua_cleartable` only writes nils into the table,
        // which allocates nothing; it raises only on a read-only table, and
        // the item's table cannot be frozen (see `begin`).
        unsafe { ffi::lua_cleartable(self.state, ffi::LUA_GLOBALSINDEX) }
    }

    /// Whether the thread can start a new function: it is not suspended
    /// and not in an error (then, outside a resume, it has no call frames).
    pub(crate) fn fresh(&self) -> bool {
        // SAFETY: as in `yielded`.
        unsafe { ffi::lua_status(self.state) == ffi::LUA_OK }
    }

    /// Sets the thread up to run the registry's function `closure`: its
    /// stack becomes `[closure, arg]` (or `[closure]`), and the item's
    /// table, [cleared](Self::clear) since its last item, gets `_G` (itself)
    /// and `_` (`arg`).
    ///
    /// Done with the C API on the thread itself because this runs once per
    /// item: through mlua (`Table::raw_set`, `Thread::reset`) the same
    /// steps cost a trivial item about a fifth of its time, mostly in
    /// copies of references between the VM's stacks.
    ///
    /// # Safety
    ///
    /// Nothing here may raise a Luau error: it would unwind through Rust
    /// frames. So the thread must be [`fresh`](Self::fresh), `closure` must
    /// be a function's registry slot, the VM must have no memory limit (an
    /// allocation then cannot fail: mlua aborts instead), and `arg` text
    /// must be short (see [`Runspace::raw_arg`]).
    pub(crate) unsafe fn begin(&self, closure: c_int, arg: Option<&Scalar<'_>>, names: &Names) {
        debug_assert!(self.globals_are_env(), "the thread's globals are not the item's table");
        let state = self.state;
        // SAFETY (of every call below): `state` is this context's thread,
        // alive while the context is, and the runspace's thread is the only
        // one that touches the VM. A fresh thread has at least LUA_MINSTACK
        // free slots, and at most four values are pushed. The rawget reads
        // a registry slot, and `lua_xpush` copies a value between two
        // stacks of the VM: neither raises. The keys "_G" and "_" come from
        // `names`, already interned, so setting them hashes no text.
        // `lua_rawset` raises only on a read-only table, and the item's
        // table (the thread's globals, see `point_globals`) cannot be
        // frozen: its metatable is protected, which `table.freeze` refuses. It may have to grow the table (an item can
        // shrink it: `_G[1] = 0` after emptying it rehashes it smaller), and
        // pushing text allocates, but without a memory limit an allocation
        // cannot fail, and text under RAW_TEXT_MAX is far from Luau's 1 GiB
        // cap, so neither raises. A GC step these allocations may run
        // reaches the interrupt only as a collector step, which never raises.
        unsafe {
            ffi::lua_settop(state, 0);
            ffi::lua_rawgeti(state, ffi::LUA_REGISTRYINDEX, closure as ffi::lua_Integer); // f
            ffi::lua_xpush(names.state, state, Names::G); // f "_G"
            ffi::lua_pushvalue(state, ffi::LUA_GLOBALSINDEX); // f "_G" env
            ffi::lua_rawset(state, ffi::LUA_GLOBALSINDEX); // f
            if let Some(arg) = arg {
                match arg {
                    Scalar::Nil => ffi::lua_pushnil(state),
                    Scalar::Boolean(b) => ffi::lua_pushboolean(state, c_int::from(*b)),
                    Scalar::Number(n) => ffi::lua_pushnumber(state, *n),
                    Scalar::Text(text) => {
                        ffi::lua_pushlstring(state, text.as_ptr().cast(), text.len());
                    }
                } // f a
                ffi::lua_xpush(names.state, state, Names::UNDERSCORE); // f a "_"
                ffi::lua_pushvalue(state, 2); // f a "_" a
                ffi::lua_rawset(state, ffi::LUA_GLOBALSINDEX); // f a
            }
        }
    }

    /// Starts the function on the thread's stack with the values above it
    /// as its arguments, and runs it until it returns, yields or fails.
    ///
    /// # Safety
    ///
    /// The thread must be [`fresh`](Self::fresh), with the function at
    /// index 1 and only its arguments above it, and the caller must be the
    /// only one touching `lua`'s VM (its runspace's thread, outside any
    /// Luau call).
    pub(crate) unsafe fn resume(&self, lua: &Lua) -> mlua::Result<Resumed> {
        let state = self.state;
        // SAFETY: as the caller promises. `lua_resume` runs the function in a
        // protected call of its own: whatever the item raises (a memory error
        // under the VM's limit too) comes back as a status, with the error
        // object on the thread's stack; nothing unwinds through this frame. A
        // null `from` starts the thread's C call count at zero, as resuming
        // from the main thread outside any call does.
        let (status, results) = unsafe {
            let nargs = ffi::lua_gettop(state) - 1;
            let mut results: c_int = 0;
            let status = ffi::lua_resume(state, ptr::null_mut(), nargs, &mut results);
            (status, results)
        };
        match status {
            // SAFETY (both): the results are the `results` values on the stack.
            ffi::LUA_OK => unsafe { returned(lua, state, results) }.map(Resumed::Finished),
            ffi::LUA_YIELD => {
                // SAFETY: reads the top value's type and pointer, then empties
                // the stack; neither can raise.
                let pending = unsafe {
                    let marker = Lua::poll_pending().0;
                    let pending = results == 1
                        && ffi::lua_type(state, -1) == ffi::LUA_TLIGHTUSERDATA
                        && ffi::lua_touserdata(state, -1) == marker;
                    ffi::lua_settop(state, 0);
                    pending
                };
                Ok(Resumed::Yielded { pending })
            }
            // SAFETY: a failed resume leaves its error object on top.
            _ => Err(unsafe { error(lua, state, status) }),
        }
    }

    /// Whether the thread is suspended in a `coroutine.yield`.
    pub(crate) fn yielded(&self) -> bool {
        // SAFETY: `state` is the state of `thread`, which this context
        // keeps alive, and Luau never moves collectable objects; the
        // runspace's thread is the only one that touches its VM, and
        // `lua_status` only reads the state's status.
        unsafe { ffi::lua_status(self.state) == ffi::LUA_YIELD }
    }

    /// Whether the thread ran its function to the end (nothing is left
    /// on its stack to let go of).
    pub(crate) fn finished(&self) -> bool {
        // SAFETY: as in `yielded`; `lua_gettop` only reads the stack bounds.
        unsafe { ffi::lua_status(self.state) == ffi::LUA_OK && ffi::lua_gettop(self.state) == 0 }
    }
}

/// The names every item's table is given, `_G` and `_`, held on the stack
/// of a thread of their own.
///
/// [`ItemContext::begin`] copies them onto an item's stack with
/// `lua_xpush`, a plain copy between two stacks of one VM. Read from the
/// registry instead (`lua_rawgeti`: a pseudo-index, a lookup in a large
/// table), the two took a trivial item about 3 % of its time (`perf`).
/// Held there, they also stay interned, so setting them in an item's table
/// never makes a string.
pub(crate) struct Names {
    /// `_` and `_G` as mlua values, for the steps that go through mlua.
    pub(crate) underscore: LuaString,
    pub(crate) g: LuaString,
    /// Keeps the holder alive (and its stack with it).
    _holder: Thread,
    state: *mut ffi::lua_State,
}

impl Names {
    /// Where `_G` and `_` are on the holder's stack (above the function
    /// the thread was made with).
    const G: c_int = 2;
    const UNDERSCORE: c_int = 3;

    /// The names of `lua`'s items; `function` is any function (a thread
    /// is made with one).
    pub(crate) fn new(lua: &Lua, function: Function) -> mlua::Result<Names> {
        let holder = lua.create_thread(function)?;
        let state = holder.state();
        let (underscore, g) = (lua.create_string("_")?, lua.create_string("_G")?);
        // SAFETY: `exec_raw` pushes the two strings onto the main thread's
        // stack in a protected call; `lua_xmove` moves them onto the new
        // thread, which has LUA_MINSTACK free slots and nothing but its
        // function (at 1), so they land at `G` and `UNDERSCORE`. Moving
        // values between two threads of one VM allocates nothing. mlua never
        // resumes or resets the holder: nothing else touches its stack.
        unsafe { lua.exec_raw::<()>((&g, &underscore), |main| ffi::lua_xmove(main, state, 2)) }?;
        Ok(Names { underscore, g, _holder: holder, state })
    }
}

/// What an item's thread returned.
pub(crate) enum Returned {
    /// One nil, boolean or number, already JSON.
    One(Value),
    /// The results, as mlua reads them.
    Values(MultiValue),
}

/// How a resume ended, when it did not fail.
pub(crate) enum Resumed {
    Finished(Returned),
    /// The thread yielded; `pending` when it was a host call that waits
    /// (mlua's poll-pending marker), else a `coroutine.yield` at the top
    /// level of the item. What it yielded is gone from its stack, as after
    /// mlua's own resume.
    Yielded {
        pending: bool,
    },
}

impl Resumed {
    /// Sorts what mlua's `Thread::resume` returned (`yielded`: whether the
    /// thread is now suspended).
    pub(crate) fn from_values(values: MultiValue, yielded: bool) -> Resumed {
        let pending = values.len() == 1
            && matches!(values.front(), Some(LuaValue::LightUserData(ud)) if *ud == Lua::poll_pending());
        match (pending, yielded) {
            (true, _) => Resumed::Yielded { pending: true },
            (false, true) => Resumed::Yielded { pending: false },
            (false, false) => Resumed::Finished(Returned::Values(values)),
        }
    }
}

/// Takes the `count` results off `state`'s stack.
///
/// # Safety
///
/// As [`resume`], with exactly `count` values on the stack.
unsafe fn returned(lua: &Lua, state: *mut ffi::lua_State, count: c_int) -> mlua::Result<Returned> {
    if count == 0 {
        return Ok(Returned::Values(MultiValue::new()));
    }
    if count == 1 {
        // SAFETY: reading a value's type, a boolean or a number never
        // raises, and neither does emptying the stack.
        let one = unsafe {
            let one = match ffi::lua_type(state, 1) {
                ffi::LUA_TNIL => Some(Value::Null),
                ffi::LUA_TBOOLEAN => Some(Value::Bool(ffi::lua_toboolean(state, 1) != 0)),
                // mlua reads a number as an integer when it is one, and the
                // runspace writes either kind as `float_to_json` does.
                ffi::LUA_TNUMBER => Some(float_to_json(ffi::lua_tonumber(state, 1))),
                _ => None,
            };
            if one.is_some() {
                ffi::lua_settop(state, 0);
            }
            one
        };
        if let Some(one) = one {
            return Ok(Returned::One(one));
        }
    }
    // SAFETY: `exec_raw` runs the closure in a protected call on the main
    // thread: making room there may raise (it is caught), and moving the
    // results between two threads of one VM cannot. mlua then reads them
    // as its own resume would have.
    let values = unsafe {
        lua.exec_raw::<MultiValue>((), |main| {
            ffi::luaL_checkstack(main, count, c"too many results".as_ptr());
            ffi::lua_xmove(state, main, count);
        })
    };
    // SAFETY: emptying the stack never raises (the results are already
    // gone unless making room failed).
    unsafe { ffi::lua_settop(state, 0) };
    values.map(Returned::Values)
}

/// The error a failed resume left on top of `state`, as mlua's resume
/// would have made it: a Rust error raised through Luau comes back as it
/// was, a memory error as `MemoryError`, anything else as a
/// `RuntimeError` with its text (`__tostring` honoured).
///
/// # Safety
///
/// As [`resume`], with the error object on top of the stack.
unsafe fn error(lua: &Lua, state: *mut ffi::lua_State, status: c_int) -> mlua::Error {
    if status == ffi::LUA_ERRMEM {
        // SAFETY: a memory error's object is Luau's fixed message (checked
        // to be text): reading text in place allocates nothing, which is
        // what an exhausted heap needs, and popping it cannot raise.
        let message = unsafe {
            match ffi::lua_type(state, -1) {
                ffi::LUA_TSTRING => {
                    let mut len = 0;
                    let text = ffi::lua_tolstring(state, -1, &mut len);
                    let bytes = std::slice::from_raw_parts(text.cast::<u8>(), len);
                    let message = String::from_utf8_lossy(bytes).into_owned();
                    ffi::lua_settop(state, -2);
                    Some(message)
                }
                _ => None,
            }
        };
        if let Some(message) = message {
            return mlua::Error::MemoryError(message);
        }
    }
    // SAFETY: as in `returned`: one value moved under a protected call.
    let value = unsafe { lua.exec_raw::<LuaValue>((), |main| ffi::lua_xmove(state, main, 1)) };
    let text = |s: LuaString| s.to_string_lossy();
    match value {
        Err(e) => e,
        Ok(LuaValue::Error(e)) => *e,
        Ok(LuaValue::String(s)) if status == ffi::LUA_ERRMEM => mlua::Error::MemoryError(text(s)),
        Ok(LuaValue::String(s)) => mlua::Error::RuntimeError(text(s)),
        Ok(other) => {
            // SAFETY: `luaL_tolstring` may call a `__tostring` metamethod,
            // which may raise: the protected call catches it.
            let described = unsafe {
                lua.exec_raw::<LuaString>(other, |main| {
                    ffi::luaL_tolstring(main, -1, ptr::null_mut());
                    ffi::lua_remove(main, -2);
                })
            };
            match described {
                Ok(s) if status == ffi::LUA_ERRMEM => mlua::Error::MemoryError(text(s)),
                Ok(s) => mlua::Error::RuntimeError(text(s)),
                Err(e) => e,
            }
        }
    }
}
