//! The caller's side of a run: the [`Results`] iterator, its
//! [`RunControl`], progress snapshots and halt rules.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::worker::Delivery;

/// How long the caller's iterator waits before taking results that a slow
/// item holds back in its chunk.
const STEAL_AFTER: Duration = Duration::from_millis(20);
use super::{Counters, Halt, HaltWhen, ItemResult, ProgressFn, RunProgress, RunShared};
use crate::pool::RunspacePool;

/// Stops a parallel run from any thread (a Ctrl-C handler, say).
///
/// ```
/// use runspace::{RunspacePool, Script, Status};
/// use serde_json::json;
/// let pool = RunspacePool::builder().max(2).open().unwrap();
/// let mut results = pool.parallel(&Script::new("sleep(3600)").unwrap()).run((0..10).map(|n| json!(n)));
/// results.control().stop();
/// assert!(results.all(|r| r.status == Status::Stopped));
/// ```
#[derive(Clone)]
pub struct RunControl {
    pool: RunspacePool,
    shared: Arc<RunShared>,
}

impl RunControl {
    pub(super) fn new(pool: RunspacePool, shared: Arc<RunShared>) -> RunControl {
        RunControl { pool, shared }
    }

    /// Takes no new items; running ones finish (or time out) and are reported.
    pub fn drain(&self) {
        self.shared.cancelled.store(true, Ordering::Release);
        self.shared.window.room.notify_all();
    }

    /// Takes no new items and stops the running ones at once (they are
    /// reported as `Stopped`).
    pub fn stop(&self) {
        self.drain();
        self.shared.aborted.store(true, Ordering::SeqCst);
        self.pool.stop_owner(self.shared.id);
    }

    /// Whether [`drain`](Self::drain) or [`stop`](Self::stop) was called.
    pub fn is_stopping(&self) -> bool {
        self.shared.cancelled.load(Ordering::Acquire)
    }
}

/// What a run was given besides its inputs.
pub(super) struct Extras {
    pub(super) halt: Option<Halt>,
    pub(super) total: Option<u64>,
    pub(super) progress: Option<(Duration, ProgressFn)>,
}

/// Results of a parallel run, as items finish (or in input order with
/// [`Parallel::ordered`](super::Parallel::ordered)). Dropping it stops the run.
pub struct Results {
    control: RunControl,
    receiver: Receiver<Delivery>,
    current: std::vec::IntoIter<ItemResult>,
    ordered: bool,
    /// Ordered mode: results waiting for their turn, by position.
    pending: BTreeMap<u64, ItemResult>,
    next_seq: u64,
    feeder: Option<thread::JoinHandle<()>>,
    counters: Arc<Counters>,
    started: Instant,
    /// Counts by status, kept on the caller's thread.
    tally: RunProgress,
    halt: Option<Halt>,
    halted: Option<Halt>,
    on_progress: Option<(Duration, ProgressFn)>,
    last_event: Instant,
    /// The final snapshot was sent.
    finished: bool,
}

impl Results {
    pub(super) fn new(
        control: RunControl,
        receiver: Receiver<Delivery>,
        ordered: bool,
        feeder: Option<thread::JoinHandle<()>>,
        extras: Extras,
    ) -> Results {
        let counters = control.shared.counters.clone();
        let now = Instant::now();
        Results {
            control,
            receiver,
            current: Vec::new().into_iter(),
            ordered,
            pending: BTreeMap::new(),
            next_seq: 0,
            feeder,
            counters,
            started: now,
            tally: RunProgress { total: extras.total, ..RunProgress::default() },
            halt: extras.halt,
            halted: None,
            on_progress: extras.progress,
            last_event: now,
            finished: false,
        }
    }

    /// A handle that stops this run from another thread.
    pub fn control(&self) -> RunControl {
        self.control.clone()
    }

    /// Inputs read so far, and whether the input is exhausted.
    pub fn inputs_read(&self) -> (u64, bool) {
        (self.counters.read.load(Ordering::Relaxed), self.counters.input_done.load(Ordering::Acquire))
    }

    /// The most items this run has held in memory at once (read but not yet
    /// returned): bounded by the window, never by the input's length.
    pub fn peak_in_memory(&self) -> u64 {
        self.counters.peak.load(Ordering::Relaxed)
    }

    /// A snapshot of the run's progress: counts by status of the items
    /// handed out so far, rate, ETA, the current activity.
    pub fn progress(&self) -> RunProgress {
        let mut p = self.tally.clone();
        p.read = self.counters.read.load(Ordering::Relaxed);
        p.batches = self.counters.batches.load(Ordering::Relaxed);
        p.timed(self.started.elapsed());
        p.finished = self.finished;
        p
    }

    /// The halt rule that stopped this run early, if one did.
    pub fn halted(&self) -> Option<Halt> {
        self.halted
    }

    #[inline]
    fn hand_out(&mut self, item: ItemResult) -> ItemResult {
        self.counters.in_memory.fetch_sub(1, Ordering::Relaxed);
        self.tally.count(item.status, item.attempts);
        if let Some(last) = item.progress.last() {
            self.tally.activity = Some(last.clone());
        }
        if let Some(halt) = self.halt {
            if self.halted.is_none() && halt.fires(&self.tally) {
                self.halted = Some(halt);
                match halt.when {
                    HaltWhen::Now => self.control.stop(),
                    HaltWhen::Soon => self.control.drain(),
                }
            }
        }
        item
    }

    /// Calls the progress callback if it is due (or `last`).
    fn emit_progress(&mut self, last: bool) {
        let Some((every, _)) = &self.on_progress else { return };
        if !last && self.last_event.elapsed() < *every {
            return;
        }
        self.last_event = Instant::now();
        self.finished = last;
        let snapshot = self.progress();
        if let Some((_, callback)) = &mut self.on_progress {
            callback(&snapshot);
        }
    }
}

/// What [`Results::next_timeout`] found.
// Boxing the item would cost an allocation per item on the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Next {
    /// The next result.
    Item(ItemResult),
    /// Nothing arrived in time; the run goes on.
    Idle,
    /// The run is over: every result has been handed out.
    Done,
}

impl Results {
    /// Like [`Iterator::next`], but gives up after `timeout` with
    /// [`Next::Idle`], so a caller can flush output or redraw progress while
    /// slow items run.
    pub fn next_timeout(&mut self, timeout: Duration) -> Next {
        // Clamped: `Duration::MAX` (wait for ever) must not overflow `Instant`.
        self.next_within(Some(timeout.min(crate::units::MAX_DURATION)))
    }

    /// The run is over: sends the final progress event, once.
    fn done(&mut self) -> Next {
        self.finished = true;
        if self.on_progress.is_some() {
            self.emit_progress(true);
            self.on_progress = None;
        }
        Next::Done
    }

    /// The next result, waiting at most `timeout` (measured from the
    /// first wait: a result at hand costs no look at the clock).
    fn next_within(&mut self, timeout: Option<Duration>) -> Next {
        let mut deadline = None;
        loop {
            if self.ordered {
                if let Some(item) = self.pending.remove(&self.next_seq) {
                    self.next_seq += 1;
                    let window = &self.control.shared.window;
                    *window.emitted.lock().unwrap_or_else(|e| e.into_inner()) = self.next_seq;
                    window.room.notify_one();
                    return Next::Item(self.hand_out(item));
                }
            } else if let Some(item) = self.current.next() {
                return Next::Item(self.hand_out(item));
            }
            // Wake up at least every STEAL_AFTER to take results a slow item
            // holds back in its chunk. Once stopping, nothing new is read:
            // when nothing is left in flight the run is over, even if the
            // feeder is still blocked in a slow input (a terminal, say).
            let now = Instant::now();
            let deadline = *deadline.get_or_insert_with(|| timeout.map(|t| now + t));
            let poll = now + STEAL_AFTER;
            match self.receiver.recv_deadline(deadline.map_or(poll, |d| d.min(poll))) {
                Ok(delivery) => {
                    self.control.shared.room.notify_one();
                    self.accept(delivery)
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.steal() {
                        continue;
                    }
                    if self.control.is_stopping() && self.counters.in_memory.load(Ordering::Relaxed) == 0 {
                        if !self.finish_gaps() {
                            return self.done();
                        }
                    } else if deadline.is_some_and(|d| Instant::now() >= d) {
                        self.emit_progress(false);
                        return Next::Idle;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    if !self.finish_gaps() {
                        return self.done();
                    }
                }
            }
        }
    }

    fn accept(&mut self, delivery: Delivery) {
        if self.ordered {
            let first = delivery.first_seq;
            self.pending.extend(delivery.items.into_iter().enumerate().map(|(i, r)| (first + i as u64, r)));
        } else {
            self.current = delivery.items.into_iter();
        }
        self.emit_progress(false);
    }

    /// Takes the results that running chunks have finished but not yet
    /// delivered. True if there were any.
    fn steal(&mut self) -> bool {
        let staged: Vec<_> = self.control.shared.staging.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut stole = false;
        for staging in staged {
            if let Some(delivery) = staging.take() {
                stole = true;
                if self.ordered {
                    self.accept(delivery);
                } else {
                    // Unordered: queue behind what is being handed out now.
                    let mut items: Vec<_> = std::mem::take(&mut self.current).collect();
                    items.extend(delivery.items);
                    self.current = items.into_iter();
                    self.emit_progress(false);
                }
            }
        }
        stole
    }

    /// After a stop, skipped items leave gaps in the order: move on to the
    /// next result held, if any. False when none is held.
    fn finish_gaps(&mut self) -> bool {
        match self.pending.keys().next() {
            Some(&seq) => {
                self.next_seq = seq;
                true
            }
            None => false,
        }
    }
}

impl Iterator for Results {
    type Item = ItemResult;

    fn next(&mut self) -> Option<ItemResult> {
        match self.next_within(None) {
            Next::Item(item) => Some(item),
            Next::Idle | Next::Done => None,
        }
    }
}

impl Drop for Results {
    fn drop(&mut self) {
        self.control.stop();
        if let Some(feeder) = self.feeder.take() {
            // The feeder exits at its next step; it is only left to finish on
            // its own if it is blocked inside the caller's input iterator.
            if feeder.is_finished() {
                let _ = feeder.join();
            }
        }
    }
}
