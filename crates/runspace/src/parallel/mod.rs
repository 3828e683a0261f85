//! Running one script over many inputs: `ForEach-Object -Parallel` and the
//! original's `Invoke-ParallelProcessing` / `Invoke-OptimizedParallelProcessing`,
//! with results streamed as they finish and memory bounded by the window,
//! not the input.
//!
//! A feeder thread reads the inputs and hands them to the pool's workers in
//! chunks. Chunk size adapts to the measured cost of an item: trivial items
//! travel hundreds at a time so the per-item cost stays near one Lua call,
//! slow items travel one at a time so every runspace is kept busy. In batch
//! mode a chunk is exactly one batch, run in order on one runspace.
//!
//! The optional features (batches, retries, halt rules, progress events)
//! cost nothing per item when they are off: retries and batches are decided
//! per chunk on the worker, halt rules and progress per item on the
//! caller's thread with plain (non-atomic) counters.

mod policy;
mod results;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use crossbeam_channel::bounded;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Result;
use crate::pool::RunspacePool;
use crate::script::Script;
use crate::session::check_name;
use crate::streams::{ProgressRecord, Status, Streams, NO_STREAMS};

pub use policy::{Halt, HaltRule, HaltWhen, Retry, RunProgress};
pub use results::{Next, Results, RunControl};
use worker::Staging;

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
/// assert_eq!(item.attempts, 1);
/// ```
///
/// Most items have no stream records and no batch: those live behind one
/// pointer, allocated only when an item has them. That keeps the record
/// small enough (104 bytes) to move without a call to `memcpy`, and a
/// trivial item's record moves four times on its way out.
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "Record")]
pub struct ItemResult {
    /// Position of the input, from 0 (or the index given to [`Parallel::run_indexed`]).
    pub index: u64,
    /// The input itself.
    pub input: Value,
    /// Null for no output, the one output, or an array of several.
    pub result: Value,
    /// How many output values the item produced (each `emit(v)` and each
    /// returned value is one; a returned table is one value). When more
    /// than one, `result` is the array of them, so a record tells several
    /// values from one array. Serialized only when more than one; see
    /// [`ItemResult::output`].
    pub outputs: u32,
    /// How the item ended.
    pub status: Status,
    /// Wall time of the item's last attempt, in milliseconds.
    pub duration_ms: f64,
    /// How many times the item ran: 1, or more when [`Parallel::retries`]
    /// re-ran it (serialized only when more than 1).
    pub attempts: u32,
    /// The streams and the batch, when the item has any.
    extra: Option<Box<Extra>>,
}

/// What few items have: stream records, a place in a batch.
#[derive(Debug, Clone, Default, PartialEq)]
struct Extra {
    streams: Streams,
    /// The batch, and the item's position within it (kept apart: a record
    /// read from elsewhere may have one without the other).
    batch: Option<u64>,
    batch_index: Option<u64>,
}

impl PartialEq for ItemResult {
    fn eq(&self, other: &ItemResult) -> bool {
        self.index == other.index
            && self.input == other.input
            && self.result == other.result
            && self.outputs == other.outputs
            && self.status == other.status
            && self.duration_ms == other.duration_ms
            && self.attempts == other.attempts
            && self.streams() == other.streams()
            && self.batch() == other.batch()
            && self.batch_index() == other.batch_index()
    }
}

/// An [`ItemResult`] as it is read: one flat record, the streams' fields
/// beside the others (`errors` always, the rest only when they have records).
#[derive(Deserialize)]
struct Record {
    index: u64,
    input: Value,
    result: Value,
    #[serde(default = "one")]
    outputs: u32,
    status: Status,
    errors: Vec<String>,
    duration_ms: f64,
    #[serde(default)]
    batch: Option<u64>,
    #[serde(default)]
    batch_index: Option<u64>,
    #[serde(default = "one")]
    attempts: u32,
    #[serde(default)]
    warning: Vec<String>,
    #[serde(default)]
    verbose: Vec<String>,
    #[serde(default)]
    debug: Vec<String>,
    #[serde(default)]
    information: Vec<String>,
    #[serde(default)]
    progress: Vec<ProgressRecord>,
}

impl From<Record> for ItemResult {
    fn from(r: Record) -> ItemResult {
        let streams = Streams {
            error: r.errors,
            warning: r.warning,
            verbose: r.verbose,
            debug: r.debug,
            information: r.information,
            progress: r.progress,
        };
        let mut item = ItemResult {
            index: r.index,
            input: r.input,
            result: r.result,
            outputs: r.outputs,
            status: r.status,
            duration_ms: r.duration_ms,
            attempts: r.attempts,
            extra: None,
        };
        item.set_streams(streams);
        if r.batch.is_some() || r.batch_index.is_some() {
            let extra = item.extra.get_or_insert_with(Box::default);
            (extra.batch, extra.batch_index) = (r.batch, r.batch_index);
        }
        item
    }
}

/// What [`ItemResult`] serializes as: a [`Record`], borrowed.
#[derive(Serialize)]
struct RecordRef<'a> {
    index: u64,
    input: &'a Value,
    result: &'a Value,
    #[serde(skip_serializing_if = "at_most_one")]
    outputs: u32,
    status: Status,
    errors: &'a [String],
    duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    batch: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    batch_index: Option<u64>,
    #[serde(skip_serializing_if = "is_one")]
    attempts: u32,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    warning: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    verbose: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    debug: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    information: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    progress: &'a [ProgressRecord],
}

impl Serialize for ItemResult {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let streams = self.streams();
        RecordRef {
            index: self.index,
            input: &self.input,
            result: &self.result,
            outputs: self.outputs,
            status: self.status,
            errors: &streams.error,
            duration_ms: self.duration_ms,
            batch: self.batch(),
            batch_index: self.batch_index(),
            attempts: self.attempts,
            warning: &streams.warning,
            verbose: &streams.verbose,
            debug: &streams.debug,
            information: &streams.information,
            progress: &streams.progress,
        }
        .serialize(serializer)
    }
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

fn at_most_one(n: &u32) -> bool {
    *n <= 1
}

impl ItemResult {
    /// The output values one by one: the elements of `result` when the
    /// item produced several, else `result` alone (none when the item
    /// produced nothing).
    ///
    /// ```
    /// use runspace::{RunspacePool, Script};
    /// use serde_json::json;
    /// let pool = RunspacePool::builder().max(1).open().unwrap();
    /// let run = |code| pool.parallel(&Script::new(code).unwrap()).run(vec![json!(0)]).next().unwrap();
    /// let emitted = run("emit(1) emit(2)");
    /// assert_eq!((emitted.result.clone(), emitted.outputs), (json!([1, 2]), 2));
    /// assert_eq!(emitted.output(), &[json!(1), json!(2)]);
    /// let returned = run("return {1, 2}");
    /// assert_eq!((returned.result.clone(), returned.outputs), (json!([1, 2]), 1));
    /// assert_eq!(returned.output(), &[json!([1, 2])]);
    /// assert!(run("local x = 1").output().is_empty());
    /// ```
    pub fn output(&self) -> &[Value] {
        match (&self.result, self.outputs) {
            (_, 0) => &[],
            (Value::Array(values), n) if n > 1 => values,
            (one, _) => std::slice::from_ref(one),
        }
    }

    /// A record of item `index`: no output, no streams, one attempt, no
    /// time. The engine makes the records of a run; this is for callers
    /// that make their own (a test, a record read from elsewhere).
    pub fn new(index: u64, input: Value, status: Status) -> ItemResult {
        ItemResult { index, input, result: Value::Null, outputs: 0, status, duration_ms: 0.0, attempts: 1, extra: None }
    }

    fn ended(index: u64, input: Value, status: Status, error: String) -> ItemResult {
        let mut item = ItemResult::new(index, input, status);
        item.streams_mut().error.push(error);
        item
    }

    /// `write_error` records, then the terminating error if there was one.
    pub fn errors(&self) -> &[String] {
        &self.streams().error
    }

    /// The item's stream records: errors, warnings, verbose, debug,
    /// information and progress.
    pub fn streams(&self) -> &Streams {
        self.extra.as_ref().map_or(&NO_STREAMS, |extra| &extra.streams)
    }

    /// The item's stream records, to change.
    pub fn streams_mut(&mut self) -> &mut Streams {
        &mut self.extra.get_or_insert_with(Box::default).streams
    }

    /// Replaces the item's stream records.
    pub fn set_streams(&mut self, streams: Streams) {
        match &mut self.extra {
            Some(extra) => extra.streams = streams,
            None if streams.is_empty() => {}
            None => self.extra = Some(Box::new(Extra { streams, ..Extra::default() })),
        }
    }

    /// The same, from an invocation's boxed records.
    pub(crate) fn set_boxed_streams(&mut self, streams: Option<Box<Streams>>) {
        if let Some(streams) = streams {
            self.set_streams(*streams);
        }
    }

    /// The batch the item ran in (batch mode only).
    pub fn batch(&self) -> Option<u64> {
        self.extra.as_ref().and_then(|extra| extra.batch)
    }

    /// The item's position within its batch (batch mode only).
    pub fn batch_index(&self) -> Option<u64> {
        self.extra.as_ref().and_then(|extra| extra.batch_index)
    }

    /// Places the item in batch `batch`, at position `index` within it.
    pub fn set_batch(&mut self, batch: u64, index: u64) {
        let extra = self.extra.get_or_insert_with(Box::default);
        (extra.batch, extra.batch_index) = (Some(batch), Some(index));
    }
}

/// The least items an unordered run may hold in flight (read, not yet
/// handed out); with many runspaces, 64 per runspace.
const UNORDERED_IN_FLIGHT: usize = 16_384;

/// Called with a progress snapshot; see [`Parallel::on_progress`].
type ProgressFn = Box<dyn FnMut(&RunProgress) + Send>;

/// A parallel run being configured. Made by [`RunspacePool::parallel`].
#[must_use = "a parallel run does nothing until run()"]
pub struct Parallel {
    pool: RunspacePool,
    script: Script,
    params: Vec<(String, Value)>,
    ordered: bool,
    timeout: Option<Duration>,
    window: Option<usize>,
    batch_size: Option<usize>,
    retry: Option<Retry>,
    halt: Option<Halt>,
    total: Option<u64>,
    progress: Option<(Duration, ProgressFn)>,
}

impl Parallel {
    pub(crate) fn new(pool: RunspacePool, script: &Script) -> Parallel {
        let timeout = pool.session().timeout;
        Parallel {
            pool,
            script: script.clone(),
            params: Vec::new(),
            ordered: false,
            timeout,
            window: None,
            batch_size: None,
            retry: None,
            halt: None,
            total: None,
            progress: None,
        }
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
        // Past MAX_DURATION a deadline (now + timeout) overflows `Instant` and
        // panics: `Duration::MAX` means "no real limit", so it is clamped.
        self.timeout = Some(timeout.min(crate::units::MAX_DURATION));
        self
    }

    /// The most items read but not yet handed to the caller in ordered mode
    /// (default: 4096, or 64 per runspace when more; in batch mode at least
    /// one batch, by default two per runspace). Unordered runs hold at most
    /// this or 16,384 items, whichever is more.
    pub fn window(mut self, items: usize) -> Self {
        self.window = Some(items.max(1));
        self
    }

    /// Batch mode: the input is cut into batches of exactly `size` items
    /// (the last may be shorter); each batch runs on one runspace, its items
    /// in order, and every result carries `batch` and `batch_index`. At most
    /// the pool's `max` batches run at once.
    ///
    /// ```
    /// use runspace::{RunspacePool, Script};
    /// use serde_json::json;
    /// let pool = RunspacePool::builder().max(2).open().unwrap();
    /// let mut items: Vec<_> = pool.parallel(&Script::new("return _").unwrap())
    ///     .batch_size(3)
    ///     .run((0..7).map(|n| json!(n)))
    ///     .collect();
    /// items.sort_by_key(|r| r.index);
    /// assert_eq!((items[4].batch(), items[4].batch_index()), (Some(1), Some(1)));
    /// assert_eq!(items[6].batch(), Some(2));
    /// ```
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = Some(size.max(1));
        self
    }

    /// Re-runs an item that ended `Failed` or `TimedOut` up to `retries`
    /// more times, waiting `backoff`, then twice that, and so on (at most a
    /// minute) between attempts. The result's `attempts` tells how many runs
    /// it took. A drained or stopped run makes no new attempts.
    ///
    /// ```
    /// use std::time::Duration;
    /// use runspace::{RunspacePool, Script, Status};
    /// use serde_json::json;
    /// let pool = RunspacePool::builder().max(1).open().unwrap();
    /// let item = pool.parallel(&Script::new("error('no')").unwrap())
    ///     .retries(2, Duration::from_millis(1))
    ///     .run(vec![json!(1)])
    ///     .next()
    ///     .unwrap();
    /// assert_eq!((item.status, item.attempts), (Status::Failed, 3));
    /// ```
    pub fn retries(mut self, retries: u32, backoff: Duration) -> Self {
        self.retry = (retries > 0).then_some(Retry { retries, backoff });
        self
    }

    /// Stops the run early by a rule (GNU parallel's `--halt`): see
    /// [`Halt`]. [`Results::halted`] tells whether and why it fired.
    ///
    /// ```
    /// use runspace::{Halt, RunspacePool, Script};
    /// use serde_json::json;
    /// let pool = RunspacePool::builder().max(1).open().unwrap();
    /// let mut results = pool.parallel(&Script::new("if _ == 3 then error('bad') end").unwrap())
    ///     .halt("soon,fail=1".parse::<Halt>().unwrap())
    ///     .run((0..1000).map(|n| json!(n)));
    /// let seen = results.by_ref().count();
    /// assert!(seen < 1000);
    /// assert!(results.halted().is_some());
    /// ```
    pub fn halt(mut self, halt: Halt) -> Self {
        self.halt = Some(halt);
        self
    }

    /// The number of inputs, when the caller knows it: progress snapshots
    /// then carry a total and an ETA, and `fail=P%` can be judged sooner.
    pub fn total(mut self, total: u64) -> Self {
        self.total = Some(total);
        self
    }

    /// Calls `callback` with a [`RunProgress`] snapshot at most every
    /// `every` while results are taken, and once more when the run is over
    /// (with `finished` set). The callback runs on the thread that iterates
    /// [`Results`], so it never sees counts that do not add up.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use std::time::Duration;
    /// use runspace::{RunspacePool, Script};
    /// use serde_json::json;
    /// let last = Arc::new(Mutex::new(None));
    /// let seen = last.clone();
    /// let pool = RunspacePool::builder().max(2).open().unwrap();
    /// let n = pool.parallel(&Script::new("return _").unwrap())
    ///     .on_progress(Duration::from_millis(50), move |p| *seen.lock().unwrap() = Some(p.clone()))
    ///     .run((0..100).map(|n| json!(n)))
    ///     .count();
    /// let last = last.lock().unwrap().clone().unwrap();
    /// assert!(last.finished && last.done == 100 && last.completed == 100 && n == 100);
    /// ```
    pub fn on_progress(mut self, every: Duration, callback: impl FnMut(&RunProgress) + Send + 'static) -> Self {
        self.progress = Some((every, Box::new(callback)));
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
        self.run_indexed(inputs.into_iter().enumerate().map(|(i, item)| (i as u64, item)))
    }

    /// Like [`run`](Self::run), but each input comes with its own index,
    /// which its result carries: a resumed run skips some inputs and keeps
    /// the others' original positions. Indices need not be contiguous;
    /// `ordered` keeps the order in which inputs were given.
    ///
    /// ```
    /// use runspace::{RunspacePool, Script};
    /// use serde_json::json;
    /// let pool = RunspacePool::builder().max(2).open().unwrap();
    /// let got: Vec<u64> = pool.parallel(&Script::new("return _").unwrap())
    ///     .ordered(true)
    ///     .run_indexed(vec![(5, json!("a")), (9, json!("b"))])
    ///     .map(|r| r.index)
    ///     .collect();
    /// assert_eq!(got, vec![5, 9]);
    /// ```
    pub fn run_indexed<I, T>(self, inputs: I) -> Results
    where
        I: IntoIterator<Item = (u64, T)> + Send + 'static,
        I::IntoIter: Send,
        T: Into<Input>,
    {
        static NEXT_RUN: AtomicU64 = AtomicU64::new(1);
        let throttle = self.pool.max();
        let mut window = self.window.unwrap_or_else(|| (throttle * 64).max(4096));
        if let Some(batch) = self.batch_size {
            // A batch is handed out whole, so the window must hold one; by
            // default, one running and one queued per runspace.
            window = match self.window {
                Some(_) => window.max(batch),
                None => window.max(batch * throttle * 2),
            };
        }
        // The channel's slots are allocated up front: past 10,000 items in
        // flight, workers wait for the caller rather than the channel growing.
        let (results_tx, results_rx) = bounded((throttle * 4 + 4).min(40_004));
        let shared = Arc::new(RunShared {
            id: NEXT_RUN.fetch_add(1, Ordering::Relaxed),
            script: self.script,
            params: self.params,
            timeout: self.timeout,
            retry: self.retry,
            batch_size: self.batch_size,
            // Unordered runs have no reorder window, but the queues scale with
            // the throttle: cap what is in flight so that 200 runspaces of
            // trivial items do not hold 100 MB of queued chunks.
            in_flight_cap: window.max(UNORDERED_IN_FLIGHT) as u64,
            cancelled: AtomicBool::new(false),
            aborted: AtomicBool::new(false),
            item_ns: AtomicU64::new(0),
            counters: Arc::new(Counters::default()),
            staging: Mutex::new(Vec::new()),
            room: tokio::sync::Notify::new(),
            window: Window {
                limit: if self.ordered { window as u64 } else { u64::MAX },
                emitted: Mutex::new(0),
                room: Condvar::new(),
            },
        });
        let _ = self.pool.ensure_workers(throttle);
        let feeder = self.pool.sender().map(|sender| {
            let shared = shared.clone();
            let inputs = inputs.into_iter();
            thread::Builder::new()
                .name("runspace-feeder".into())
                .spawn(move || worker::feed(inputs, &shared, &sender, &results_tx, throttle))
                .expect("cannot start the feeder thread")
        });
        results::Results::new(
            RunControl::new(self.pool, shared),
            results_rx,
            self.ordered,
            feeder,
            results::Extras { halt: self.halt, total: self.total, progress: self.progress },
        )
    }
}

impl RunspacePool {
    /// Prepares a parallel run of `script` over many inputs.
    pub fn parallel(&self, script: &Script) -> Parallel {
        Parallel::new(self.clone(), script)
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
    /// Batches formed so far (batch mode).
    batches: AtomicU64,
    /// True once the input is exhausted.
    input_done: AtomicBool,
}

/// Limits how far the feeder runs ahead of the caller in ordered mode.
struct Window {
    limit: u64,
    /// Inputs (in the order given) handed to the caller so far.
    emitted: Mutex<u64>,
    room: Condvar,
}

/// What the feeder, the workers and the caller of one run share.
pub(crate) struct RunShared {
    id: u64,
    script: Script,
    params: Vec<(String, Value)>,
    timeout: Option<Duration>,
    retry: Option<Retry>,
    batch_size: Option<usize>,
    /// Unordered mode: the most items read and not yet handed out.
    in_flight_cap: u64,
    /// No new items are taken (drain or stop).
    cancelled: AtomicBool,
    /// Running items are stopped too.
    aborted: AtomicBool,
    /// Smoothed cost of one item in nanoseconds (0 until measured).
    item_ns: AtomicU64,
    counters: Arc<Counters>,
    window: Window,
    /// Results of the chunks running now that are not yet delivered.
    staging: Mutex<Vec<Arc<Staging>>>,
    /// Told once per delivery the caller takes from the results channel:
    /// wakes one lane whose results wait for room in it.
    room: tokio::sync::Notify,
}
