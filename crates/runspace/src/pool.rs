//! A pool of runspaces on worker threads: PowerShell's `RunspacePool`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

use crate::control::{instant_ns, ns_instant, Control, StopReason};
use crate::error::{Error, Result};
use crate::invocation::{Invocation, Pending};
use crate::parallel::{self, Chunk, Parallel};
use crate::runspace::Runspace;
use crate::script::Script;
use crate::session::SessionState;
use crate::streams::Status;

/// How often, at most, the watchdog looks for items past their deadline.
const WATCHDOG_TICK: Duration = Duration::from_millis(10);

/// Work a pool worker takes from the queue.
pub(crate) enum Work {
    Invoke(Arc<Pending>),
    Chunk(Chunk),
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
        let inner = Arc::new(PoolInner {
            session: self.session,
            max: self.max,
            sender: Mutex::new(Some(sender)),
            receiver,
            workers: Mutex::new(Vec::new()),
            controls: Arc::new(RwLock::new(Vec::new())),
            idle: Arc::new(AtomicUsize::new(0)),
            queued: Arc::new(AtomicUsize::new(0)),
            watchdog: Mutex::new(None),
            closing: Arc::new(AtomicBool::new(false)),
        });
        let pool = RunspacePool { inner };
        pool.inner.spawn_workers(min, true)?;
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
        self.inner.max
    }

    /// Runspaces open now.
    pub fn open_runspaces(&self) -> usize {
        self.inner.workers.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The session every runspace of this pool starts with.
    pub fn session(&self) -> &SessionState {
        &self.inner.session
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
            let queued = self.inner.queued.fetch_add(1, Ordering::AcqRel) + 1;
            self.inner.grow_if_busy(queued);
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
        let want = count.min(self.inner.max);
        if want > have {
            self.inner.spawn_workers(want - have, false)?;
        }
        Ok(())
    }

    /// Stops the running items that belong to `owner` (a parallel run).
    pub(crate) fn stop_owner(&self, owner: u64) {
        for control in self.inner.controls.read().unwrap_or_else(|e| e.into_inner()).iter() {
            let (generation, running_for) = control.running();
            if running_for == owner {
                control.request_stop(generation, StopReason::Stopped);
            }
        }
    }

    /// Starts the thread that times out items past their deadline, once.
    pub(crate) fn ensure_watchdog(&self) {
        let mut watchdog = self.inner.watchdog.lock().unwrap_or_else(|e| e.into_inner());
        if watchdog.is_some() {
            return;
        }
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let controls = self.inner.controls.clone();
        let handle =
            thread::Builder::new().name("runspace-watchdog".into()).spawn(move || watch(&controls, &stop_rx)).ok();
        if let Some(handle) = handle {
            *watchdog = Some((stop_tx, handle));
        }
    }
}

pub(crate) struct PoolInner {
    session: SessionState,
    max: usize,
    /// `None` once closed: nothing new is accepted.
    sender: Mutex<Option<Sender<Work>>>,
    receiver: Receiver<Work>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// Every worker's stop switch, for the watchdog and for stopping runs.
    controls: Arc<RwLock<Vec<Arc<Control>>>>,
    idle: Arc<AtomicUsize>,
    /// Invocations submitted and not yet taken by a worker.
    queued: Arc<AtomicUsize>,
    watchdog: Mutex<Option<(Sender<()>, JoinHandle<()>)>>,
    closing: Arc<AtomicBool>,
}

impl PoolInner {
    /// Adds a worker when more invocations wait than workers are idle and
    /// the throttle allows.
    fn grow_if_busy(&self, queued: usize) {
        if queued > self.idle.load(Ordering::Acquire) {
            let have = self.workers.lock().unwrap_or_else(|e| e.into_inner()).len();
            if have < self.max {
                let _ = self.spawn_workers(1, false);
            }
        }
    }

    /// Starts `count` workers; with `wait`, waits for their runspaces to open
    /// and reports the first failure.
    fn spawn_workers(&self, count: usize, wait: bool) -> Result<()> {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        let (ready_tx, ready_rx) = bounded::<Result<()>>(count);
        for _ in 0..count {
            if workers.len() >= self.max {
                break;
            }
            let control = Arc::new(Control::default());
            self.controls.write().unwrap_or_else(|e| e.into_inner()).push(control.clone());
            let worker = Worker {
                session: self.session.clone(),
                control,
                receiver: self.receiver.clone(),
                idle: self.idle.clone(),
                queued: self.queued.clone(),
                closing: self.closing.clone(),
            };
            let ready = ready_tx.clone();
            let handle = thread::Builder::new()
                .name(format!("runspace-{}", workers.len() + 1))
                .spawn(move || worker.run(ready))
                .map_err(|e| Error::Pool(format!("cannot start a worker thread: {e}")))?;
            workers.push(handle);
        }
        drop(ready_tx);
        if wait {
            for ready in ready_rx.iter() {
                ready?;
            }
        }
        Ok(())
    }

    fn shutdown(&self) {
        self.closing.store(true, Ordering::Release);
        drop(self.sender.lock().unwrap_or_else(|e| e.into_inner()).take());
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        // A worker may take its last piece of work just after a stop request
        // went out, so keep asking until every worker has left.
        while !workers.iter().all(JoinHandle::is_finished) {
            for control in self.controls.read().unwrap_or_else(|e| e.into_inner()).iter() {
                let (generation, _) = control.running();
                control.request_stop(generation, StopReason::Stopped);
            }
            thread::sleep(Duration::from_millis(1));
        }
        for handle in workers {
            let _ = handle.join();
        }
        // Work that no worker took (there were none, or all failed to open).
        while let Ok(work) = self.receiver.try_recv() {
            if let Work::Invoke(pending) = work {
                pending.abandon(Status::Stopped, "stopped: the pool was closed".into());
            }
        }
        if let Some((stop, handle)) = self.watchdog.lock().unwrap_or_else(|e| e.into_inner()).take() {
            drop(stop);
            let _ = handle.join();
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
    session: SessionState,
    control: Arc<Control>,
    receiver: Receiver<Work>,
    idle: Arc<AtomicUsize>,
    queued: Arc<AtomicUsize>,
    closing: Arc<AtomicBool>,
}

impl Worker {
    fn run(self, ready: Sender<Result<()>>) {
        let mut runspace = Runspace::open_with(&self.session, self.control.clone());
        let _ = ready.send(runspace.as_ref().map(|_| ()).map_err(Clone::clone));
        drop(ready);
        self.idle.fetch_add(1, Ordering::AcqRel);
        while let Ok(work) = self.receiver.recv() {
            self.idle.fetch_sub(1, Ordering::AcqRel);
            if matches!(work, Work::Invoke(_)) {
                self.queued.fetch_sub(1, Ordering::AcqRel);
            }
            if self.closing.load(Ordering::Acquire) {
                abandon(work);
                continue;
            }
            if runspace.as_ref().is_ok_and(|rs| !rs.is_healthy()) {
                runspace = Runspace::open_with(&self.session, self.control.clone());
            }
            match &mut runspace {
                Ok(rs) => match work {
                    Work::Invoke(pending) => pending.run(rs, &self.control),
                    Work::Chunk(chunk) => parallel::run_chunk(rs, chunk),
                },
                Err(e) => match work {
                    Work::Invoke(pending) => pending.abandon(Status::Failed, e.to_string()),
                    Work::Chunk(chunk) => chunk.fail_all(&e.to_string()),
                },
            }
            self.idle.fetch_add(1, Ordering::AcqRel);
        }
        self.idle.fetch_sub(1, Ordering::AcqRel);
    }
}

fn abandon(work: Work) {
    match work {
        Work::Invoke(pending) => pending.abandon(Status::Stopped, "stopped: the pool was closed".into()),
        Work::Chunk(chunk) => chunk.skip(),
    }
}

/// The watchdog loop: times out running items past their deadline, until
/// the pool drops `stop`.
fn watch(controls: &RwLock<Vec<Arc<Control>>>, stop: &Receiver<()>) {
    loop {
        let now = Instant::now();
        let now_ns = instant_ns(now);
        let mut next = now + WATCHDOG_TICK;
        for control in controls.read().unwrap_or_else(|e| e.into_inner()).iter() {
            let (generation, _) = control.running();
            match control.deadline_ns() {
                Some(deadline) if deadline <= now_ns => control.request_stop(generation, StopReason::TimedOut),
                Some(deadline) => next = next.min(ns_instant(deadline)),
                None => {}
            }
        }
        let wait = next.saturating_duration_since(Instant::now()).max(Duration::from_micros(200));
        match stop.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}
