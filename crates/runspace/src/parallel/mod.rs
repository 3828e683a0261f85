//! Running one script over many inputs: `ForEach-Object -Parallel` and the
//! original's `Invoke-ParallelProcessing`, with results streamed as they
//! finish and memory bounded by the window, not the input.
//!
//! A feeder thread reads the inputs and hands them to the pool's workers in
//! chunks. Chunk size adapts to the measured cost of an item: trivial items
//! travel hundreds at a time so the per-item cost stays near one Lua call,
//! slow items travel one at a time so every runspace is kept busy.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Result;
use crate::invocation::collapse;
use crate::pool::{RunspacePool, Work};
use crate::runspace::Runspace;
use crate::script::Script;
use crate::session::check_name;
use crate::streams::{ProgressRecord, Status};

/// A chunk aims to take about this long, so trivial items are batched.
const TARGET_CHUNK: Duration = Duration::from_micros(500);
/// The most items in one chunk.
const MAX_CHUNK: usize = 256;
/// A worker running slow items hands over what it has at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(20);

/// One input of a parallel run.
///
/// ```
/// use runspace::Input;
/// use serde_json::json;
/// let ok: Input = json!(5).into();
/// let bad = Input::Invalid { text: "{oops".into(), error: "expected value at line 1 column 2".into() };
/// assert!(matches!(ok, Input::Value(_)));
/// assert!(matches!(bad, Input::Invalid { .. }));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A value to run the script on.
    Value(Value),
    /// An input that could not be read (malformed JSON, say): it becomes a
    /// `Failed` item carrying the reason, and the rest of the run goes on.
    Invalid {
        /// The raw text that was read.
        text: String,
        /// Why it could not be used.
        error: String,
    },
}

impl From<Value> for Input {
    fn from(value: Value) -> Input {
        Input::Value(value)
    }
}

/// The record of one input: PowerShell's `{Input, Result, Error, Duration, Status}`.
///
/// ```
/// use runspace::{RunspacePool, Script, Status};
/// use serde_json::json;
/// let pool = RunspacePool::builder().max(2).open().unwrap();
/// let item = pool.parallel(&Script::new("return _ + 1").unwrap()).run(vec![json!(1)]).next().unwrap();
/// assert_eq!((item.index, item.result, item.status), (0, json!(2), Status::Completed));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemResult {
    /// Position of the input, from 0.
    pub index: u64,
    /// The input itself.
    pub input: Value,
    /// Null for no output, the one output, or an array of several.
    pub result: Value,
    /// How the item ended.
    pub status: Status,
    /// `write_error` records, then the terminating error if there was one.
    pub errors: Vec<String>,
    /// Wall time of the item, in milliseconds.
    pub duration_ms: f64,
    /// The batch the item ran in (batch mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<u64>,
    /// The item's position within its batch (batch mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_index: Option<u64>,
    /// `write_warning` records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warning: Vec<String>,
    /// `write_verbose` records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verbose: Vec<String>,
    /// `write_debug` records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub debug: Vec<String>,
    /// `write_information` and `print` records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub information: Vec<String>,
    /// `write_progress` records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub progress: Vec<ProgressRecord>,
}

impl ItemResult {
    fn ended(index: u64, input: Value, status: Status, error: String) -> ItemResult {
        ItemResult {
            index,
            input,
            result: Value::Null,
            status,
            errors: vec![error],
            duration_ms: 0.0,
            batch: None,
            batch_index: None,
            warning: Vec::new(),
            verbose: Vec::new(),
            debug: Vec::new(),
            information: Vec::new(),
            progress: Vec::new(),
        }
    }
}

/// A parallel run being configured. Made by [`RunspacePool::parallel`].
#[must_use = "a parallel run does nothing until run()"]
pub struct Parallel {
    pool: RunspacePool,
    script: Script,
    params: Vec<(String, Value)>,
    ordered: bool,
    timeout: Option<Duration>,
    window: Option<usize>,
}

impl Parallel {
    pub(crate) fn new(pool: RunspacePool, script: &Script) -> Parallel {
        let timeout = pool.session().timeout;
        Parallel { pool, script: script.clone(), params: Vec::new(), ordered: false, timeout, window: None }
    }

    /// Adds a named parameter every item sees as a global.
    pub fn param(mut self, name: &str, value: Value) -> Result<Self> {
        check_name("parameter", name)?;
        self.params.retain(|(n, _)| n != name);
        self.params.push((name.to_string(), value));
        Ok(self)
    }

    /// Emits results in input order (default: as they finish). Memory stays
    /// bounded: the feeder waits when the reorder window is full.
    pub fn ordered(mut self, ordered: bool) -> Self {
        self.ordered = ordered;
        self
    }

    /// Times out each item after `timeout` (overrides the session's default).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The most items read but not yet handed to the caller (default:
    /// 4096, or 64 per runspace when more).
    pub fn window(mut self, items: usize) -> Self {
        self.window = Some(items.max(1));
        self
    }

    /// Starts the run. Inputs are pulled on a feeder thread as room frees
    /// up; results arrive through the returned iterator as items finish.
    /// Dropping the iterator stops the run.
    pub fn run<I>(self, inputs: I) -> Results
    where
        I: IntoIterator + Send + 'static,
        I::IntoIter: Send,
        I::Item: Into<Input>,
    {
        static NEXT_RUN: AtomicU64 = AtomicU64::new(1);
        let throttle = self.pool.max();
        let window = self.window.unwrap_or_else(|| (throttle * 64).max(4096));
        let (results_tx, results_rx) = bounded(throttle * 4 + 4);
        let shared = Arc::new(RunShared {
            id: NEXT_RUN.fetch_add(1, Ordering::Relaxed),
            script: self.script,
            params: self.params,
            timeout: self.timeout,
            cancelled: AtomicBool::new(false),
            aborted: AtomicBool::new(false),
            item_ns: AtomicU64::new(0),
            counters: Arc::new(Counters::default()),
            window: Window {
                limit: if self.ordered { window as u64 } else { u64::MAX },
                emitted: Mutex::new(0),
                room: Condvar::new(),
            },
        });
        if self.timeout.is_some() {
            self.pool.ensure_watchdog();
        }
        let _ = self.pool.ensure_workers(throttle);
        let feeder = self.pool.sender().map(|sender| {
            let shared = shared.clone();
            let inputs = inputs.into_iter();
            thread::Builder::new()
                .name("runspace-feeder".into())
                .spawn(move || feed(inputs, &shared, &sender, &results_tx, throttle))
                .expect("cannot start the feeder thread")
        });
        Results {
            control: RunControl { pool: self.pool, shared: shared.clone() },
            receiver: results_rx,
            current: Vec::new().into_iter(),
            ordered: self.ordered,
            pending: BTreeMap::new(),
            next_index: 0,
            feeder,
            counters: shared.counters.clone(),
        }
    }
}

/// Counts kept by a run, readable while it goes.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Inputs read so far.
    read: AtomicU64,
    /// Items read and not yet handed to the caller.
    in_memory: AtomicU64,
    /// The most `in_memory` has been.
    peak: AtomicU64,
    /// True once the input is exhausted.
    input_done: AtomicBool,
}

/// Limits how far the feeder runs ahead of the caller in ordered mode.
struct Window {
    limit: u64,
    emitted: Mutex<u64>,
    room: Condvar,
}

/// What the feeder, the workers and the caller of one run share.
pub(crate) struct RunShared {
    id: u64,
    script: Script,
    params: Vec<(String, Value)>,
    timeout: Option<Duration>,
    /// No new items are taken (drain or stop).
    cancelled: AtomicBool,
    /// Running items are stopped too.
    aborted: AtomicBool,
    /// Smoothed cost of one item in nanoseconds (0 until measured).
    item_ns: AtomicU64,
    counters: Arc<Counters>,
    window: Window,
}

/// Inputs handed to one worker at once.
///
/// The results sender travels with the chunk, not in [`RunShared`] (which
/// the caller's iterator also holds): the channel closes, and iteration
/// ends, exactly when the feeder and every chunk are done.
pub(crate) struct Chunk {
    run: Arc<RunShared>,
    results: Sender<Vec<ItemResult>>,
    items: Vec<(u64, Input)>,
}

impl Chunk {
    /// Fails every item (the worker could not open a runspace).
    pub(crate) fn fail_all(self, message: &str) {
        let results = self
            .items
            .into_iter()
            .map(|(index, input)| ItemResult::ended(index, input_value(input), Status::Failed, message.to_string()))
            .collect();
        let _ = self.results.send(results);
    }

    /// Drops the chunk unrun (the run or the pool is being stopped).
    pub(crate) fn skip(self) {
        self.run.counters.in_memory.fetch_sub(self.items.len() as u64, Ordering::Relaxed);
    }
}

fn input_value(input: Input) -> Value {
    match input {
        Input::Value(v) => v,
        Input::Invalid { text, .. } => Value::String(text),
    }
}

/// Runs a chunk on a worker's runspace (called by the pool).
pub(crate) fn run_chunk(runspace: &mut Runspace, chunk: Chunk) {
    let function = match runspace.prepare(&chunk.run.script) {
        Ok(f) => f,
        Err(failed) => {
            let message = failed.error().unwrap_or("cannot load script").to_string();
            return chunk.fail_all(&message);
        }
    };
    let Chunk { run, results, items } = chunk;
    let total = items.len();
    let mut out = Vec::with_capacity(total);
    let started = Instant::now();
    let mut last_flush = started;
    let mut ran = 0usize;
    for (index, input) in items {
        if run.cancelled.load(Ordering::Relaxed) {
            break;
        }
        ran += 1;
        let item = match input {
            Input::Value(value) => {
                let generation = runspace.next_generation();
                let deadline = run.timeout.map(|t| Instant::now() + t);
                let r = runspace.execute(
                    &function,
                    std::slice::from_ref(&value),
                    &run.params,
                    generation,
                    run.id,
                    deadline,
                    Some(&run.aborted),
                );
                let (output, streams, status, duration) = r.into_parts();
                ItemResult {
                    index,
                    input: value,
                    result: collapse(output),
                    status,
                    errors: streams.error,
                    duration_ms: (duration.as_micros() as f64) / 1e3,
                    batch: None,
                    batch_index: None,
                    warning: streams.warning,
                    verbose: streams.verbose,
                    debug: streams.debug,
                    information: streams.information,
                    progress: streams.progress,
                }
            }
            Input::Invalid { text, error } => {
                ItemResult::ended(index, Value::String(text), Status::Failed, format!("invalid input: {error}"))
            }
        };
        out.push(item);
        if total > 1 && last_flush.elapsed() >= FLUSH_EVERY {
            last_flush = Instant::now();
            let _ = results.send(std::mem::take(&mut out));
        }
    }
    if ran > 0 {
        let per_item = started.elapsed().as_nanos() as u64 / ran as u64;
        let old = run.item_ns.load(Ordering::Relaxed);
        let smoothed = if old == 0 { per_item } else { (old * 3 + per_item) / 4 };
        run.item_ns.store(smoothed.max(1), Ordering::Relaxed);
    }
    let skipped = (total - ran) as u64;
    if skipped > 0 {
        run.counters.in_memory.fetch_sub(skipped, Ordering::Relaxed);
    }
    if !out.is_empty() {
        let _ = results.send(out);
    }
}

/// The feeder loop: reads inputs, forms chunks, hands them to the pool.
fn feed<I>(inputs: I, run: &Arc<RunShared>, sender: &Sender<Work>, results: &Sender<Vec<ItemResult>>, throttle: usize)
where
    I: Iterator,
    I::Item: Into<Input>,
{
    let mut inputs = inputs.peekable();
    let mut index = 0u64;
    while !run.cancelled.load(Ordering::Relaxed) && inputs.peek().is_some() {
        let item_ns = run.item_ns.load(Ordering::Relaxed);
        // Until an item has been measured, go one at a time: the first
        // items may be slow, and every runspace should get one.
        let size = if item_ns == 0 {
            1
        } else {
            (TARGET_CHUNK.as_nanos() as u64 / item_ns).clamp(1, MAX_CHUNK as u64) as usize
        };
        let size = if run.window.limit == u64::MAX {
            size
        } else {
            // Leave room in the window for every runspace to have work.
            size.min((run.window.limit as usize / (throttle * 2)).max(1))
        };
        if !wait_for_room(run, index + size as u64) {
            break;
        }
        let mut items = Vec::with_capacity(size);
        for item in inputs.by_ref().take(size) {
            items.push((index, item.into()));
            index += 1;
        }
        let n = items.len() as u64;
        let counters = &run.counters;
        counters.read.fetch_add(n, Ordering::Relaxed);
        let held = counters.in_memory.fetch_add(n, Ordering::Relaxed) + n;
        counters.peak.fetch_max(held, Ordering::Relaxed);
        let chunk = Chunk { run: run.clone(), results: results.clone(), items };
        if sender.send(Work::Chunk(chunk)).is_err() {
            break;
        }
    }
    run.counters.input_done.store(true, Ordering::Release);
}

/// In ordered mode, waits until items below `upto` fit in the window.
/// False if the run was cancelled meanwhile.
fn wait_for_room(run: &RunShared, upto: u64) -> bool {
    let window = &run.window;
    if window.limit == u64::MAX {
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

/// Results of a parallel run, as items finish (or in input order with
/// [`Parallel::ordered`]). Dropping it stops the run.
pub struct Results {
    control: RunControl,
    receiver: Receiver<Vec<ItemResult>>,
    current: std::vec::IntoIter<ItemResult>,
    ordered: bool,
    pending: BTreeMap<u64, ItemResult>,
    next_index: u64,
    feeder: Option<thread::JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl Results {
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

    fn hand_out(&mut self, item: ItemResult) -> ItemResult {
        self.counters.in_memory.fetch_sub(1, Ordering::Relaxed);
        if self.ordered {
            let window = &self.control.shared.window;
            *window.emitted.lock().unwrap_or_else(|e| e.into_inner()) = item.index + 1;
            window.room.notify_one();
        }
        item
    }
}

/// What [`Results::next_timeout`] found.
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
        self.next_until(Some(Instant::now() + timeout))
    }

    fn next_until(&mut self, deadline: Option<Instant>) -> Next {
        loop {
            if self.ordered {
                if let Some(item) = self.pending.remove(&self.next_index) {
                    self.next_index += 1;
                    return Next::Item(self.hand_out(item));
                }
            } else if let Some(item) = self.current.next() {
                return Next::Item(self.hand_out(item));
            }
            // Once stopping, nothing new is read: when nothing is left in
            // flight the run is over, even if the feeder is still blocked in
            // a slow input (a terminal, say).
            let stopping = self.control.is_stopping();
            let wait = match (deadline, stopping) {
                (_, true) => Some(Instant::now() + Duration::from_millis(20)),
                (d, false) => d,
            };
            let received = match wait {
                Some(at) => self.receiver.recv_deadline(at),
                None => self.receiver.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match received {
                Ok(chunk) if self.ordered => self.pending.extend(chunk.into_iter().map(|r| (r.index, r))),
                Ok(chunk) => self.current = chunk.into_iter(),
                Err(RecvTimeoutError::Timeout) if stopping && self.counters.in_memory.load(Ordering::Relaxed) == 0 => {
                    if !self.finish_gaps() {
                        return Next::Done;
                    }
                }
                Err(RecvTimeoutError::Timeout) if stopping && deadline.is_none_or(|d| Instant::now() < d) => {}
                Err(RecvTimeoutError::Timeout) => return Next::Idle,
                Err(RecvTimeoutError::Disconnected) => {
                    if !self.finish_gaps() {
                        return Next::Done;
                    }
                }
            }
        }
    }

    /// After a stop, skipped items leave gaps in the order: move on to the
    /// next result held, if any. False when none is held.
    fn finish_gaps(&mut self) -> bool {
        match self.pending.keys().next() {
            Some(&index) => {
                self.next_index = index;
                true
            }
            None => false,
        }
    }
}

impl Iterator for Results {
    type Item = ItemResult;

    fn next(&mut self) -> Option<ItemResult> {
        match self.next_until(None) {
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
