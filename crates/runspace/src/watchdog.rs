//! The pool's watchdog: times out items at their deadline and, as the last
//! line of defence, abandons a runspace stuck in a C call.
//!
//! A stop reaches a script at its next interrupt (a function call or loop
//! back-edge), which is microseconds away in Luau code. A C function that
//! loops on its own (`table.sort` with a C comparator over millions of
//! elements, say) never gets there. When an item is still running
//! [`ABANDON_GRACE`] after its deadline or its stop, the watchdog reports it
//! `TimedOut` or `Stopped` at once, hands the rest of its chunk to a fresh
//! worker, and leaves the old thread to drop its VM when the call returns.
//! So the throttle (runspaces taking work) and the pool's close still hold;
//! the abandoned thread only costs CPU until its call returns, and at most
//! the pool's `max` threads are abandoned at once (past that, an item stuck
//! in C ends when its call does).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::control::{instant_ns, ns_instant, Control, StopReason};
use crate::invocation::Pending;
use crate::parallel::{ChunkTask, Takeover};
use crate::pool::Shared;

/// How often, at most, the watchdog looks at the running items.
const TICK: Duration = Duration::from_millis(10);

/// How long an item may run past its deadline or its stop before its
/// runspace is abandoned.
pub const ABANDON_GRACE: Duration = Duration::from_millis(100);

/// One worker as the pool, its watchdog and its runs see it.
pub(crate) struct Slot {
    pub(crate) control: Arc<Control>,
    task: Mutex<Task>,
    /// Set (under the task's lock) when the watchdog has given up on the
    /// worker: it must deliver nothing more and leave.
    abandoned: AtomicBool,
}

/// What a worker is running, in the form another thread can finish.
pub(crate) enum Task {
    Idle,
    Invoke(Arc<Pending>),
    Chunk(ChunkTask),
}

impl Slot {
    pub(crate) fn new() -> Slot {
        Slot { control: Arc::new(Control::default()), task: Mutex::new(Task::Idle), abandoned: AtomicBool::new(false) }
    }

    /// The task, locked. A worker checks [`Slot::is_abandoned`] under this
    /// lock before it delivers anything.
    pub(crate) fn task(&self) -> MutexGuard<'_, Task> {
        self.task.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }

    /// Gives up on the worker if it is still running `generation`: ends
    /// its item as `reason` says and returns what a fresh worker must
    /// finish (`None` when nothing is left, or when the worker is not
    /// stuck after all).
    fn abandon(&self, generation: u64, reason: StopReason) -> Option<Option<Takeover>> {
        let mut task = self.task();
        // Under the lock the worker cannot move on to the next item: if
        // the generation still runs, it is stuck in it.
        if self.control.running().0 != generation {
            return None;
        }
        let deadline = self.control.deadline_ns().map(ns_instant);
        let takeover = match std::mem::replace(&mut *task, Task::Idle) {
            Task::Idle => return None,
            Task::Invoke(pending) => {
                pending.finish_abandoned(reason, deadline);
                None
            }
            Task::Chunk(chunk) => match chunk.take_over(reason, deadline) {
                Ok(takeover) => Some(takeover),
                Err(chunk) => {
                    *task = Task::Chunk(chunk);
                    return None;
                }
            },
        };
        self.abandoned.store(true, Ordering::Release);
        Some(takeover)
    }

    /// Ends the worker's item as stopped and marks it abandoned (the pool
    /// is closing and will not wait for it).
    pub(crate) fn abandon_on_close(&self) {
        let mut task = self.task();
        if let Task::Invoke(pending) = &*task {
            pending.finish_abandoned(StopReason::Stopped, self.control.deadline_ns().map(ns_instant));
        }
        *task = Task::Idle;
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
