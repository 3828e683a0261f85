//! Stopping a running script: the cheap interrupt check and cancellable waits.
//!
//! Luau calls an interrupt callback at every function call and loop
//! back-edge, so its cost is paid millions of times a second. mlua's own
//! `set_interrupt` goes through a boxed Rust closure and made tight loops
//! about 1.6× slower here; a plain C callback that reads two atomics costs
//! next to nothing. mlua keeps its own data in the callbacks' `userdata`
//! slot, so the callback finds the [`Control`] of the running invocation
//! through a thread-local pointer instead: a runspace is only ever driven by
//! the thread that opened it.

use std::cell::Cell;
use std::os::raw::c_int;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use mlua::ffi;

/// Why an invocation was interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    Stopped = 1,
    TimedOut = 2,
}

impl StopReason {
    pub(crate) fn message(self) -> &'static str {
        match self {
            StopReason::Stopped => "stopped",
            StopReason::TimedOut => "timed out",
        }
    }
}

/// The stop switch of one runspace, shared with whoever may stop it (the
/// pool's watchdog, an invocation handle, a run being dropped).
///
/// Requests name the *generation* (the invocation's sequence number in this
/// runspace) they are meant for, so a late request for an invocation that
/// already ended never hits the next one.
#[derive(Debug, Default)]
pub(crate) struct Control {
    /// Generation of the invocation running now; 0 when idle.
    current: AtomicU64,
    /// The newest stop request: `generation << 2 | reason`. Only grows.
    request: AtomicU64,
    /// Deadline of the running invocation, in nanoseconds since [`epoch`]; 0 for none.
    deadline: AtomicU64,
    /// Who the running invocation belongs to (a parallel run's id), 0 for none.
    owner: AtomicU64,
    /// The last generation handed out. Kept here, not in the runspace, so a
    /// runspace opened to replace another continues the sequence: a late
    /// request for the old runspace's invocation can never match a new one.
    generations: AtomicU64,
    /// The collection policy of the VM this switch drives: see [`GcTrigger`].
    gc: GcTrigger,
    sleepers: Mutex<()>,
    wake: Condvar,
}

impl Control {
    /// A new generation: the number of the next invocation run under this switch.
    pub(crate) fn next_generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Turns on collection before the memory limit of `limit` bytes is reached.
    pub(crate) fn set_memory_limit(&self, limit: usize) {
        self.gc.set_limit(limit);
    }

    /// Lets the next item collect again once it passes the high-water mark
    /// (a previous item may have left the trigger above it).
    pub(crate) fn rearm_gc(&self) {
        self.gc.rearm();
    }

    /// Marks generation `gen` as running, for `owner`, until `deadline`.
    pub(crate) fn begin(&self, gen: u64, owner: u64, deadline: Option<Instant>) {
        self.owner.store(owner, Ordering::Relaxed);
        self.deadline.store(deadline.map_or(0, instant_ns), Ordering::Relaxed);
        self.current.store(gen, Ordering::SeqCst);
    }

    /// Marks the runspace idle.
    pub(crate) fn end(&self) {
        self.current.store(0, Ordering::Release);
        self.deadline.store(0, Ordering::Relaxed);
        self.owner.store(0, Ordering::Relaxed);
    }

    /// The generation running now (0 when idle) and its owner.
    pub(crate) fn running(&self) -> (u64, u64) {
        let gen = self.current.load(Ordering::SeqCst);
        (gen, self.owner.load(Ordering::Relaxed))
    }

    /// The running invocation's deadline, if it has one.
    pub(crate) fn deadline_ns(&self) -> Option<u64> {
        match self.deadline.load(Ordering::Relaxed) {
            0 => None,
            d => Some(d),
        }
    }

    /// Asks generation `gen` to stop; a no-op once it has ended.
    pub(crate) fn request_stop(&self, gen: u64, reason: StopReason) {
        if gen == 0 {
            return;
        }
        self.request.fetch_max(gen << 2 | reason as u64, Ordering::AcqRel);
        let _guard = self.sleepers.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.notify_all();
    }

    /// Whether the running invocation has been asked to stop, and why.
    #[inline]
    pub(crate) fn stop_reason(&self) -> Option<StopReason> {
        let request = self.request.load(Ordering::Acquire);
        if request == 0 || request >> 2 != self.current.load(Ordering::Relaxed) {
            return None;
        }
        Some(if request & 3 == StopReason::TimedOut as u64 { StopReason::TimedOut } else { StopReason::Stopped })
    }

    /// Sleeps for `duration`, waking early (with the reason) when the
    /// invocation is stopped or reaches its deadline.
    pub(crate) fn sleep(&self, duration: Duration) -> Result<(), StopReason> {
        let until = Instant::now() + duration;
        let mut guard = self.sleepers.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(reason) = self.stop_reason() {
                return Err(reason);
            }
            let now = Instant::now();
            let deadline = self.deadline_ns().map(ns_instant);
            if deadline.is_some_and(|d| d <= now) {
                // `time_out` takes the sleepers' lock to wake others.
                drop(guard);
                return Err(self.time_out());
            }
            if until <= now {
                return Ok(());
            }
            let wake_at = deadline.map_or(until, |d| d.min(until));
            guard = self.wake.wait_timeout(guard, wake_at - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Records that the running invocation passed its deadline. A host call
    /// can notice the deadline before the pool's watchdog does; recording it
    /// makes the invocation end as timed out rather than failed.
    fn time_out(&self) -> StopReason {
        self.request_stop(self.current.load(Ordering::Acquire), StopReason::TimedOut);
        StopReason::TimedOut
    }

    /// A host call's way to check for a stop between steps of blocking work.
    pub(crate) fn check(&self) -> Result<(), StopReason> {
        match self.stop_reason() {
            Some(r) => Err(r),
            None => match self.deadline_ns() {
                Some(d) if d <= instant_ns(Instant::now()) => Err(self.time_out()),
                _ => Ok(()),
            },
        }
    }
}

/// When the interrupt callback runs a full collection.
///
/// Luau has no emergency collection: an allocation past the memory limit
/// fails even when most of the heap is garbage the incremental collector
/// has not reached yet (a loop making 8 MB strings fails a 64 MB limit
/// while holding 17 MB). The allocator cannot collect (it runs inside the
/// collector's own allocations), so the interrupt does it at a safepoint:
/// once the heap passes three quarters of the limit, and then again only
/// after it has grown by half the headroom left (at least 1/16 of the
/// limit) since the last collection, so a heap that is really full is not
/// collected over and over. The heap's size is read at collector steps
/// (which only allocation causes), so the check at every safepoint is one
/// load.
#[derive(Debug)]
struct GcTrigger {
    /// Heap size in KB at which the next collection runs; `usize::MAX` when
    /// the VM has no limit (the hot path then costs one load).
    at_kb: AtomicUsize,
    /// The limit in KB; 0 for none.
    limit_kb: AtomicUsize,
    /// A collector step saw the heap past `at_kb`: the next safepoint collects.
    due: AtomicBool,
}

impl Default for GcTrigger {
    fn default() -> GcTrigger {
        GcTrigger { at_kb: AtomicUsize::new(usize::MAX), limit_kb: AtomicUsize::new(0), due: AtomicBool::new(false) }
    }
}

impl GcTrigger {
    fn high_water(limit_kb: usize) -> usize {
        limit_kb - limit_kb / 4
    }

    fn set_limit(&self, bytes: usize) {
        let limit_kb = (bytes / 1024).max(1);
        self.limit_kb.store(limit_kb, Ordering::Relaxed);
        self.at_kb.store(GcTrigger::high_water(limit_kb), Ordering::Relaxed);
    }

    fn rearm(&self) {
        let limit_kb = self.limit_kb.load(Ordering::Relaxed);
        if limit_kb > 0 {
            self.at_kb.fetch_min(GcTrigger::high_water(limit_kb), Ordering::Relaxed);
        }
    }

    #[cfg(test)]
    fn at_kb(&self) -> usize {
        self.at_kb.load(Ordering::Relaxed)
    }

    /// Called at a collector step, which only allocation brings about:
    /// notes whether the heap (`used_kb`) has passed the trigger.
    #[inline]
    fn allocating(&self, used_kb: impl FnOnce() -> usize) {
        let at_kb = self.at_kb.load(Ordering::Relaxed);
        if at_kb != usize::MAX && used_kb() >= at_kb {
            self.due.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the next safepoint should collect; clears the request.
    #[inline]
    fn take_due(&self) -> bool {
        self.due.load(Ordering::Relaxed) && self.due.swap(false, Ordering::Relaxed)
    }

    /// Sets the next trigger after a collection left `live_kb` in use.
    fn collected(&self, live_kb: usize) {
        let limit_kb = self.limit_kb.load(Ordering::Relaxed);
        let step = (limit_kb.saturating_sub(live_kb) / 2).max(limit_kb / 16);
        self.at_kb.store((live_kb + step).max(GcTrigger::high_water(limit_kb)), Ordering::Relaxed);
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// An instant as nanoseconds since the process-wide epoch (at least 1).
pub(crate) fn instant_ns(at: Instant) -> u64 {
    (at.saturating_duration_since(epoch()).as_nanos() as u64).max(1)
}

/// The inverse of [`instant_ns`].
pub(crate) fn ns_instant(ns: u64) -> Instant {
    epoch() + Duration::from_nanos(ns)
}

thread_local! {
    static ACTIVE: Cell<*const Control> = const { Cell::new(ptr::null()) };
}

/// Makes `control` the one the interrupt callback checks on this thread
/// until the guard drops.
pub(crate) struct ActiveGuard(*const Control);

impl ActiveGuard {
    pub(crate) fn new(control: &Control) -> ActiveGuard {
        ActiveGuard(ACTIVE.with(|a| a.replace(control)))
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.set(self.0));
    }
}

/// Installs the interrupt callback on a VM.
pub(crate) fn install_interrupt(lua: &mlua::Lua) {
    // SAFETY: `exec_raw` hands us the VM's running state; the callbacks
    // struct is global to the VM and lives as long as it.
    let result: mlua::Result<()> = unsafe {
        lua.exec_raw((), |state| {
            (*ffi::lua_callbacks(state)).interrupt = Some(on_interrupt);
        })
    };
    result.expect("setting a callback cannot fail");
}

unsafe extern "C-unwind" fn on_interrupt(state: *mut ffi::lua_State, gc: c_int) {
    let control = ACTIVE.with(|a| a.get());
    if control.is_null() {
        return;
    }
    // SAFETY: the pointer is set by an `ActiveGuard` that outlives the call
    // into Lua that got us here.
    let control = unsafe { &*control };
    if gc >= 0 {
        // A collector step, which only allocation brings about: no place to
        // raise or collect, but the place to look at the heap's size, so
        // the safepoint path below stays one load.
        // SAFETY: reading the heap size is allowed anywhere.
        control.gc.allocating(|| unsafe { ffi::lua_gc(state, ffi::LUA_GCCOUNT, 0) } as usize);
        return;
    }
    if let Some(reason) = control.stop_reason() {
        // The request stays set, so a `pcall` that catches this error is
        // interrupted again at its next safepoint.
        let message: &[u8] = match reason {
            StopReason::Stopped => b"stopped\0",
            StopReason::TimedOut => b"timed out\0",
        };
        // SAFETY: raising from the interrupt is how Luau hosts stop scripts.
        unsafe { ffi::luaL_error(state, message.as_ptr().cast()) };
    }
    if control.gc.take_due() {
        // SAFETY: `state` is the running VM at a safepoint. A full collection
        // here is what `collectgarbage("collect")` does from a script: the VM
        // saved its program counter before calling us (as it does before any
        // call), every live value is reachable from the stack or the
        // registry, and Luau's collector never moves objects, so pointers the
        // interrupted C function holds (the pattern matcher calls us too)
        // into strings on its stack stay valid.
        unsafe {
            ffi::lua_gc(state, ffi::LUA_GCCOLLECT, 0);
            control.gc.collected(ffi::lua_gc(state, ffi::LUA_GCCOUNT, 0) as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn stale_requests_do_not_hit_the_next_generation() {
        let c = Control::default();
        c.begin(5, 0, None);
        c.request_stop(5, StopReason::TimedOut);
        assert_eq!(c.stop_reason(), Some(StopReason::TimedOut));
        c.end();
        c.begin(6, 0, None);
        assert_eq!(c.stop_reason(), None);
        c.request_stop(4, StopReason::Stopped);
        assert_eq!(c.stop_reason(), None);
        c.request_stop(6, StopReason::Stopped);
        assert_eq!(c.stop_reason(), Some(StopReason::Stopped));
    }

    #[test]
    fn collections_start_at_three_quarters_and_back_off_when_the_heap_is_full() {
        let gc = GcTrigger::default();
        assert_eq!(gc.at_kb(), usize::MAX, "no limit, no collections");
        gc.set_limit(64 << 20);
        assert_eq!(gc.at_kb(), 48 << 10);
        // Mostly garbage: back to the high-water mark.
        gc.collected(17 << 10);
        assert_eq!(gc.at_kb(), 48 << 10);
        // Really full: wait for half the headroom, at least 1/16 of the limit.
        gc.collected(56 << 10);
        assert_eq!(gc.at_kb(), 60 << 10);
        gc.collected(63 << 10);
        assert_eq!(gc.at_kb(), 67 << 10);
        // The next item may collect at the high-water mark again.
        gc.rearm();
        assert_eq!(gc.at_kb(), 48 << 10);
    }

    #[test]
    fn sleep_wakes_on_stop() {
        let c = Arc::new(Control::default());
        c.begin(1, 0, None);
        let c2 = c.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            c2.request_stop(1, StopReason::Stopped);
        });
        let start = Instant::now();
        assert_eq!(c.sleep(Duration::from_secs(3600)), Err(StopReason::Stopped));
        assert!(start.elapsed() < Duration::from_secs(5));
        t.join().unwrap();
    }

    #[test]
    fn sleep_honours_the_deadline() {
        let c = Control::default();
        c.begin(1, 0, Some(Instant::now() + Duration::from_millis(10)));
        assert_eq!(c.sleep(Duration::from_secs(3600)), Err(StopReason::TimedOut));
        c.end();
        c.begin(2, 0, None);
        assert_eq!(c.sleep(Duration::from_millis(1)), Ok(()));
    }
}
