//! A pool of runspaces on worker threads: PowerShell's `RunspacePool`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::control::StopReason;
use crate::error::{Error, Result};
use crate::invocation::{Invocation, Pending};
use crate::parallel::{self, Chunk, Parallel, Takeover};
use crate::runspace::Runspace;
use crate::script::Script;
use crate::session::SessionState;
use crate::streams::Status;
use crate::watchdog::{self, Slot, ABANDON_GRACE};

/// Work a pool worker takes from the queue.
pub(crate) enum Work {
    Invoke(Arc<Pending>),
    Chunk(Chunk),
    /// What an abandoned worker left: results to deliver, the rest of its chunk.
    Takeover(Takeover),
}

/// Configures and opens a [`RunspacePool`].
///
/// ```
/// use runspace::{RunspacePool, SessionState};
/// let pool = RunspacePool::builder().min(1).max(5).session(SessionState::new()).open().unwrap();
/// assert_eq!(pool.max(), 5);
/// ```
#[must_use]
#[derive(Debug, Clone)]
pub struct PoolBuilder {
    min: usize,
    max: usize,
    session: SessionState,
}

impl PoolBuilder {
    /// Runspaces opened up front and kept warm (default 1).
    pub fn min(mut self, min: usize) -> Self {
        self.min = min;
        self
    }

    /// The most runspaces working at once: the throttle limit (default: the
    /// number of CPUs).
    pub fn max(mut self, max: usize) -> Self {
        self.max = max;
        self
    }

    /// What every runspace starts with.
    pub fn session(mut self, session: SessionState) -> Self {
        self.session = session;
        self
    }

    /// Opens the pool: starts `min` workers and opens their runspaces, so a
    /// module that fails to load is reported here, not on the first item.
    pub fn open(self) -> Result<RunspacePool> {
        if self.max == 0 {
            return Err(Error::Pool("max must be at least 1".into()));
        }
        let min = self.min.clamp(1, self.max);
        // Room for a few chunks per worker keeps workers fed without
        // letting the queue, and so memory, grow with the input.
        let (sender, receiver) = bounded(self.max * 4);
        let (close, closed) = bounded(0);
        let shared = Arc::new(Shared {
            session: self.session,
            max: self.max,
            receiver,
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
        PoolBuilder {
            min: 1,
            max: thread::available_parallelism().map_or(2, |n| n.get()),
            session: SessionState::new(),
        }
    }

    /// The throttle limit.
    pub fn max(&self) -> usize {
        self.inner.shared.max
    }

    /// Runspaces open now (not counting ones abandoned inside a C call).
    pub fn open_runspaces(&self) -> usize {
        self.inner.shared.workers().len()
    }

    /// Worker threads abandoned by the watchdog inside a C call that has
    /// not returned yet (at most [`max`](Self::max)).
    pub fn abandoned_runspaces(&self) -> usize {
        self.inner.shared.abandoned.load(Ordering::Acquire)
    }

    /// The session every runspace of this pool starts with.
    pub fn session(&self) -> &SessionState {
        &self.inner.shared.session
    }

    /// Prepares one invocation of `script` on this pool.
    pub fn invocation(&self, script: &Script) -> Invocation<'_> {
        Invocation::new(self, script)
    }

    /// Prepares a parallel run of `script` over many inputs.
    pub fn parallel(&self, script: &Script) -> Parallel {
        Parallel::new(self.clone(), script)
    }

    /// Stops everything running, ends queued work as `Stopped`, and joins
    /// every worker. Dropping the last clone does the same.
    pub fn close(self) {
        self.inner.shutdown();
    }

    pub(crate) fn submit(&self, work: Work) -> Result<()> {
        if matches!(work, Work::Invoke(_)) {
            let queued = self.inner.shared.queued.fetch_add(1, Ordering::AcqRel) + 1;
            self.inner.shared.grow_if_busy(queued);
        }
        let sender = self.inner.sender.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let closed = || Error::Pool("the pool is closed".into());
        sender.ok_or_else(closed)?.send(work).map_err(|_| closed())
    }

    /// A sender for a run's feeder thread, which must not hold the pool itself.
    pub(crate) fn sender(&self) -> Option<Sender<Work>> {
        self.inner.sender.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Starts workers until `count` exist (never past `max`).
    pub(crate) fn ensure_workers(&self, count: usize) -> Result<()> {
        let have = self.open_runspaces();
        let want = count.min(self.inner.shared.max);
        if want > have {
            self.inner.shared.spawn_workers(want - have, false)?;
        }
        Ok(())
    }

    /// Stops the running items that belong to `owner` (a parallel run).
    pub(crate) fn stop_owner(&self, owner: u64) {
        for slot in self.inner.shared.slots() {
            let (generation, running_for) = slot.control.running();
            if running_for == owner {
                slot.control.request_stop(generation, StopReason::Stopped);
            }
        }
    }
}

pub(crate) struct PoolInner {
    shared: Arc<Shared>,
    /// `None` once closed: nothing new is accepted.
    sender: Mutex<Option<Sender<Work>>>,
    /// Dropped at close. Workers also wait on it, so they leave even while
    /// a run's feeder, blocked in its input, still holds a work sender.
    close: Mutex<Option<Sender<()>>>,
    watchdog: Mutex<Option<(Sender<()>, JoinHandle<()>)>>,
}

/// What the pool, its workers and its watchdog share.
pub(crate) struct Shared {
    session: SessionState,
    max: usize,
    receiver: Receiver<Work>,
    closed: Receiver<()>,
    workers: Mutex<Vec<WorkerHandle>>,
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

    /// Whether another worker may be abandoned: at most `max` abandoned
    /// threads run at once.
    pub(crate) fn may_abandon(&self) -> bool {
        self.abandoned.load(Ordering::Acquire) < self.max
    }

    /// Detaches the abandoned worker of `slot` and starts a fresh one in
    /// its place, which first finishes `takeover`.
    pub(crate) fn replace(self: &Arc<Self>, slot: &Arc<Slot>, takeover: Option<Takeover>) {
        self.abandoned.fetch_add(1, Ordering::AcqRel);
        let mut workers = self.workers();
        workers.retain(|w| !Arc::ptr_eq(&w.slot, slot));
        let _ = self.spawn(&mut workers, takeover.map(Work::Takeover), None);
    }

    /// Adds a worker when more invocations wait than workers are idle and
    /// the throttle allows.
    fn grow_if_busy(self: &Arc<Self>, queued: usize) {
        if queued > self.idle.load(Ordering::Acquire) {
            let mut workers = self.workers();
            if workers.len() < self.max {
                let _ = self.spawn(&mut workers, None, None);
            }
        }
    }

    /// Starts `count` workers; with `wait`, waits for their runspaces to open
    /// and reports the first failure.
    fn spawn_workers(self: &Arc<Self>, count: usize, wait: bool) -> Result<()> {
        let mut workers = self.workers();
        let (ready_tx, ready_rx) = bounded::<Result<()>>(count);
        for _ in 0..count {
            if workers.len() >= self.max {
                break;
            }
            self.spawn(&mut workers, None, Some(ready_tx.clone()))?;
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
        first: Option<Work>,
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
        // A worker may take its last piece of work just after a stop request
        // went out, so keep asking until every worker has left; one stuck in
        // a C call past the grace is left behind.
        let give_up = Instant::now() + ABANDON_GRACE;
        while !workers.iter().all(|w| w.thread.is_finished()) && Instant::now() < give_up {
            for worker in &workers {
                let (generation, _) = worker.slot.control.running();
                worker.slot.control.request_stop(generation, StopReason::Stopped);
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
        while let Ok(work) = shared.receiver.try_recv() {
            abandon(work);
        }
    }
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One worker thread and the runspace it owns for its whole life.
struct Worker {
    shared: Arc<Shared>,
    slot: Arc<Slot>,
}

impl Worker {
    fn run(self, first: Option<Work>, ready: Option<Sender<Result<()>>>) {
        let shared = &self.shared;
        let control = self.slot.control.clone();
        let mut first = first;
        if let Some(Work::Takeover(takeover)) = &mut first {
            // The abandoned worker's results go out before a runspace opens.
            takeover.deliver();
        }
        let mut runspace = Runspace::open_with(&shared.session, control.clone());
        if let Some(ready) = ready {
            let _ = ready.send(runspace.as_ref().map(|_| ()).map_err(Clone::clone));
        }
        if let Some(work) = first {
            self.handle(&mut runspace, work);
        }
        if self.slot.is_abandoned() {
            shared.abandoned.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        shared.idle.fetch_add(1, Ordering::AcqRel);
        loop {
            let work = crossbeam_channel::select! {
                recv(shared.receiver) -> work => match work {
                    Ok(work) => work,
                    Err(_) => break,
                },
                recv(shared.closed) -> _ => break,
            };
            shared.idle.fetch_sub(1, Ordering::AcqRel);
            if matches!(work, Work::Invoke(_)) {
                shared.queued.fetch_sub(1, Ordering::AcqRel);
            }
            if runspace.as_ref().is_ok_and(|rs| !rs.is_healthy()) {
                runspace = Runspace::open_with(&shared.session, control.clone());
            }
            self.handle(&mut runspace, work);
            if self.slot.is_abandoned() {
                // The watchdog reported the item and started a worker in
                // this one's place; the VM is dropped on the way out.
                shared.abandoned.fetch_sub(1, Ordering::AcqRel);
                return;
            }
            shared.idle.fetch_add(1, Ordering::AcqRel);
        }
        shared.idle.fetch_sub(1, Ordering::AcqRel);
    }

    fn handle(&self, runspace: &mut Result<Runspace>, work: Work) {
        if self.shared.closing.load(Ordering::Acquire) {
            return abandon(work);
        }
        match runspace {
            Ok(rs) => match work {
                Work::Invoke(pending) => pending.run(rs, &self.slot),
                Work::Chunk(chunk) => parallel::run_chunk(rs, chunk, &self.slot),
                Work::Takeover(takeover) => takeover.finish(Ok(rs), &self.slot),
            },
            Err(e) => match work {
                Work::Invoke(pending) => pending.abandon(Status::Failed, e.to_string()),
                Work::Chunk(chunk) => chunk.fail_all(&e.to_string()),
                Work::Takeover(takeover) => takeover.finish(Err(e), &self.slot),
            },
        }
    }
}

fn abandon(work: Work) {
    match work {
        Work::Invoke(pending) => pending.abandon(Status::Stopped, "stopped: the pool was closed".into()),
        Work::Chunk(chunk) => chunk.skip(),
        Work::Takeover(takeover) => takeover.skip(),
    }
}
