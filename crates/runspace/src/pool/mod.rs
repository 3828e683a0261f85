//! A pool of runspaces on worker threads: PowerShell's `RunspacePool`.
//!
//! The pool runs [`Task`]s without knowing what they are (as rayon-core
//! runs a `JobRef`): a worker gives each task a [`Lane`] of its runspace —
//! a future on the worker's event loop beside the runspace's other lanes —
//! and the task runs its items there, each a Luau thread of its own. Items
//! that wait yield, so `throttle` items in flight cost `threads` OS threads.

use std::any::Any;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError};

use crate::control::StopReason;
use crate::error::{Error, Result};
use crate::runspace::Runspace;
use crate::session::SessionState;

mod watchdog;

pub(crate) use watchdog::Held;
use watchdog::Slot;
pub use watchdog::ABANDON_GRACE;

/// A future that runs on one worker thread (it holds the runspace).
pub(crate) type LocalFuture = Pin<Box<dyn Future<Output = ()>>>;

/// Work the pool runs: one invocation, a chunk of a parallel run, what an
/// abandoned worker left. The pool only starts, fails or skips it.
pub(crate) trait Task: IntoAny + Send + 'static {
    /// Runs the task on `lane`, beside the runspace's other lanes.
    fn run(self: Box<Self>, lane: Lane) -> LocalFuture;
    /// The worker could not open its runspace: ends every item with `message`.
    fn fail(self: Box<Self>, message: &str);
    /// The pool is closing: ends the task unrun.
    fn skip(self: Box<Self>);
    /// Called on a fresh worker before its runspace opens (what an
    /// abandoned worker left delivers the results it had).
    fn prepare(&mut self) {}
}

/// A task given back whole (the queue was full): its maker takes it back
/// as the type it made.
pub(crate) trait IntoAny {
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

impl<T: Any> IntoAny for T {
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// What a task runs on: the worker's runspace, the worker's slot (where
/// the watchdog can take the task over), and the lane's number in it.
pub(crate) struct Lane {
    pub(crate) runspace: Rc<Runspace>,
    pub(crate) slot: Arc<Slot>,
    pub(crate) id: u64,
    shared: Arc<Shared>,
}

impl Lane {
    /// Queues `task` for another lane (the rest of a chunk whose item
    /// waits). Never waits for room, since workers are what makes room:
    /// the task comes back when the queue is full or the pool is closing.
    pub(crate) fn hand_off(&self, task: Box<dyn Task>) -> std::result::Result<(), Box<dyn Task>> {
        let shared = &self.shared;
        if shared.closing.load(Ordering::Acquire) {
            return Err(task);
        }
        shared.requeue.try_send(task)?;
        // The pool's close may have emptied the queue between the look and
        // the send: empty it again, so nothing waits there for workers that
        // are gone (the task's results sender would keep its caller waiting).
        if shared.closing.load(Ordering::Acquire) {
            while let Ok(queued) = shared.receiver.try_recv() {
                queued.task.skip();
            }
        }
        Ok(())
    }
}

/// Configures and opens a [`RunspacePool`].
///
/// ```
/// use runspace::{RunspacePool, SessionState};
/// let pool = RunspacePool::builder().min(1).max(5).session(SessionState::new()).open().unwrap();
/// assert_eq!((pool.max(), pool.threads()), (5, 5));
/// let waiting = RunspacePool::builder().threads(2).throttle(10_000).open().unwrap();
/// assert_eq!((waiting.max(), waiting.threads()), (10_000, 2));
/// ```
#[must_use]
#[derive(Debug, Clone)]
pub struct PoolBuilder {
    min: usize,
    max: Option<usize>,
    threads: Option<usize>,
    throttle: Option<usize>,
    session: SessionState,
}

impl PoolBuilder {
    /// Runspaces opened up front and kept warm (default 1).
    pub fn min(mut self, min: usize) -> Self {
        self.min = min;
        self
    }

    /// PowerShell's maximum: `max` runspaces, each running one item at a
    /// time (sets both [`threads`](Self::threads) and
    /// [`throttle`](Self::throttle) unless they are set).
    pub fn max(mut self, max: usize) -> Self {
        self.max = Some(max);
        self
    }

    /// Runspaces, each on its own OS thread (default: the number of CPUs,
    /// never more than the throttle).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads);
        self
    }

    /// Items in flight at once, over all runspaces (default: the number of
    /// threads). Items that wait in host calls (`sleep`, `http`, `net`,
    /// `exec`) yield their runspace to the others, so this may be far
    /// larger than the number of threads: 10,000 sleeping items cost
    /// 10,000 small Luau threads, not 10,000 OS threads.
    pub fn throttle(mut self, items: usize) -> Self {
        self.throttle = Some(items);
        self
    }

    /// What every runspace starts with.
    pub fn session(mut self, session: SessionState) -> Self {
        self.session = session;
        self
    }

    /// (threads, throttle) as set, defaulted and checked.
    fn limits(&self) -> Result<(usize, usize)> {
        let cpus = thread::available_parallelism().map_or(2, |n| n.get());
        let throttle = self.throttle.or(self.max).or(self.threads).unwrap_or(cpus);
        let threads = self.threads.or(self.max).unwrap_or(cpus);
        if throttle == 0 {
            return Err(Error::Pool("the throttle (items in flight) must be at least 1".into()));
        }
        if threads == 0 {
            return Err(Error::Pool("threads must be at least 1".into()));
        }
        // More runspaces than items in flight would only sit idle.
        Ok((threads.min(throttle), throttle))
    }

    /// Opens the pool: starts `min` workers and opens their runspaces, so a
    /// module that fails to load is reported here, not on the first item.
    pub fn open(self) -> Result<RunspacePool> {
        let (threads, throttle) = self.limits()?;
        let min = self.min.clamp(1, threads);
        // Room for a few tasks per worker keeps workers fed without letting
        // the queue, and so memory, grow with the input; room for one task
        // per item in flight (up to a point) keeps lanes of waiting items full.
        let (sender, receiver) = bounded((threads * 4).max(throttle.min(4096)));
        let sender = TaskSender { queue: sender, queued: Arc::new(tokio::sync::Notify::new()) };
        let (close, closed) = bounded(0);
        let shared = Arc::new(Shared {
            session: self.session,
            threads,
            throttle,
            lanes_per_worker: throttle.div_ceil(threads),
            receiver,
            requeue: sender.clone(),
            queued_wake: sender.queued.clone(),
            closed,
            workers: Mutex::new(Vec::new()),
            idle: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            abandoned: Arc::new(AtomicUsize::new(0)),
            spawned: AtomicUsize::new(0),
        });
        let (stop_watchdog, stop_rx) = bounded::<()>(0);
        let watched = shared.clone();
        let watchdog = thread::Builder::new()
            .name("runspace-watchdog".into())
            .spawn(move || watchdog::watch(&watched, &stop_rx))
            .map_err(|e| Error::Pool(format!("cannot start the watchdog thread: {e}")))?;
        let inner = Arc::new(PoolInner {
            shared,
            sender: Mutex::new(Some(sender)),
            close: Mutex::new(Some(close)),
            watchdog: Mutex::new(Some((stop_watchdog, watchdog))),
        });
        let pool = RunspacePool { inner };
        pool.inner.shared.spawn_workers(min, true)?;
        Ok(pool)
    }
}

/// Runspaces on worker threads, running invocations and parallel runs under
/// a throttle limit. Cheap to clone (clones share the pool); the last clone
/// to drop stops what still runs and joins every thread.
///
/// ```
/// use runspace::{RunspacePool, Script};
/// use serde_json::json;
/// let pool = RunspacePool::builder().max(4).open().unwrap();
/// let squares: Vec<_> = pool
///     .parallel(&Script::new("return _ * _").unwrap())
///     .ordered(true)
///     .run((1..=5).map(|n| json!(n)))
///     .map(|item| item.result)
///     .collect();
/// assert_eq!(squares, vec![json!(1), json!(4), json!(9), json!(16), json!(25)]);
/// ```
#[derive(Clone)]
pub struct RunspacePool {
    pub(crate) inner: Arc<PoolInner>,
}

impl RunspacePool {
    /// Starts configuring a pool.
    pub fn builder() -> PoolBuilder {
        PoolBuilder { min: 1, max: None, threads: None, throttle: None, session: SessionState::new() }
    }

    /// The throttle limit: items in flight at once.
    pub fn max(&self) -> usize {
        self.inner.shared.throttle
    }

    /// The most runspaces (OS threads) the pool opens.
    pub fn threads(&self) -> usize {
        self.inner.shared.threads
    }

    /// Runspaces open now (not counting ones abandoned inside a C call).
    pub fn open_runspaces(&self) -> usize {
        self.inner.shared.workers().len()
    }

    /// Worker threads abandoned by the watchdog inside a C call that has
    /// not returned yet (at most [`threads`](Self::threads)).
    pub fn abandoned_runspaces(&self) -> usize {
        self.inner.shared.abandoned.load(Ordering::Acquire)
    }

    /// The session every runspace of this pool starts with.
    pub fn session(&self) -> &SessionState {
        &self.inner.shared.session
    }

    /// Stops everything running, ends queued work as `Stopped`, and joins
    /// every worker. Dropping the last clone does the same.
    pub fn close(self) {
        self.inner.shutdown();
    }

    /// Queues a task that wants a worker of its own soon (an invocation):
    /// the pool grows when more of them wait than workers have room.
    pub(crate) fn submit(&self, task: Box<dyn Task>) -> Result<()> {
        let queued = self.inner.shared.queued.fetch_add(1, Ordering::AcqRel) + 1;
        self.inner.shared.grow_if_busy(queued);
        let sender = self.inner.sender.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let closed = || Error::Pool("the pool is closed".into());
        if sender.ok_or_else(closed)?.queue(Queued { task, counted: true }) {
            Ok(())
        } else {
            Err(closed())
        }
    }

    /// A sender for a run's feeder thread, which must not hold the pool itself.
    pub(crate) fn sender(&self) -> Option<TaskSender> {
        self.inner.sender.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Starts workers until `count` exist (never past `threads`).
    pub(crate) fn ensure_workers(&self, count: usize) -> Result<()> {
        let have = self.open_runspaces();
        let want = count.min(self.inner.shared.threads);
        if want > have {
            self.inner.shared.spawn_workers(want - have, false)?;
        }
        Ok(())
    }

    /// Stops the items in flight that belong to `owner` (a parallel run).
    pub(crate) fn stop_owner(&self, owner: u64) {
        for slot in self.inner.shared.slots() {
            slot.control.stop_owner(owner);
        }
    }
}

/// A task in the queue, and whether it counts as a waiting invocation.
pub(crate) struct Queued {
    task: Box<dyn Task>,
    counted: bool,
}

/// Queues tasks, and wakes the workers that wait for one beside their
/// running lanes (a worker with no lane blocks on the queue itself).
#[derive(Clone)]
pub(crate) struct TaskSender {
    queue: Sender<Queued>,
    queued: Arc<tokio::sync::Notify>,
}

impl TaskSender {
    /// Queues `task` from a run's feeder, waiting for room; false once the
    /// pool is closed.
    pub(crate) fn send(&self, task: Box<dyn Task>) -> bool {
        self.queue(Queued { task, counted: false })
    }

    /// Queues `task` from a worker, which must never wait for room (the
    /// workers are what makes room): the task comes back when there is none.
    pub(crate) fn try_send(&self, task: Box<dyn Task>) -> std::result::Result<(), Box<dyn Task>> {
        match self.queue.try_send(Queued { task, counted: false }) {
            Ok(()) => {
                self.queued.notify_waiters();
                Ok(())
            }
            Err(e) => Err(e.into_inner().task),
        }
    }

    fn queue(&self, queued: Queued) -> bool {
        let sent = self.queue.send(queued).is_ok();
        self.queued.notify_waiters();
        sent
    }
}

pub(crate) struct PoolInner {
    shared: Arc<Shared>,
    /// `None` once closed: nothing new is accepted.
    sender: Mutex<Option<TaskSender>>,
    /// Dropped at close. Workers also wait on it, so they leave even while
    /// a run's feeder, blocked in its input, still holds a task sender.
    close: Mutex<Option<Sender<()>>>,
    watchdog: Mutex<Option<(Sender<()>, JoinHandle<()>)>>,
}

/// What the pool, its workers and its watchdog share.
pub(crate) struct Shared {
    session: SessionState,
    threads: usize,
    throttle: usize,
    /// Tasks one worker runs at once.
    lanes_per_worker: usize,
    receiver: Receiver<Queued>,
    /// Queues what lanes hand on (see [`Lane::hand_off`]). The queue's own
    /// sender, held here and not by the runs: a queued task holds its run,
    /// and a run holding the queue would keep both alive.
    requeue: TaskSender,
    /// Notified whenever a task is queued.
    queued_wake: Arc<tokio::sync::Notify>,
    closed: Receiver<()>,
    workers: Mutex<Vec<WorkerHandle>>,
    /// Workers waiting for work with no lane running.
    idle: AtomicUsize,
    /// Invocations submitted and not yet taken by a worker.
    queued: AtomicUsize,
    closing: AtomicBool,
    /// Abandoned worker threads still inside their C call.
    abandoned: Arc<AtomicUsize>,
    /// Names worker threads.
    spawned: AtomicUsize,
}

struct WorkerHandle {
    slot: Arc<Slot>,
    thread: JoinHandle<()>,
}

impl Shared {
    fn workers(&self) -> std::sync::MutexGuard<'_, Vec<WorkerHandle>> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every worker's slot, for the watchdog and for stopping runs.
    pub(crate) fn slots(&self) -> Vec<Arc<Slot>> {
        self.workers().iter().map(|w| w.slot.clone()).collect()
    }

    /// Whether another worker may be abandoned: at most `threads` abandoned
    /// threads run at once.
    pub(crate) fn may_abandon(&self) -> bool {
        self.abandoned.load(Ordering::Acquire) < self.threads
    }

    /// Detaches the abandoned worker of `slot` and starts a fresh one in
    /// its place, which first runs `takeover` (what the old one left).
    pub(crate) fn replace(self: &Arc<Self>, slot: &Arc<Slot>, takeover: Vec<Box<dyn Task>>) {
        self.abandoned.fetch_add(1, Ordering::AcqRel);
        let mut workers = self.workers();
        workers.retain(|w| !Arc::ptr_eq(&w.slot, slot));
        let _ = self.spawn(&mut workers, takeover, None);
    }

    /// Adds a worker when more invocations wait than workers are idle and
    /// the thread limit allows.
    fn grow_if_busy(self: &Arc<Self>, queued: usize) {
        if queued > self.idle.load(Ordering::Acquire) {
            let mut workers = self.workers();
            if workers.len() < self.threads {
                let _ = self.spawn(&mut workers, Vec::new(), None);
            }
        }
    }

    /// Starts `count` workers; with `wait`, waits for their runspaces to open
    /// and reports the first failure.
    fn spawn_workers(self: &Arc<Self>, count: usize, wait: bool) -> Result<()> {
        let mut workers = self.workers();
        let (ready_tx, ready_rx) = bounded::<Result<()>>(count);
        for _ in 0..count {
            if workers.len() >= self.threads {
                break;
            }
            self.spawn(&mut workers, Vec::new(), Some(ready_tx.clone()))?;
        }
        drop(workers);
        drop(ready_tx);
        if wait {
            for ready in ready_rx.iter() {
                ready?;
            }
        }
        Ok(())
    }

    fn spawn(
        self: &Arc<Self>,
        workers: &mut Vec<WorkerHandle>,
        first: Vec<Box<dyn Task>>,
        ready: Option<Sender<Result<()>>>,
    ) -> Result<()> {
        let slot = Arc::new(Slot::new());
        let worker = Worker { shared: self.clone(), slot: slot.clone() };
        let number = self.spawned.fetch_add(1, Ordering::Relaxed) + 1;
        let thread = thread::Builder::new()
            .name(format!("runspace-{number}"))
            .spawn(move || worker.run(first, ready))
            .map_err(|e| Error::Pool(format!("cannot start a worker thread: {e}")))?;
        workers.push(WorkerHandle { slot, thread });
        Ok(())
    }
}

impl PoolInner {
    fn shutdown(&self) {
        // First the watchdog, so it starts no replacement worker meanwhile.
        if let Some((stop, handle)) = self.watchdog.lock().unwrap_or_else(|e| e.into_inner()).take() {
            drop(stop);
            let _ = handle.join();
        }
        let shared = &self.shared;
        shared.closing.store(true, Ordering::Release);
        drop(self.sender.lock().unwrap_or_else(|e| e.into_inner()).take());
        drop(self.close.lock().unwrap_or_else(|e| e.into_inner()).take());
        let workers = std::mem::take(&mut *shared.workers());
        // A worker may start its last item just after a stop request went
        // out, so keep asking until every worker has left; one stuck in a C
        // call past the grace is left behind.
        let give_up = Instant::now() + ABANDON_GRACE;
        while !workers.iter().all(|w| w.thread.is_finished()) && Instant::now() < give_up {
            for worker in &workers {
                worker.slot.control.stop_all(StopReason::Stopped);
            }
            thread::sleep(Duration::from_millis(1));
        }
        for worker in workers {
            if worker.thread.is_finished() {
                let _ = worker.thread.join();
            } else {
                // Counted, as the thread uncounts itself when it leaves.
                shared.abandoned.fetch_add(1, Ordering::AcqRel);
                worker.slot.abandon_on_close();
            }
        }
        // Work that no worker took (there were none, or all failed to open).
        while let Ok(queued) = shared.receiver.try_recv() {
            queued.task.skip();
        }
    }
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// How often a worker with lanes running looks for the pool's close (a
/// queued task or an ended lane wakes it at once).
const CLOSE_POLL: Duration = Duration::from_millis(50);

/// How often, at most, a worker with lanes running collects the garbage
/// that stopped items left (their host calls' futures).
const COLLECT_GAP: Duration = Duration::from_millis(20);

/// The lanes a worker runs now, and a wake-up for when one ends.
#[derive(Default)]
struct Lanes {
    running: Cell<usize>,
    next_id: Cell<u64>,
    ended: tokio::sync::Notify,
}

/// One worker thread, its event loop and the runspace it owns for life.
struct Worker {
    shared: Arc<Shared>,
    slot: Arc<Slot>,
}

impl Worker {
    fn run(self, first: Vec<Box<dyn Task>>, ready: Option<Sender<Result<()>>>) {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(e) => {
                let message = format!("cannot start a worker's event loop: {e}");
                if let Some(ready) = ready {
                    let _ = ready.send(Err(Error::Pool(message.clone())));
                }
                first.into_iter().for_each(|task| task.fail(&message));
                return self.leave();
            }
        };
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, self.serve(first, ready));
        {
            // Lanes still there (an abandoned worker's) are dropped here,
            // which cancels what their items waited on.
            let _entered = runtime.enter();
            drop(local);
        }
        // Name lookups on the blocking pool may not return soon: no waiting.
        runtime.shutdown_background();
        self.leave();
    }

    fn leave(&self) {
        if self.slot.is_abandoned() {
            self.shared.abandoned.fetch_sub(1, Ordering::AcqRel);
        }
    }

    async fn serve(&self, first: Vec<Box<dyn Task>>, ready: Option<Sender<Result<()>>>) {
        let shared = &self.shared;
        let control = self.slot.control.clone();
        let lanes = Rc::new(Lanes::default());
        let mut first = first;
        // What an abandoned worker left delivers its results before a runspace opens.
        first.iter_mut().for_each(|task| task.prepare());
        let mut runspace = Runspace::open_with(&shared.session, control.clone()).map(Rc::new);
        if let Some(ready) = ready {
            let _ = ready.send(runspace.as_ref().map(|_| ()).map_err(Clone::clone));
        }
        for task in first {
            self.start(&runspace, task, &lanes);
        }
        while !self.slot.is_abandoned() {
            // What stopped items owe (see `Runspace::collect_if_owed`): with
            // lanes running, at most every COLLECT_GAP, so a burst of 10,000
            // stops pays a few collections, not one each (the CLOSE_POLL
            // tick pays the last); before idling, at once.
            let gap = if lanes.running.get() == 0 { Duration::ZERO } else { COLLECT_GAP };
            if runspace.as_ref().is_ok_and(|runspace| runspace.collect_if_owed(gap)) {
                // What the collection dropped may have woken tasks (an HTTP
                // connection closing its socket): let them run before this
                // loop blocks on the queue, which does not drive them.
                tokio::task::yield_now().await;
            }
            let queued = if lanes.running.get() == 0 {
                shared.idle.fetch_add(1, Ordering::AcqRel);
                let queued = crossbeam_channel::select! {
                    recv(shared.receiver) -> queued => queued.ok(),
                    recv(shared.closed) -> _ => None,
                };
                shared.idle.fetch_sub(1, Ordering::AcqRel);
                match queued {
                    Some(queued) => queued,
                    None => break,
                }
            } else if lanes.running.get() < shared.lanes_per_worker {
                // A worker taking thousands of tasks in a row (items that
                // wait) registers for a wake-up only when the queue is empty.
                let queued = match shared.receiver.try_recv() {
                    Ok(queued) => Ok(queued),
                    Err(TryRecvError::Empty) => {
                        // Registered before the second look at the queue, so
                        // a task queued in between still wakes us.
                        let queued = shared.queued_wake.notified();
                        tokio::pin!(queued);
                        queued.as_mut().enable();
                        match shared.receiver.try_recv() {
                            Err(TryRecvError::Empty) => {
                                tokio::select! {
                                    _ = queued => {}
                                    _ = lanes.ended.notified() => {}
                                    // The close signal has no async wake-up.
                                    _ = tokio::time::sleep(CLOSE_POLL) => {}
                                }
                                continue;
                            }
                            other => other,
                        }
                    }
                    Err(disconnected) => Err(disconnected),
                };
                match queued {
                    Ok(queued) => queued,
                    Err(_) => break, // only Disconnected gets here
                }
            } else {
                lanes.ended.notified().await;
                continue;
            };
            if queued.counted {
                shared.queued.fetch_sub(1, Ordering::AcqRel);
            }
            if runspace.as_ref().is_ok_and(|rs| !rs.is_healthy()) {
                // Lanes still running keep the old one until they end.
                runspace = Runspace::open_with(&shared.session, control.clone()).map(Rc::new);
            }
            self.start(&runspace, queued.task, &lanes);
        }
        // The queue closed: let the lanes finish (the pool's close stops them).
        while lanes.running.get() > 0 && !self.slot.is_abandoned() {
            lanes.ended.notified().await;
        }
    }

    fn start(&self, runspace: &Result<Rc<Runspace>>, task: Box<dyn Task>, lanes: &Rc<Lanes>) {
        if self.shared.closing.load(Ordering::Acquire) {
            return task.skip();
        }
        let runspace = match runspace {
            Ok(runspace) => runspace.clone(),
            Err(e) => return task.fail(&e.to_string()),
        };
        let id = lanes.next_id.get() + 1;
        lanes.next_id.set(id);
        lanes.running.set(lanes.running.get() + 1);
        // The task is the slot's until its lane first runs: several lanes
        // start before any is polled, and when the first gets stuck in a C
        // call the rest are never polled. The watchdog must find them to
        // hand them on; dropped with the abandoned VM, their items were lost
        // (a run's records silently missing, an invocation's `end()` hung).
        self.slot.hold(id, Box::new(Unstarted(Some(task))));
        let slot = self.slot.clone();
        let lanes = lanes.clone();
        let shared = self.shared.clone();
        tokio::task::spawn_local(async move {
            // Taken back in one step under the slot's lock: either the lane
            // runs it or the watchdog handed it on, never both, never neither.
            let task = slot.release(id).and_then(|mut held| held.as_any().downcast_mut::<Unstarted>()?.0.take());
            if let Some(task) = task {
                task.run(Lane { runspace, slot, id, shared }).await;
            }
            lanes.running.set(lanes.running.get() - 1);
            lanes.ended.notify_one();
        });
    }
}

/// A task started on a lane that has not run yet, as the watchdog holds it.
struct Unstarted(Option<Box<dyn Task>>);

impl watchdog::Held for Unstarted {
    fn take_over(self: Box<Self>, _: StopReason, _: Option<Instant>) -> Option<Box<dyn Task>> {
        // Never the stuck lane (it has not run): it starts elsewhere.
        self.0
    }

    fn restart(self: Box<Self>) -> Option<Box<dyn Task>> {
        self.0
    }

    fn close(self: Box<Self>) {
        if let Some(task) = self.0 {
            task.skip();
        }
    }

    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
