//! Standard-library functions whose running time the interrupt cannot bound.
//!
//! Luau checks for a stop at function calls, loop back-edges and inside the
//! pattern matcher, but not inside other C functions. Most library calls are
//! linear in what they produce, and so bounded by the memory limit; these
//! were not:
//!
//! - `string.find` with a plain needle (`plain = true`, or a needle without
//!   pattern characters) compares at every match of the needle's first byte:
//!   O(n·m), 20 s for a 16 MB haystack and a 64 KB needle. Replaced by a
//!   linear search (`memchr::memmem`).
//! - `string.split` with a separator of two or more bytes: the same O(n·m)
//!   scan. Replaced the same way; one-byte and empty separators keep
//!   Luau's own (linear, with `LuauOptimizeStringSplit`) code.
//! - `table.move` over a huge, mostly empty range walks every index
//!   (`table.move({}, -2^30, 2^30, 1, {})`: 45 s). Luau's fix for it is
//!   behind the flag `LuauTableMoveTimeoutFix`, turned on here.
//!
//! The rest was measured under a 64 MB limit and a 1 s timeout and ends
//! well under a second (see `docs/limits.md`).
//!
//! `collectgarbage` is replaced too, for the opposite reason: mlua's
//! sandbox mode allows only `"count"`, refusing the `collectgarbage()` that
//! ordinary Lua code calls. Ours is Luau's own: `"collect"` (the default)
//! and `"count"`. A full collection is bounded by the heap, and so by the
//! memory limit, and the interrupt gets its chance between calls.

use std::os::raw::{c_char, c_int};
use std::sync::{Once, OnceLock};

use mlua::{ffi, Lua};

/// Luau's own `string.find` and `string.split`: the replacements hand every
/// case they do not handle to them.
static ORIGINALS: OnceLock<(ffi::lua_CFunction, ffi::lua_CFunction)> = OnceLock::new();

/// Characters that make a `string.find` needle a pattern (Luau's `SPECIALS`).
const SPECIALS: &[u8] = b"^$*+?.([%-";

/// Turns on the Luau fixes this module relies on. Process-wide; runs once,
/// before the first VM is created.
pub(crate) fn set_flags() {
    static FLAGS: Once = Once::new();
    FLAGS.call_once(|| {
        // Both are dynamic flags read only by the library functions of a
        // running VM, and this runs before any VM exists (every runspace
        // opens through here first), so no VM reads them while they change.
        // Compiler flags, which a concurrent `Script::new` may read, are not
        // touched; the flag registry's names and links are only read.
        let _ = Lua::set_fflag("LuauTableMoveTimeoutFix", true);
        let _ = Lua::set_fflag("LuauOptimizeStringSplit", true);
    });
}

/// Replaces `string.find` and `string.split` in `lua`'s string library,
/// and `collectgarbage`. Must run before the libraries are sealed.
pub(crate) fn install(lua: &Lua) -> mlua::Result<()> {
    // SAFETY: `collectgarbage` follows the C function protocol (see its body).
    let collect = unsafe { lua.create_c_function(collectgarbage)? };
    lua.globals().raw_set("collectgarbage", collect)?;
    // SAFETY: `exec_raw` hands us the VM's running state with room on its
    // stack; we leave the stack as we found it. The functions we read are
    // Luau's own C functions, the same in every VM of the process.
    unsafe {
        lua.exec_raw::<()>((), |state| {
            ffi::lua_getglobal(state, c"string".as_ptr());
            let original = |name: &std::ffi::CStr| {
                ffi::lua_getfield(state, -1, name.as_ptr());
                let f = ffi::lua_tocfunction(state, -1);
                ffi::lua_pop(state, 1);
                f
            };
            if let (Some(find), Some(split)) = (original(c"find"), original(c"split")) {
                let _ = ORIGINALS.set((find, split));
                ffi::lua_pushcfunctiond(state, string_find, c"find".as_ptr());
                ffi::lua_setfield(state, -2, c"find".as_ptr());
                ffi::lua_pushcfunctiond(state, string_split, c"split".as_ptr());
                ffi::lua_setfield(state, -2, c"split".as_ptr());
            }
            ffi::lua_pop(state, 1);
        })
    }
}

/// A string argument as bytes (Luau's `luaL_checklstring`: numbers are
/// converted in place, anything else raises "bad argument").
///
/// # Safety
/// `state` must be a running VM inside a C function call; the slice lives
/// as long as the argument stays on the stack (until the function returns).
unsafe fn string_arg<'a>(state: *mut ffi::lua_State, arg: c_int) -> &'a [u8] {
    let mut len = 0usize;
    // SAFETY: as the function's contract says.
    unsafe {
        let ptr: *const c_char = ffi::luaL_checklstring(state, arg, &mut len);
        std::slice::from_raw_parts(ptr.cast(), len)
    }
}

/// `string.find(s, pattern [, init [, plain]])`: a plain search is linear;
/// patterns go to Luau's matcher, which checks for stops itself.
unsafe extern "C-unwind" fn string_find(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Luau as a C function. Every Lua API call that can
    // raise happens while this frame holds nothing that needs dropping (the
    // slices borrow strings on the Lua stack), so an error unwinding through
    // it leaks nothing.
    unsafe {
        let Some(&(find, _)) = ORIGINALS.get() else { return 0 };
        let haystack = string_arg(state, 1);
        let needle = string_arg(state, 2);
        let init = ffi::luaL_optinteger_(state, 3, 1);
        let plain = ffi::lua_toboolean(state, 4) != 0 || !needle.iter().any(|b| SPECIALS.contains(b));
        if !plain {
            return find(state);
        }
        // Luau's `posrelat` and start rules, exactly.
        let len = haystack.len() as i64;
        let mut start = init as i64;
        if start < 0 {
            start += len + 1;
        }
        let start = start.max(1);
        if start > len + 1 {
            ffi::lua_pushnil(state);
            return 1;
        }
        let from = (start - 1) as usize;
        match memchr::memmem::find(&haystack[from..], needle) {
            Some(at) => {
                let first = (from + at + 1) as c_int;
                ffi::lua_pushinteger_(state, first);
                ffi::lua_pushinteger_(state, first + needle.len() as c_int - 1);
                2
            }
            None => {
                ffi::lua_pushnil(state);
                1
            }
        }
    }
}

/// `string.split(s [, separator])`: linear for every separator.
unsafe extern "C-unwind" fn string_split(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: as in `string_find`. The `Finder` borrows the separator and
    // owns no heap memory, so an error raised by a push or a table store
    // (the memory limit) unwinds through nothing that needs dropping.
    unsafe {
        let Some(&(_, split)) = ORIGINALS.get() else { return 0 };
        let haystack = string_arg(state, 1);
        let separator: &[u8] = if ffi::lua_isnoneornil(state, 2) != 0 { b"," } else { string_arg(state, 2) };
        if separator.len() < 2 {
            return split(state);
        }
        let finder = memchr::memmem::Finder::new(separator);
        ffi::lua_createtable(state, 0, 0);
        let mut span = 0usize;
        let mut count: c_int = 0;
        while let Some(at) = finder.find(&haystack[span..]) {
            ffi::lua_pushlstring_(state, haystack[span..].as_ptr().cast(), at);
            count += 1;
            ffi::lua_rawseti_(state, -2, count);
            span += at + separator.len();
        }
        ffi::lua_pushlstring_(state, haystack[span..].as_ptr().cast(), haystack.len() - span);
        ffi::lua_rawseti_(state, -2, count + 1);
        1
    }
}

/// `collectgarbage([option])`, as in Luau's base library: `"collect"` (the
/// default) runs a full collection, `"count"` answers the heap's size in
/// KB (with the fraction, as mlua's does); anything else is refused.
unsafe extern "C-unwind" fn collectgarbage(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Luau as a C function; the option string lives on the
    // Lua stack for the whole call and this frame owns nothing to drop if
    // `luaL_error` unwinds through it.
    unsafe {
        let option = std::ffi::CStr::from_ptr(ffi::luaL_optstring(state, 1, c"collect".as_ptr()));
        match option.to_bytes() {
            b"collect" => {
                ffi::lua_gc(state, ffi::LUA_GCCOLLECT, 0);
                0
            }
            b"count" => {
                let kb = ffi::lua_gc(state, ffi::LUA_GCCOUNT, 0) as ffi::lua_Number;
                let bytes = ffi::lua_gc(state, ffi::LUA_GCCOUNTB, 0) as ffi::lua_Number;
                ffi::lua_pushnumber(state, kb + bytes / 1024.0);
                1
            }
            _ => ffi::luaL_error(state, c"collectgarbage must be called with 'count' or 'collect'".as_ptr()),
        }
    }
}
