//! The pool's watchdog: times out items at their deadline and, as the last
//! line of defence, abandons a runspace stuck in a C call.
//!
//! A stop reaches a script at its next interrupt (a function call or loop
//! back-edge), which is microseconds away in Luau code, and an item waiting
//! in a host call wakes on its own switch. A C function that loops on its
//! own (`table.sort` with a C comparator over millions of elements, say)
//! never gets there, and it blocks every item of its VM. When an item is
//! still running [`ABANDON_GRACE`] after its deadline or its stop, the
//! watchdog reports it `TimedOut` or `Stopped` at once, hands what its
//! lane had left to a fresh worker, and re-queues every other item of that
//! VM there too: they start again from the beginning. The old thread drops
//! its VM when the call returns. So the throttle and the pool's close still
//! hold; the abandoned thread only costs CPU until its call returns, and at
//! most the pool's `threads` threads are abandoned at once (past that, an
//! item stuck in C ends when its call does).

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::{Shared, Task};
use crate::control::{instant_ns, ns_instant, Control, IdMap, StopReason};

/// How often, at most, the watchdog looks at the running items.
const TICK: Duration = Duration::from_millis(10);

/// How long an item may run past its deadline or its stop before its
/// runspace is abandoned.
pub const ABANDON_GRACE: Duration = Duration::from_millis(100);

/// What a lane is running, in the form another thread can finish or hand on.
pub(crate) trait Held: Send {
    /// Ends the lane's running item as `reason` says (it is stuck in a C
    /// call; `deadline` was its deadline) and returns what a fresh worker
    /// must finish.
    fn take_over(self: Box<Self>, reason: StopReason, deadline: Option<Instant>) -> Option<Box<dyn Task>>;
    /// Returns the lane's work for a fresh worker: its VM is being
    /// abandoned, so its running item starts again there.
    fn restart(self: Box<Self>) -> Option<Box<dyn Task>>;
    /// Ends the lane's running item as stopped: the pool is closing and
    /// will not wait for it.
    fn close(self: Box<Self>);
    /// The lane's state, for the lane itself.
    fn as_any(&mut self) -> &mut dyn Any;
}

/// One worker as the pool, its watchdog and its runs see it.
pub(crate) struct Slot {
    pub(crate) control: Arc<Control>,
    /// What each lane runs, by lane.
    lanes: Mutex<IdMap<Box<dyn Held>>>,
    /// Set (under the lanes' lock) when the watchdog has given up on the
    /// worker: it must deliver nothing more and leave.
    abandoned: AtomicBool,
}

impl Slot {
    pub(crate) fn new() -> Slot {
        Slot {
            control: Arc::new(Control::default()),
            lanes: Mutex::new(IdMap::default()),
            abandoned: AtomicBool::new(false),
        }
    }

    fn lanes(&self) -> MutexGuard<'_, IdMap<Box<dyn Held>>> {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }

    /// Records what lane `lane` runs.
    pub(crate) fn hold(&self, lane: u64, held: Box<dyn Held>) {
        if !self.is_abandoned() {
            self.lanes().insert(lane, held);
        }
    }

    /// Works on what lane `lane` runs, under the lock; `None` once the
    /// watchdog took it (the worker is abandoned: deliver nothing more).
    pub(crate) fn with<T: 'static, R>(&self, lane: u64, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        let mut lanes = self.lanes();
        lanes.get_mut(&lane).and_then(|held| held.as_any().downcast_mut::<T>()).map(f)
    }

    /// Takes back what lane `lane` runs; `None` once the watchdog took it.
    pub(crate) fn release(&self, lane: u64) -> Option<Box<dyn Held>> {
        self.lanes().remove(&lane)
    }

    /// Gives up on the worker if it is still running `generation`: ends
    /// that item as `reason` says and returns what a fresh worker must
    /// run (`None` when the worker is not stuck after all).
    fn abandon(&self, generation: u64, reason: StopReason) -> Option<Vec<Box<dyn Task>>> {
        let mut lanes = self.lanes();
        // Under the lock no lane can deliver or move on: if the generation
        // still runs, the VM is stuck in it.
        if self.control.running().0 != generation {
            return None;
        }
        let stuck = self.control.lane();
        let deadline = self.control.deadline_ns().map(ns_instant);
        let mut takeover = Vec::new();
        for (lane, held) in lanes.drain() {
            let task = if lane == stuck { held.take_over(reason, deadline) } else { held.restart() };
            takeover.extend(task);
        }
        self.abandoned.store(true, Ordering::Release);
        Some(takeover)
    }

    /// Ends the worker's items as stopped and marks it abandoned (the pool
    /// is closing and will not wait for it).
    pub(crate) fn abandon_on_close(&self) {
        let mut lanes = self.lanes();
        for (_, held) in lanes.drain() {
            held.close();
        }
        self.abandoned.store(true, Ordering::Release);
    }
}

/// Ordinary Luau code stops within microseconds of a request, so a stop
/// this old means the worker is inside a C call.
struct Overdue {
    slot: Arc<Slot>,
    generation: u64,
    since: Instant,
}

/// The watchdog loop, until the pool drops `stop`.
pub(crate) fn watch(shared: &Arc<Shared>, stop: &Receiver<()>) {
    let mut overdue: Vec<Overdue> = Vec::new();
    loop {
        let now = Instant::now();
        let now_ns = instant_ns(now);
        let mut next = now + TICK;
        let slots = shared.slots();
        overdue.retain(|o| o.slot.control.running().0 == o.generation && !o.slot.is_abandoned());
        for slot in &slots {
            let (generation, _) = slot.control.running();
            if generation == 0 {
                continue;
            }
            let deadline = slot.control.deadline_ns();
            match deadline {
                Some(deadline) if deadline <= now_ns => slot.control.request_stop(generation, StopReason::TimedOut),
                Some(deadline) => next = next.min(ns_instant(deadline)),
                None => {}
            }
            let Some(reason) = slot.control.stop_reason() else { continue };
            let since = match overdue.iter().find(|o| Arc::ptr_eq(&o.slot, slot)) {
                Some(o) => o.since,
                None => {
                    // A timeout counts from the deadline, a stop from when
                    // the watchdog first saw it.
                    let since = deadline.filter(|_| reason == StopReason::TimedOut).map_or(now, ns_instant);
                    overdue.push(Overdue { slot: slot.clone(), generation, since });
                    since
                }
            };
            if now < since + ABANDON_GRACE {
                next = next.min(since + ABANDON_GRACE);
            } else if shared.may_abandon() {
                if let Some(takeover) = slot.abandon(generation, reason) {
                    shared.replace(slot, takeover);
                }
            }
        }
        let wait = next.saturating_duration_since(Instant::now()).max(Duration::from_micros(200));
        match stop.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}
