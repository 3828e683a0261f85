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
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::raw::c_int;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use mlua::ffi;

use crate::timer::Timer;

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

/// The stop switch of one item (an invocation, or one input of a parallel
/// run): why it was asked to stop, and its deadline.
///
/// Items of one runspace run as Luau threads side by side, so each has its
/// own switch: stopping one, or passing its deadline, never touches its
/// neighbours. A host call that waits races its work against the switch
/// ([`Switch::guard`]), so a stop drops the pending work (the request, the
/// child process, the timer) at once.
#[derive(Debug, Default)]
pub(crate) struct Switch {
    /// 0 while it runs on; else the [`StopReason`]. The first reason wins.
    reason: AtomicU8,
    /// The deadline in nanoseconds since [`epoch`]; 0 for none.
    deadline: u64,
    /// Wakes the host call the item is waiting in.
    wake: tokio::sync::Notify,
}

impl Switch {
    /// A switch for an item that must end by `deadline`.
    pub(crate) fn new(deadline: Option<Instant>) -> Switch {
        Switch { reason: AtomicU8::new(0), deadline: deadline.map_or(0, instant_ns), wake: tokio::sync::Notify::new() }
    }

    /// Asks the item to stop. The first request wins; later ones change nothing.
    pub(crate) fn stop(&self, reason: StopReason) {
        if self.reason.compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.wake.notify_waiters();
        }
    }

    /// Why the item was asked to stop, if it was.
    #[inline]
    pub(crate) fn reason(&self) -> Option<StopReason> {
        match self.reason.load(Ordering::Acquire) {
            0 => None,
            r if r == StopReason::TimedOut as u8 => Some(StopReason::TimedOut),
            _ => Some(StopReason::Stopped),
        }
    }

    /// The item's deadline, if it has one.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        (self.deadline != 0).then(|| ns_instant(self.deadline))
    }

    /// A host call's way to check for a stop (or a passed deadline, which
    /// is then recorded as the reason) between steps of its work.
    pub(crate) fn check(&self) -> Result<(), StopReason> {
        if let Some(reason) = self.reason() {
            return Err(reason);
        }
        if self.deadline != 0 && self.deadline <= instant_ns(Instant::now()) {
            self.stop(StopReason::TimedOut);
            return Err(self.reason().unwrap_or(StopReason::TimedOut));
        }
        Ok(())
    }

    /// Runs `work` until it ends, the item is stopped, or its deadline
    /// passes; in the last two cases `work` is dropped unfinished (which
    /// cancels what it was waiting for) and the reason comes back.
    #[cfg(any(feature = "http", feature = "net", feature = "exec"))]
    pub(crate) async fn guard<F: std::future::Future>(&self, work: F) -> Result<F::Output, StopReason> {
        let stopped = self.wake.notified();
        tokio::pin!(stopped);
        // Registered before the check, so a stop between the two still wakes us.
        stopped.as_mut().enable();
        self.check()?;
        let deadline = self.deadline();
        let timer = async move {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = stopped => Err(self.reason().unwrap_or(StopReason::Stopped)),
            _ = timer => {
                self.stop(StopReason::TimedOut);
                Err(self.reason().unwrap_or(StopReason::TimedOut))
            }
            output = work => Ok(output),
        }
    }

    /// Sleeps for `duration` unless the item is stopped or times out first.
    ///
    /// One timer for both the wake-up and the deadline (through [`guard`]
    /// it took two): every sleeping item holds this future.
    ///
    /// [`guard`]: Switch::guard
    pub(crate) async fn sleep(&self, duration: Duration, timer: &Timer) -> Result<(), StopReason> {
        let stopped = self.wake.notified();
        tokio::pin!(stopped);
        // Registered before the check, so a stop between the two still wakes us.
        stopped.as_mut().enable();
        self.check()?;
        // Clamped (to a year) so that the sum cannot overflow.
        let wake = Instant::now() + duration.min(crate::units::MAX_DURATION);
        let (until, times_out) = match self.deadline() {
            Some(deadline) if deadline < wake => (deadline, true),
            _ => (wake, false),
        };
        tokio::select! {
            biased;
            _ = stopped => Err(self.reason().unwrap_or(StopReason::Stopped)),
            _ = crate::timer::sleep_until(timer, until) => {
                if times_out {
                    self.stop(StopReason::TimedOut);
                    return Err(self.reason().unwrap_or(StopReason::TimedOut));
                }
                Ok(())
            }
        }
    }
}

/// A map keyed by generations or lane numbers: small integers handed out
/// in sequence need no SipHash (which was the costliest step of a trivial
/// item), a multiply spreads them well enough.
pub(crate) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// The hasher of [`IdMap`].
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The switchboard of one runspace, shared with whoever may stop its items
/// (the pool's watchdog, invocation handles, a run being stopped).
///
/// It knows every item in flight (by generation: the item's sequence number
/// under this switchboard) and which one the VM is running right now, so
/// the watchdog can time out a script that computes past its deadline and
/// notice one stuck in a C call.
#[derive(Debug, Default)]
pub(crate) struct Control {
    /// Generation of the item the VM runs now; 0 when none.
    current: AtomicU64,
    /// Deadline of that item, in nanoseconds since [`epoch`]; 0 for none.
    deadline: AtomicU64,
    /// Who that item belongs to (a parallel run's id), 0 for none.
    owner: AtomicU64,
    /// The pool lane that item runs in.
    lane: AtomicU64,
    /// The last generation handed out. Kept here, not in the runspace, so a
    /// runspace opened to replace another continues the sequence: a late
    /// request for the old runspace's item can never match a new one.
    generations: AtomicU64,
    /// The collection policy of the VM this switchboard drives: see [`GcTrigger`].
    gc: GcTrigger,
    /// Every item in flight: generation → (owner, switch).
    items: Mutex<IdMap<(u64, Arc<Switch>)>>,
}

impl Control {
    /// A new generation: the number of the next item run under this switchboard.
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

    fn items(&self) -> std::sync::MutexGuard<'_, IdMap<(u64, Arc<Switch>)>> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that generation `gen`, of `owner`, is in flight.
    pub(crate) fn admit(&self, gen: u64, owner: u64, switch: Arc<Switch>) {
        self.items().insert(gen, (owner, switch));
    }

    /// Records that generation `gen` has ended.
    pub(crate) fn dismiss(&self, gen: u64) {
        self.items().remove(&gen);
    }

    /// Marks generation `gen`, for `owner` on `lane`, as the one the VM
    /// runs now, until `deadline`.
    pub(crate) fn begin(&self, gen: u64, owner: u64, lane: u64, deadline: Option<Instant>) {
        self.owner.store(owner, Ordering::Relaxed);
        self.lane.store(lane, Ordering::Relaxed);
        self.deadline.store(deadline.map_or(0, instant_ns), Ordering::Relaxed);
        self.current.store(gen, Ordering::SeqCst);
    }

    /// Marks the VM idle (the item yielded or ended).
    pub(crate) fn end(&self) {
        self.current.store(0, Ordering::Release);
        self.deadline.store(0, Ordering::Relaxed);
        self.owner.store(0, Ordering::Relaxed);
    }

    /// The generation the VM runs now (0 when none) and its owner.
    pub(crate) fn running(&self) -> (u64, u64) {
        let gen = self.current.load(Ordering::SeqCst);
        (gen, self.owner.load(Ordering::Relaxed))
    }

    /// The pool lane of the item the VM runs now.
    pub(crate) fn lane(&self) -> u64 {
        self.lane.load(Ordering::Relaxed)
    }

    /// The deadline of the item the VM runs now, if it has one.
    pub(crate) fn deadline_ns(&self) -> Option<u64> {
        match self.deadline.load(Ordering::Relaxed) {
            0 => None,
            d => Some(d),
        }
    }

    /// Asks generation `gen` to stop; a no-op once it has ended.
    pub(crate) fn request_stop(&self, gen: u64, reason: StopReason) {
        if let Some((_, switch)) = self.items().get(&gen) {
            switch.stop(reason);
        }
    }

    /// Asks every item in flight to stop.
    pub(crate) fn stop_all(&self, reason: StopReason) {
        for (_, switch) in self.items().values() {
            switch.stop(reason);
        }
    }

    /// Asks the items in flight that belong to `owner` to stop.
    pub(crate) fn stop_owner(&self, owner: u64) {
        for (of, switch) in self.items().values() {
            if *of == owner {
                switch.stop(StopReason::Stopped);
            }
        }
    }

    /// Why the item the VM runs now was asked to stop, if it was.
    pub(crate) fn stop_reason(&self) -> Option<StopReason> {
        let gen = self.current.load(Ordering::SeqCst);
        if gen == 0 {
            return None;
        }
        self.items().get(&gen).and_then(|(_, s)| s.reason())
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
    static ACTIVE: Cell<(*const Control, *const Switch)> = const { Cell::new((ptr::null(), ptr::null())) };
}

/// Makes `control` and the running item's `switch` the ones the interrupt
/// callback checks on this thread until the guard drops.
pub(crate) struct ActiveGuard((*const Control, *const Switch));

impl ActiveGuard {
    pub(crate) fn new(control: &Control, switch: &Switch) -> ActiveGuard {
        ActiveGuard(ACTIVE.with(|a| a.replace((control, switch))))
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
    let (control, switch) = ACTIVE.with(|a| a.get());
    if control.is_null() || switch.is_null() {
        return;
    }
    // SAFETY: the pointers are set by an `ActiveGuard` that outlives the
    // call into Lua that got us here, and the guard borrows both.
    let (control, switch) = unsafe { (&*control, &*switch) };
    if gc >= 0 {
        // A collector step, which only allocation brings about: no place to
        // raise or collect, but the place to look at the heap's size, so
        // the safepoint path below stays one load.
        // SAFETY: reading the heap size is allowed anywhere.
        control.gc.allocating(|| unsafe { ffi::lua_gc(state, ffi::LUA_GCCOUNT, 0) } as usize);
        return;
    }
    if let Some(reason) = switch.reason() {
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

    #[test]
    fn requests_reach_only_their_own_generation() {
        let c = Control::default();
        let (five, six) = (Arc::new(Switch::new(None)), Arc::new(Switch::new(None)));
        c.admit(5, 0, five.clone());
        c.admit(6, 0, six.clone());
        c.request_stop(5, StopReason::TimedOut);
        assert_eq!(five.reason(), Some(StopReason::TimedOut));
        assert_eq!(six.reason(), None);
        c.dismiss(5);
        c.request_stop(4, StopReason::Stopped);
        c.request_stop(5, StopReason::Stopped);
        assert_eq!(six.reason(), None);
        c.request_stop(6, StopReason::Stopped);
        assert_eq!(six.reason(), Some(StopReason::Stopped));
        // The first reason wins.
        six.stop(StopReason::TimedOut);
        assert_eq!(six.reason(), Some(StopReason::Stopped));
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

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    #[test]
    fn sleep_wakes_on_stop() {
        let s = Arc::new(Switch::new(None));
        let s2 = s.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            s2.stop(StopReason::Stopped);
        });
        let start = Instant::now();
        assert_eq!(block_on(s.sleep(Duration::from_secs(3600), &Timer::default())), Err(StopReason::Stopped));
        assert!(start.elapsed() < Duration::from_secs(5));
        t.join().unwrap();
    }

    #[test]
    fn sleep_honours_the_deadline() {
        let s = Switch::new(Some(Instant::now() + Duration::from_millis(10)));
        assert_eq!(block_on(s.sleep(Duration::from_secs(3600), &Timer::default())), Err(StopReason::TimedOut));
        assert_eq!(s.reason(), Some(StopReason::TimedOut));
        let s = Switch::new(None);
        assert_eq!(block_on(s.sleep(Duration::from_millis(1), &Timer::default())), Ok(()));
    }
}
