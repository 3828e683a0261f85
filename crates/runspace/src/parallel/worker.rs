//! The two halves of a run that are not the caller: the feeder, which reads
//! inputs and forms chunks (or batches), and the worker side, which runs a
//! chunk on one lane of a runspace, retrying failed items when asked.

use std::any::Any;
use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use serde_json::Value;

use super::{Input, ItemResult, RunShared};
use crate::control::{StopReason, Switch};
use crate::invocation_result::{abandoned_message, ran_for};
use crate::pool::{Held, Lane, LocalFuture, Task, TaskSender};
use crate::runspace::{Execution, Prepared};
use crate::streams::Status;

/// A chunk aims to take about this long, so trivial items are batched.
const TARGET_CHUNK: Duration = Duration::from_micros(500);
/// The most items in one adaptive chunk.
const MAX_CHUNK: usize = 256;
/// A worker running slow items hands over what it has at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// Between items the clock is read only this often, or once the items'
/// own durations add up to [`FLUSH_EVERY`]: a clock read costs a trivial
/// item a few percent.
const CLOCK_EVERY: usize = 64;
/// How often a back-off wait looks at the run's stop flags.
const BACKOFF_TICK: Duration = Duration::from_millis(10);
/// How often a lane whose results wait for room in a full channel looks
/// again without being told: the caller wakes it when it takes a delivery
/// ([`RunShared::room`]), so this is only a fallback.
const ROOM_TICK: Duration = Duration::from_millis(5);

/// Results of consecutive inputs of one chunk, on their way to the caller.
///
/// `first_seq` is the position (in the order inputs were given) of the
/// first item: a chunk's items are consecutive and run in order, so one
/// number per delivery lets an ordered run restore the order without a
/// per-item field, even when indices have gaps (a resumed run).
pub(crate) struct Delivery {
    pub(crate) first_seq: u64,
    pub(crate) items: Vec<ItemResult>,
}

/// Finished results of a running chunk that are not yet delivered, with the
/// sequence number of the first. The caller's iterator takes them when it
/// has waited a while, so a fast item's result is never held back by a slow
/// item later in the same chunk; the worker's own lock is uncontended.
#[derive(Debug)]
pub(crate) struct Staging(Mutex<(u64, Vec<ItemResult>)>);

impl Staging {
    fn new(first_seq: u64, capacity: usize) -> Staging {
        // A chunk of one (every chunk, when items wait) allocates on its
        // push: reserved up front, the slot would sit empty while its item
        // waits, 10,000 times over.
        let reserved = if capacity > 1 { capacity } else { 0 };
        Staging(Mutex::new((first_seq, Vec::with_capacity(reserved))))
    }

    fn push(&self, item: ItemResult) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).1.push(item);
    }

    /// Lets go of the room reserved for items that went to another chunk.
    fn shrink(&self) {
        let mut staged = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let keep = staged.1.len() + 1;
        staged.1.shrink_to(keep);
    }

    /// Reserves the sequence number of the next item, which is delivered
    /// some other way (the watchdog ended it).
    fn skip_one(&self) -> u64 {
        let mut staged = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let seq = staged.0 + staged.1.len() as u64;
        staged.0 += 1;
        seq
    }

    /// The sequence number of the next item not staged yet.
    fn next_seq(&self) -> u64 {
        let staged = self.0.lock().unwrap_or_else(|e| e.into_inner());
        staged.0 + staged.1.len() as u64
    }

    /// Everything staged, as one delivery; `None` when nothing is. More
    /// results will follow: the next get a buffer as large as this one
    /// (left empty, it would grow, and copy its records, eight times over
    /// a chunk).
    pub(crate) fn take(&self) -> Option<Delivery> {
        self.take_with(Vec::with_capacity)
    }

    /// Everything staged, as the chunk's last delivery.
    fn take_last(&self) -> Option<Delivery> {
        self.take_with(|_| Vec::new())
    }

    fn take_with(&self, next: impl FnOnce(usize) -> Vec<ItemResult>) -> Option<Delivery> {
        let mut staged = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if staged.1.is_empty() {
            return None;
        }
        let room = staged.1.len();
        let items = std::mem::replace(&mut staged.1, next(room));
        let first_seq = staged.0;
        staged.0 += items.len() as u64;
        Some(Delivery { first_seq, items })
    }
}

/// Inputs handed to one lane at once: they run one after another, so a
/// chunk's results are consecutive in the input's order.
///
/// The results sender travels with the chunk, not in [`RunShared`] (which
/// the caller's iterator also holds): the channel closes, and iteration
/// ends, exactly when the feeder and every chunk are done.
pub(crate) struct Chunk {
    run: Arc<RunShared>,
    results: Sender<Delivery>,
    first_seq: u64,
    /// The batch id, in batch mode.
    batch: Option<u64>,
    /// Position in the batch of the first item (not 0 only for the rest of
    /// a batch taken over from an abandoned worker).
    position: u64,
    items: Vec<(u64, Input)>,
    /// Whether its staging reserves room for every item up front. Not for
    /// the rest of a chunk whose item waits: those items are likely to wait
    /// too, and each hand their own rest on in turn.
    reserve: bool,
}

impl Chunk {
    /// Fails every item (the worker could not open a runspace).
    fn fail_all(self, message: &str) {
        let batch = self.batch;
        let items = self
            .items
            .into_iter()
            .enumerate()
            .map(|(position, (index, input))| {
                let mut item = ItemResult::ended(index, input_value(input), Status::Failed, message.to_string());
                if let Some(batch) = batch {
                    item.set_batch(batch, self.position + position as u64);
                }
                item
            })
            .collect();
        let _ = self.results.send(Delivery { first_seq: self.first_seq, items });
    }

    /// Drops the chunk unrun (the run or the pool is being stopped).
    fn drop_unrun(self) {
        self.run.counters.in_memory.fetch_sub(self.items.len() as u64, Ordering::Relaxed);
    }
}

impl Task for Chunk {
    fn run(self: Box<Self>, lane: Lane) -> LocalFuture {
        run_chunk(lane, *self)
    }

    fn fail(self: Box<Self>, message: &str) {
        self.fail_all(message);
    }

    fn skip(self: Box<Self>) {
        self.drop_unrun();
    }
}

fn input_value(input: Input) -> Value {
    match input {
        Input::Value(v) => v,
        Input::Invalid { text, .. } => Value::String(text),
    }
}

/// A chunk being run, kept where the watchdog can take it over if its
/// worker gets stuck in a C call.
struct ChunkTask {
    run: Arc<RunShared>,
    results: Sender<Delivery>,
    batch: Option<u64>,
    staging: Arc<Staging>,
    /// The items not yet started, last first.
    rest: Vec<(u64, Input)>,
    /// Position in the batch of the next item to start.
    position: u64,
    /// The item running now.
    current: Option<Current>,
    /// Results waiting for room in the caller's channel.
    unsent: Option<Delivery>,
}

/// The item a lane is running (or about to run): its index, position and input.
struct Current {
    index: u64,
    position: u64,
    /// Points at the lane's own copy of the input (in its pinned future),
    /// which it keeps in place, and only reads, while this is set. Invalid
    /// inputs too: a lane waiting to deliver holds its next input here,
    /// and a worker abandoned meanwhile must hand that input on.
    input: *const Input,
}

// SAFETY: `Current::input` is only dereferenced under the slot's lock
// while it is set, and the lane clears it under that lock before it moves
// or drops the value it points at.
unsafe impl Send for ChunkTask {}

impl ChunkTask {
    /// The lane's one step between items, under the slot's lock: stages
    /// the result of the item that just ended (with its input, taken back
    /// from `running`), then makes the next input the running one. False
    /// when there is none, or the run was cancelled.
    ///
    /// One lock per item: a lock, a lookup and a downcast each time, the
    /// three it took before cost a trivial item about 5% of its time.
    fn step(
        &mut self,
        finished: &mut Option<ItemResult>,
        running: &mut Option<(u64, u64, Input)>,
        cancelled: bool,
    ) -> bool {
        // Cleared before `running` changes: see `Current::input`.
        self.current = None;
        let ended = running.take();
        if let Some(mut item) = finished.take() {
            if let Some((_, at, input)) = ended {
                if let Input::Value(value) = input {
                    item.input = value;
                }
                if let Some(batch) = self.batch {
                    item.set_batch(batch, at);
                }
            }
            self.staging.push(item);
        }
        if cancelled {
            return false;
        }
        let Some((index, input)) = self.rest.pop() else { return false };
        let at = self.position;
        self.position += 1;
        let (_, _, input) = running.insert((index, at, input));
        self.current = Some(Current { index, position: at, input });
        true
    }

    /// The items not started yet, as a chunk of their own: the running item
    /// waits, and they must not wait behind it. `None` in a batch (its
    /// items run in order on one runspace) or when there are none.
    fn split_off(&mut self) -> Option<Chunk> {
        if self.batch.is_some() || self.rest.is_empty() || self.current.is_none() {
            return None;
        }
        let mut items = std::mem::take(&mut self.rest);
        items.reverse();
        // The running item takes the next sequence number; the rest follow.
        let first_seq = self.staging.next_seq() + 1;
        self.staging.shrink();
        let (run, results) = (self.run.clone(), self.results.clone());
        Some(Chunk { run, results, first_seq, batch: None, position: self.position, items, reserve: false })
    }

    /// Takes back what [`split_off`](Self::split_off) made, unrun.
    fn take_back(&mut self, chunk: Chunk) {
        let mut items = chunk.items;
        items.reverse();
        self.rest = items;
    }

    /// Stops staging the chunk; returns what was not delivered yet.
    fn unstage(&mut self) -> Vec<Delivery> {
        self.run.staging.lock().unwrap_or_else(|e| e.into_inner()).retain(|s| !Arc::ptr_eq(s, &self.staging));
        self.unsent.take().into_iter().chain(self.staging.take_last()).collect()
    }

    /// What a fresh worker must finish: `deliveries`, then the items not
    /// started (`rest`, last first) from batch position `position` on.
    fn hand_on(self, deliveries: Vec<Delivery>, position: u64) -> Box<dyn Task> {
        let ChunkTask { run, results, batch, staging, mut rest, .. } = self;
        rest.reverse();
        let first_seq = staging.next_seq();
        let rest = (!rest.is_empty()).then(|| Chunk {
            run,
            results: results.clone(),
            first_seq,
            batch,
            position,
            items: rest,
            reserve: true,
        });
        Box::new(Takeover { results, deliveries, rest })
    }
}

impl Held for ChunkTask {
    /// The results staged so far, the ended item, the items not yet started.
    fn take_over(mut self: Box<Self>, reason: StopReason, deadline: Option<Instant>) -> Option<Box<dyn Task>> {
        let mut deliveries = self.unstage();
        let status = match reason {
            StopReason::Stopped => Status::Stopped,
            StopReason::TimedOut => Status::TimedOut,
        };
        if let Some(current) = self.current.take() {
            // SAFETY: see `Current::input`; the watchdog holds the slot's lock.
            let input = unsafe { (*current.input).clone() };
            let mut item = ItemResult::ended(current.index, input_value(input), status, abandoned_message(reason));
            item.duration_ms = ran_for(deadline, self.run.timeout).as_secs_f64() * 1e3;
            if let Some(batch) = self.batch {
                item.set_batch(batch, current.position);
            }
            let seq = self.staging.skip_one();
            deliveries.push(Delivery { first_seq: seq, items: vec![item] });
        }
        let position = self.position;
        Some(self.hand_on(deliveries, position))
    }

    /// The results staged so far, and every item not finished (the running
    /// one first) to run again.
    fn restart(mut self: Box<Self>) -> Option<Box<dyn Task>> {
        let deliveries = self.unstage();
        let mut position = self.position;
        if let Some(current) = self.current.take() {
            // SAFETY: see `Current::input`; the watchdog holds the slot's lock.
            let input = unsafe { (*current.input).clone() };
            self.rest.push((current.index, input));
            position = current.position;
        }
        Some(self.hand_on(deliveries, position))
    }

    fn close(self: Box<Self>) {
        // The run's results end with the pool: dropping the sender closes
        // the caller's channel once nothing else holds it.
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

/// What an abandoned worker left for a fresh one to finish.
struct Takeover {
    results: Sender<Delivery>,
    deliveries: Vec<Delivery>,
    rest: Option<Chunk>,
}

impl Takeover {
    /// Delivers the results the abandoned worker left (once).
    fn deliver(&mut self) {
        for delivery in self.deliveries.drain(..) {
            let _ = self.results.send(delivery);
        }
    }
}

impl Task for Takeover {
    fn prepare(&mut self) {
        self.deliver();
    }

    fn run(mut self: Box<Self>, lane: Lane) -> LocalFuture {
        // Empty by now: `prepare` delivered them before the runspace opened.
        self.deliver();
        match self.rest.take() {
            Some(rest) => run_chunk(lane, rest),
            None => Box::pin(async {}),
        }
    }

    fn fail(mut self: Box<Self>, message: &str) {
        self.deliver();
        if let Some(rest) = self.rest.take() {
            rest.fail_all(message);
        }
    }

    fn skip(mut self: Box<Self>) {
        self.deliver();
        if let Some(rest) = self.rest.take() {
            rest.drop_unrun();
        }
    }
}

/// Runs a chunk on a lane of a worker's runspace, its items one after another.
/// Set up before the future is made, and the future built from what it
/// needs only: an `async fn` keeps a second copy of its arguments in its
/// state, and every waiting item holds that state.
fn run_chunk(lane: Lane, chunk: Chunk) -> LocalFuture {
    let prepared = match lane.runspace.prepare(&chunk.run.script) {
        Ok(prepared) => prepared,
        Err(failed) => {
            let message = failed.error().unwrap_or("cannot load script").to_string();
            chunk.fail_all(&message);
            return Box::pin(async {});
        }
    };
    let Chunk { run, results, first_seq, batch, position, mut items, reserve } = chunk;
    let total = items.len();
    let staging = Arc::new(Staging::new(first_seq, if reserve { total } else { 0 }));
    if total > 1 {
        run.staging.lock().unwrap_or_else(|e| e.into_inner()).push(staging.clone());
    }
    items.reverse();
    // The held task keeps the chunk's only results sender, so a worker stuck
    // in a C call does not keep the run's results channel open.
    let held = ChunkTask {
        run: run.clone(),
        results,
        batch,
        staging: staging.clone(),
        rest: items,
        position,
        current: None,
        unsent: None,
    };
    lane.slot.hold(lane.id, Box::new(held));
    Box::pin(run_items(lane, prepared, run, staging, total))
}

/// Runs the items of a chunk set up by [`run_chunk`], one after another.
async fn run_items(lane: Lane, prepared: Prepared, run: Arc<RunShared>, staging: Arc<Staging>, total: usize) {
    // Its staging is listed in the run's while it runs (see `run_chunk`).
    let registered = total > 1;
    // Fewer once the rest of the chunk went to other lanes.
    let total = Cell::new(total);
    let started = Instant::now();
    let mut last_flush = started;
    // When the last item ended, which is when the next one starts: items
    // run back to back, and one clock read per item, not two, is a few
    // percent of a trivial item. Read again after anything that waits.
    let mut clock = started;
    // The items' own time since the last hand-over, in milliseconds (as
    // their records have it: turning that back into a `Duration` per item
    // cost a trivial item a percent).
    let mut ran_since_flush_ms = 0.0;
    let mut ran = 0usize;
    let mut spare = None;
    // The input of the item running now (with its index and position),
    // kept here until its result is staged: the watchdog reads it through
    // `ChunkTask::current`. And that item's result, once it has one.
    let mut running: Option<(u64, u64, Input)> = None;
    let mut finished: Option<ItemResult> = None;
    loop {
        let cancelled = run.cancelled.load(Ordering::Relaxed);
        let step = |chunk: &mut ChunkTask| chunk.step(&mut finished, &mut running, cancelled);
        match lane.slot.with(lane.id, step) {
            None => return, // abandoned: the watchdog handed the chunk on
            Some(false) => break,
            Some(true) => {}
        }
        if total.get() > 1 && ran > 0 {
            let due = ran_since_flush_ms >= FLUSH_EVERY.as_secs_f64() * 1e3
                || (ran.is_multiple_of(CLOCK_EVERY) && last_flush.elapsed() >= FLUSH_EVERY);
            if due {
                last_flush = Instant::now();
                ran_since_flush_ms = 0.0;
                if let Some(delivery) = staging.take() {
                    if !deliver(&lane, &run, delivery).await {
                        return;
                    }
                    clock = Instant::now();
                }
            }
        }
        // A block of its own, so the item's locals are not part of this
        // future's state while a delivery waits above: every waiting item
        // holds that state (10,000 of them in a VM).
        let item = {
            let Some((index, _, input)) = &running else { break };
            match input {
                Input::Value(value) => {
                    let hand_off = || total.set(total.get() - hand_off_rest(&lane));
                    let on_wait = (total.get() > 1).then_some(&hand_off as &dyn Fn());
                    run_item(&lane, &prepared, &run, (*index, value), &mut spare, &mut clock, on_wait).await
                }
                Input::Invalid { text, error } => ItemResult::ended(
                    *index,
                    Value::String(text.clone()),
                    Status::Failed,
                    format!("invalid input: {error}"),
                ),
            }
        };
        ran += 1;
        ran_since_flush_ms += item.duration_ms;
        finished = Some(item);
    }
    if let Some(delivery) = finish_chunk(&run, &staging, total.get(), registered, ran, started.elapsed()) {
        if !deliver(&lane, &run, delivery).await {
            return;
        }
    }
    // The held task keeps the chunk's only results sender: dropping it
    // closes the caller's channel once nothing else holds it.
    drop(lane.slot.release(lane.id));
}

/// The lane's item waits: the items of its chunk not started yet go back to
/// the pool as a chunk of their own, for a free lane to run, so the
/// throttle counts items that run, not items queued behind one that
/// waits. (Chunks are sized by the cost of the items measured so far: a
/// run whose first items are quick and whose later ones wait would
/// otherwise run a few lanes of items one after another.) Returns how many
/// items went; none when the queue is full (the lane runs them itself).
fn hand_off_rest(lane: &Lane) -> usize {
    let Some(Some(chunk)) = lane.slot.with(lane.id, ChunkTask::split_off) else { return 0 };
    let count = chunk.items.len();
    match lane.hand_off(Box::new(chunk)) {
        Ok(()) => count,
        Err(back) => {
            if let Ok(chunk) = back.into_any().downcast::<Chunk>() {
                // Between polls no item of this worker runs in the VM, so
                // the watchdog cannot have taken the lane meanwhile.
                lane.slot.with(lane.id, |task: &mut ChunkTask| task.take_back(*chunk));
            }
            0
        }
    }
}

/// Hands `delivery` to the caller; false if the watchdog took the chunk
/// over meanwhile (the worker is abandoned).
///
/// While the results channel is full (the caller reads slower than items
/// end) only this lane waits, on the event loop: the runspace's other
/// items, their timers and timeouts, run on meanwhile. The delivery waits
/// in the held chunk, where the watchdog finds it if it takes the chunk
/// over. A caller that is gone (the channel closed) drops it.
async fn deliver(lane: &Lane, run: &RunShared, delivery: Delivery) -> bool {
    let mut delivery = Some(delivery);
    let mut try_send = || {
        lane.slot.with(lane.id, |chunk: &mut ChunkTask| {
            let Some(next) = chunk.unsent.take().or_else(|| delivery.take()) else { return true };
            match chunk.results.try_send(next) {
                Err(TrySendError::Full(back)) => {
                    chunk.unsent = Some(back);
                    false
                }
                Ok(()) | Err(TrySendError::Disconnected(_)) => true,
            }
        })
    };
    loop {
        match try_send() {
            None => return false,
            Some(true) => return true,
            Some(false) => {}
        }
        // Boxed: a timer is large, and every lane (10,000 of them with
        // waiting items) would carry one in its future, unused.
        let mut room = Box::pin(run.room.notified());
        // Registered before the second look, so a delivery the caller takes
        // between the two looks still wakes this lane.
        room.as_mut().enable();
        match try_send() {
            None => return false,
            Some(true) => return true,
            Some(false) => {
                let _ = Box::pin(tokio::time::timeout(ROOM_TICK, room)).await;
            }
        }
    }
}

/// Records the measured cost of an item, accounts for the items a chunk
/// did not run and stops staging its results; returns the last of them.
/// `registered`: whether the chunk's staging is listed in the run's.
fn finish_chunk(
    run: &RunShared,
    staging: &Arc<Staging>,
    total: usize,
    registered: bool,
    ran: usize,
    took: Duration,
) -> Option<Delivery> {
    if ran > 0 {
        let per_item = took.as_nanos() as u64 / ran as u64;
        let old = run.item_ns.load(Ordering::Relaxed);
        let smoothed = if old == 0 { per_item } else { (old * 3 + per_item) / 4 };
        run.item_ns.store(smoothed.max(1), Ordering::Relaxed);
    }
    let skipped = (total - ran) as u64;
    if skipped > 0 {
        run.counters.in_memory.fetch_sub(skipped, Ordering::Relaxed);
    }
    if registered {
        run.staging.lock().unwrap_or_else(|e| e.into_inner()).retain(|s| !Arc::ptr_eq(s, staging));
    }
    staging.take_last()
}

/// Runs one input, and again after a back-off while it fails or times out
/// and retries are left. `clock` is when it starts; it becomes when it ended.
async fn run_item(
    lane: &Lane,
    script: &Prepared,
    run: &RunShared,
    (index, value): (u64, &Value),
    spare: &mut Option<Arc<Switch>>,
    clock: &mut Instant,
    on_wait: Option<&dyn Fn()>,
) -> ItemResult {
    let runspace = &lane.runspace;
    let mut attempts = 1u32;
    loop {
        let generation = runspace.next_generation();
        let switch = fresh_switch(spare, run.timeout.map(|t| *clock + t));
        let r = runspace
            .execute(&Execution {
                script,
                args: std::slice::from_ref(value),
                params: &run.params,
                generation,
                owner: run.id,
                lane: lane.id,
                switch: &switch,
                abort: Some(&run.aborted),
                started: *clock,
                on_wait,
            })
            .await;
        *clock += r.duration();
        *spare = Some(switch);
        let (output, streams, status, duration) = r.into_parts();
        let retry = match &run.retry {
            Some(retry) if attempts <= retry.retries && matches!(status, Status::Failed | Status::TimedOut) => {
                Some(retry.delay(attempts))
            }
            _ => None,
        };
        if let Some(delay) = retry {
            // Waiting to try again is waiting too (handing the rest on is
            // done once: after that there is no rest).
            if let Some(on_wait) = on_wait {
                on_wait();
            }
            let again = back_off(run, delay).await;
            *clock = Instant::now();
            if again {
                attempts += 1;
                continue;
            }
        }
        // The caller moves the input in: it stays where the watchdog can
        // read it until then.
        let mut item = ItemResult::new(index, Value::Null, status);
        item.outputs = u32::try_from(output.len()).unwrap_or(u32::MAX);
        item.result = output.into_value();
        // Through u64 (584,000 years of microseconds): a u128 to f64 is a
        // library call.
        item.duration_ms = (u64::try_from(duration.as_micros()).unwrap_or(u64::MAX) as f64) / 1e3;
        item.attempts = attempts;
        item.set_boxed_streams(streams);
        return item;
    }
}

/// A switch for the next item: the last item's, when nothing else holds
/// it any more (a host call's future may, until it is collected), which
/// spares an allocation per item.
fn fresh_switch(spare: &mut Option<Arc<Switch>>, deadline: Option<Instant>) -> Arc<Switch> {
    if let Some(mut switch) = spare.take() {
        if let Some(reused) = Arc::get_mut(&mut switch) {
            *reused = Switch::new(deadline);
            return switch;
        }
    }
    Arc::new(Switch::new(deadline))
}

/// Waits `delay` before another attempt, yielding the runspace to its
/// other items. False if the run was drained or stopped meanwhile: then
/// the last attempt's result stands.
async fn back_off(run: &RunShared, delay: Duration) -> bool {
    let until = Instant::now() + delay;
    loop {
        if run.cancelled.load(Ordering::Relaxed) {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        tokio::time::sleep(left.min(BACKOFF_TICK)).await;
    }
}

/// The feeder loop: reads inputs, forms chunks, hands them to the pool.
pub(super) fn feed<I, T>(
    inputs: I,
    run: &Arc<RunShared>,
    sender: &TaskSender,
    results: &Sender<Delivery>,
    throttle: usize,
) where
    I: Iterator<Item = (u64, T)>,
    T: Into<Input>,
{
    let mut inputs = inputs.peekable();
    let mut seq = 0u64;
    let mut batch_id = 0u64;
    while !run.cancelled.load(Ordering::Relaxed) && inputs.peek().is_some() {
        let size = match run.batch_size {
            Some(size) => size,
            None => chunk_size(run, throttle),
        };
        if !wait_for_room(run, seq + size as u64, size as u64) {
            break;
        }
        let mut items = Vec::with_capacity(size);
        for (index, item) in inputs.by_ref().take(size) {
            items.push((index, item.into()));
        }
        let n = items.len() as u64;
        let counters = &run.counters;
        counters.read.fetch_add(n, Ordering::Relaxed);
        let held = counters.in_memory.fetch_add(n, Ordering::Relaxed) + n;
        counters.peak.fetch_max(held, Ordering::Relaxed);
        let batch = run.batch_size.map(|_| {
            batch_id += 1;
            counters.batches.store(batch_id, Ordering::Relaxed);
            batch_id - 1
        });
        let chunk = Chunk {
            run: run.clone(),
            results: results.clone(),
            first_seq: seq,
            batch,
            position: 0,
            items,
            reserve: true,
        };
        seq += n;
        if !sender.send(Box::new(chunk)) {
            break;
        }
    }
    run.counters.input_done.store(true, Ordering::Release);
}

/// The size of the next adaptive chunk.
fn chunk_size(run: &RunShared, throttle: usize) -> usize {
    let item_ns = run.item_ns.load(Ordering::Relaxed);
    // Until an item has been measured, go one at a time: the first items
    // may be slow, and every runspace should get one.
    let size =
        (TARGET_CHUNK.as_nanos() as u64).checked_div(item_ns).map_or(1, |n| n.clamp(1, MAX_CHUNK as u64) as usize);
    if run.window.limit == u64::MAX {
        size
    } else {
        // Leave room in the window for every runspace to have work.
        size.min((run.window.limit as usize / (throttle * 2)).max(1))
    }
}

/// Waits until `upto` (a position) fits in the ordered window, or in
/// unordered mode until `size` more items fit under the in-flight cap.
/// False if the run was cancelled meanwhile.
fn wait_for_room(run: &RunShared, upto: u64, size: u64) -> bool {
    let window = &run.window;
    if window.limit == u64::MAX {
        // Rarely reached (the queues fill first at low throttles), so a
        // short poll is cheaper than signalling on every item handed out.
        while run.counters.in_memory.load(Ordering::Relaxed) + size > run.in_flight_cap {
            if run.cancelled.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        return true;
    }
    let mut emitted = window.emitted.lock().unwrap_or_else(|e| e.into_inner());
    while upto.saturating_sub(*emitted) > window.limit {
        if run.cancelled.load(Ordering::Relaxed) {
            return false;
        }
        emitted = window.room.wait_timeout(emitted, Duration::from_millis(50)).unwrap_or_else(|e| e.into_inner()).0;
    }
    true
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::{RunspacePool, Script};

    /// A chunk whose rest went to other lanes ends with one item of its
    /// own: it must still leave the run's list of stagings (the caller
    /// copies and locks every listed one every 20 ms).
    #[test]
    fn chunks_that_handed_their_rest_on_leave_no_staging_behind() {
        let pool = RunspacePool::builder().threads(1).throttle(100).open().unwrap();
        let script = Script::new("if _ <= 100 then return _ end sleep(0.2) return _").unwrap();
        let inputs = (1..=300).map(|n| {
            if n == 101 {
                // The quick items are measured first: later chunks are large.
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
            json!(n)
        });
        let results = pool.parallel(&script).run(inputs);
        let control = results.control();
        assert_eq!(results.count(), 300);
        let listed = control.shared().staging.lock().unwrap().len();
        assert_eq!(listed, 0, "stagings of ended chunks still listed");
    }
}
