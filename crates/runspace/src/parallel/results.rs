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

    #[cfg(test)]
    pub(super) fn shared(&self) -> &Arc<RunShared> {
        &self.shared
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
    /// Results received and not yet handed out, the next first (ordered
    /// mode: the next in order, moved here from `pending`).
    current: Received,
    /// The front of `current` was lent out ([`Results::next_ref_timeout`]):
    /// move past it before looking for the next.
    lent: bool,
    /// Items handed out and not yet subtracted from the shared in-memory
    /// count: unordered, it is updated once per delivery, not per item; the
    /// lag (one delivery at most) only ever makes the feeder wait early.
    handed: u64,
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
            current: Received::default(),
            lent: false,
            handed: 0,
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

    /// Counts the item about to be handed out, and applies the halt rule.
    #[inline]
    fn hand_out(&mut self) {
        let Some(item) = self.current.front() else { return };
        self.handed += 1;
        self.tally.count(item.status, item.attempts);
        if let Some(last) = item.streams().progress.last() {
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
    }

    /// Subtracts the items handed out since the last call from the shared
    /// in-memory count.
    fn settle(&mut self) {
        if self.handed > 0 {
            self.counters.in_memory.fetch_sub(std::mem::take(&mut self.handed), Ordering::Relaxed);
        }
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
pub enum Next<T = ItemResult> {
    /// The next result.
    Item(T),
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
        match self.next_within_at_most(timeout) {
            Next::Item(()) => self.current.take_front().map_or(Next::Done, Next::Item),
            Next::Idle => Next::Idle,
            Next::Done => Next::Done,
        }
    }

    /// Like [`next_timeout`](Self::next_timeout), but lends the result
    /// instead of moving it out: it stays in the run's buffer until the next
    /// call. A caller that only reads results (a writer) is spared copying
    /// each record, which is several times larger than a trivial item's
    /// output, out of the buffer and through the call.
    pub fn next_ref_timeout(&mut self, timeout: Duration) -> Next<&ItemResult> {
        match self.next_within_at_most(timeout) {
            Next::Item(()) => {
                self.lent = true;
                self.current.front().map_or(Next::Done, Next::Item)
            }
            Next::Idle => Next::Idle,
            Next::Done => Next::Done,
        }
    }

    fn next_within_at_most(&mut self, timeout: Duration) -> Next<()> {
        // Clamped: `Duration::MAX` (wait for ever) must not overflow `Instant`.
        self.next_within(Some(timeout.min(crate::units::MAX_DURATION)))
    }

    /// The run is over: sends the final progress event, once.
    fn done(&mut self) -> Next<()> {
        self.finished = true;
        if self.on_progress.is_some() {
            self.emit_progress(true);
            self.on_progress = None;
        }
        Next::Done
    }

    /// Finds the next result, waiting at most `timeout` (measured from
    /// the first wait: a result at hand costs no look at the clock), and
    /// puts it at the front of `current`.
    fn next_within(&mut self, timeout: Option<Duration>) -> Next<()> {
        if std::mem::take(&mut self.lent) {
            self.current.pass_front();
        }
        let mut deadline = None;
        loop {
            if self.ordered {
                if let Some(item) = self.pending.remove(&self.next_seq) {
                    self.next_seq += 1;
                    let window = &self.control.shared.window;
                    *window.emitted.lock().unwrap_or_else(|e| e.into_inner()) = self.next_seq;
                    window.room.notify_one();
                    self.current.push_one(item);
                    self.hand_out();
                    // Ordered runs hand out from `pending`, one at a time:
                    // count each at once, or the lag would grow with the window.
                    self.settle();
                    return Next::Item(());
                }
            } else if !self.current.is_empty() {
                self.hand_out();
                return Next::Item(());
            }
            self.settle();
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
            self.current.push(delivery.items);
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
                // Unordered, it queues behind what is being handed out now.
                self.accept(delivery);
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

/// Results received and not yet handed out: `items[next..]`, the next first.
///
/// Handing a result out only moves `next` on. The results before it (lent
/// to a writer and done with, or taken, leaving a placeholder) are dropped
/// together when the next delivery comes, usually by dropping the buffer
/// whole: a deque that dropped each lent result on its own cost the
/// caller's thread a tenth of its time per trivial item (`callgrind`).
#[derive(Default)]
struct Received {
    items: Vec<ItemResult>,
    next: usize,
}

impl Received {
    fn is_empty(&self) -> bool {
        self.next >= self.items.len()
    }

    fn front(&self) -> Option<&ItemResult> {
        self.items.get(self.next)
    }

    /// Moves past the front result, which was lent.
    fn pass_front(&mut self) {
        self.next = (self.next + 1).min(self.items.len());
    }

    /// Takes the front result out, leaving a placeholder.
    fn take_front(&mut self) -> Option<ItemResult> {
        let slot = self.items.get_mut(self.next)?;
        self.next += 1;
        Some(std::mem::replace(slot, ItemResult::new(0, serde_json::Value::Null, crate::Status::Completed)))
    }

    /// Queues `items` behind those not yet handed out. With none left, the
    /// delivery's buffer is taken as it is, its results not moved.
    fn push(&mut self, items: Vec<ItemResult>) {
        if self.is_empty() {
            self.items = items;
            self.next = 0;
        } else {
            self.drop_handed_out();
            self.items.extend(items);
        }
    }

    /// Makes `item` the front, in ordered mode (which hands results out
    /// one at a time, so none is left), keeping the buffer.
    fn push_one(&mut self, item: ItemResult) {
        debug_assert!(self.is_empty(), "an ordered run's result would jump the queue");
        self.drop_handed_out();
        self.items.push(item);
    }

    /// Drops the results already handed out.
    fn drop_handed_out(&mut self) {
        self.items.drain(..self.next);
        self.next = 0;
    }
}

impl Iterator for Results {
    type Item = ItemResult;

    fn next(&mut self) -> Option<ItemResult> {
        match self.next_within(None) {
            Next::Item(()) => self.current.take_front(),
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{ItemResult, Received};
    use crate::Status;

    fn items(indices: std::ops::Range<u64>) -> Vec<ItemResult> {
        indices.map(|i| ItemResult::new(i, json!(i), Status::Completed)).collect()
    }

    fn front(received: &Received) -> Option<u64> {
        received.front().map(|item| item.index)
    }

    /// Lent and taken results alike move the front on, a delivery that
    /// comes while some are left queues behind them, and every result comes
    /// out once, with its own input, in order.
    #[test]
    fn results_come_out_once_and_in_order_however_they_are_handed_out() {
        let mut received = Received::default();
        assert!(received.is_empty());
        assert_eq!(received.take_front().map(|i| i.index), None);
        received.pass_front();
        received.push(items(0..3));
        assert_eq!(front(&received), Some(0));
        received.pass_front();
        let taken = received.take_front().unwrap();
        assert_eq!((taken.index, taken.input), (1, json!(1)));
        received.push(items(3..5));
        let mut out = Vec::new();
        while let Some(item) = received.take_front() {
            out.push((item.index, item.input));
        }
        assert_eq!(out, vec![(2, json!(2)), (3, json!(3)), (4, json!(4))]);
        assert!(received.is_empty());
        // Passing the end changes nothing.
        received.pass_front();
        assert!(received.is_empty());
        received.push_one(ItemResult::new(9, json!(9), Status::Completed));
        assert_eq!(front(&received), Some(9));
        assert_eq!(received.items.len(), 1, "what was handed out is dropped when more comes");
    }
}
