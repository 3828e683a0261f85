//! Scan workers: each is one OS thread with its own epoll set, driving up to
//! its share of the socket budget of non-blocking connects.
//!
//! One worker per core keeps the kernel's per-connect work (which, on
//! loopback, runs inside `connect()` itself) spread over the cores, and
//! avoids any per-probe runtime cost. Timeouts are a FIFO: every probe gets
//! the same timeout, so deadlines are already in order and expiring them is
//! a pop from the front, no timer wheel needed.
//!
//! Local failures (EMFILE, EADDRNOTAVAIL, …) shrink the worker's window to
//! what it had in flight and pause launching with an exponential back-off;
//! the window grows back by one per answered probe. The failed probe goes
//! back to the scheduler and is never reported as a port state unless it
//! keeps failing.

use std::collections::VecDeque;
use std::io;
use std::mem;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::Sender;

use crate::probe::{self, Answer, Launch, SockAddr, Spares};
use crate::result::ScanEvent;
use crate::scheduler::{Done, Probe, Scheduler};

/// Longest pause after repeated local failures.
const MAX_BACKOFF: Duration = Duration::from_millis(250);
/// How long an idle worker sleeps before asking the scheduler again (work
/// can appear when another worker's probe times out and is retried, or when
/// the target feed resolves the next host name).
const IDLE_POLL: Duration = Duration::from_millis(2);

/// State shared by all workers of one scan.
pub(crate) struct Shared {
    pub sched: Mutex<Scheduler>,
    pub stop: Arc<AtomicBool>,
    pub events: Sender<Vec<ScanEvent>>,
    pub timeout: Duration,
}

#[derive(Clone, Copy)]
struct Slot {
    fd: RawFd,
    probe: Probe,
    start: Instant,
    gen: u32,
    live: bool,
}

/// An epoll instance, closed on drop.
struct Epoll(RawFd);

impl Epoll {
    fn new() -> io::Result<Epoll> {
        // SAFETY: plain epoll_create1(2) call.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(Epoll(fd))
        }
    }

    fn add(&self, fd: RawFd, token: u64) -> Result<(), i32> {
        let mut ev = libc::epoll_event { events: (libc::EPOLLOUT | libc::EPOLLONESHOT) as u32, u64: token };
        // SAFETY: both fds are open; ev is a valid event.
        let r = unsafe { libc::epoll_ctl(self.0, libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r < 0 {
            Err(io::Error::last_os_error().raw_os_error().unwrap_or(libc::ENOMEM))
        } else {
            Ok(())
        }
    }

    fn wait(&self, buf: &mut [libc::epoll_event], timeout: Duration) -> usize {
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // Round sub-millisecond waits up so a near deadline is not a busy loop.
        let ms = if ms == 0 && !timeout.is_zero() { 1 } else { ms };
        // SAFETY: buf is valid for buf.len() events.
        let n = unsafe { libc::epoll_wait(self.0, buf.as_mut_ptr(), buf.len() as i32, ms) };
        n.max(0) as usize
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: we own this fd.
        unsafe { libc::close(self.0) };
    }
}

/// The per-worker state of in-flight probes.
struct Worker {
    epoll: Epoll,
    spares: Spares,
    slots: Vec<Slot>,
    free: Vec<u32>,
    deadlines: VecDeque<(Instant, u32, u32)>,
    in_flight: usize,
    /// Hard share of the global socket budget.
    cap: usize,
    /// Current window (≤ cap), cut on local failures.
    window: usize,
    backoff: Duration,
    paused_until: Option<Instant>,
    timeout: Duration,
}

fn token(slot: u32, gen: u32) -> u64 {
    (u64::from(gen) << 32) | u64::from(slot)
}

impl Worker {
    /// Launches probes; answers known at once go to `done`. On the first
    /// local failure the rest of the batch goes to `unsent` untried.
    fn launch(&mut self, batch: &mut Vec<Probe>, done: &mut Vec<Done>, unsent: &mut Vec<Probe>) {
        let mut iter = batch.drain(..);
        for p in iter.by_ref() {
            let target = SockAddr::new(p.address, p.port);
            let start = Instant::now();
            let answer = match probe::start(&target, &mut self.spares) {
                Launch::Done(a) => a,
                Launch::Pending(fd) => match self.track(fd, p, start) {
                    Ok(()) => continue,
                    Err(err) => Answer::Local(err),
                },
            };
            let local = matches!(answer, Answer::Local(_));
            self.answered(answer);
            done.push(Done { probe: p, answer: Some(answer), rtt: start.elapsed() });
            if local {
                break;
            }
        }
        unsent.extend(iter);
    }

    fn track(&mut self, fd: RawFd, probe: Probe, start: Instant) -> Result<(), i32> {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot { fd: -1, probe, start, gen: 0, live: false });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[idx as usize];
        slot.gen = slot.gen.wrapping_add(1);
        if let Err(err) = self.epoll.add(fd, token(idx, slot.gen)) {
            probe::close(fd, false);
            self.free.push(idx);
            return Err(err);
        }
        slot.fd = fd;
        slot.probe = probe;
        slot.start = start;
        slot.live = true;
        self.in_flight += 1;
        self.deadlines.push_back((start + self.timeout, idx, slot.gen));
        Ok(())
    }

    /// Adjusts the window and back-off after an answer.
    fn answered(&mut self, answer: Answer) {
        if let Answer::Local(_) = answer {
            self.window = self.in_flight.max(1).min(self.cap);
            self.backoff = (self.backoff * 2).clamp(Duration::from_millis(1), MAX_BACKOFF);
            self.paused_until = Some(Instant::now() + self.backoff);
        } else {
            if self.window < self.cap {
                self.window += 1;
            }
            self.backoff = Duration::ZERO;
        }
    }

    fn retire(&mut self, idx: u32) -> Slot {
        let slot = &mut self.slots[idx as usize];
        slot.live = false;
        self.in_flight -= 1;
        self.free.push(idx);
        *slot
    }

    /// Waits for answers and expired deadlines, up to `max_wait`.
    fn poll(&mut self, events: &mut [libc::epoll_event], max_wait: Duration, done: &mut Vec<Done>) {
        let wait = match self.deadlines.front() {
            Some(&(deadline, _, _)) => max_wait.min(deadline.saturating_duration_since(Instant::now())),
            None => max_wait,
        };
        let n = self.epoll.wait(events, wait);
        let now = Instant::now();
        for ev in &events[..n] {
            let (idx, gen) = ((ev.u64 & 0xffff_ffff) as u32, (ev.u64 >> 32) as u32);
            let slot = &self.slots[idx as usize];
            if !slot.live || slot.gen != gen {
                continue;
            }
            let slot = self.retire(idx);
            let answer = probe::finish(slot.fd, &SockAddr::new(slot.probe.address, slot.probe.port));
            self.answered(answer);
            done.push(Done { probe: slot.probe, answer: Some(answer), rtt: now.saturating_duration_since(slot.start) });
        }
        // Answers read above win over deadlines that passed meanwhile.
        while let Some(&(deadline, idx, gen)) = self.deadlines.front() {
            let slot = &self.slots[idx as usize];
            if slot.live && slot.gen == gen {
                if deadline > now {
                    break;
                }
                let slot = self.retire(idx);
                probe::close(slot.fd, false);
                done.push(Done { probe: slot.probe, answer: None, rtt: now.saturating_duration_since(slot.start) });
            }
            self.deadlines.pop_front();
        }
    }

    fn close_all(&mut self) {
        for slot in self.slots.iter_mut().filter(|s| s.live) {
            slot.live = false;
            probe::close(slot.fd, false);
        }
        self.in_flight = 0;
    }
}

/// Runs one worker until the scan is finished or stopped.
pub(crate) fn run_worker(shared: Arc<Shared>, cap: usize) {
    let epoll = match Epoll::new() {
        Ok(e) => e,
        Err(_) => {
            // Without an epoll set this worker cannot run; the others carry
            // the scan (the scanner always starts at least one that works, or
            // reports the failure when none can).
            return;
        }
    };
    let cap = cap.max(1);
    let mut w = Worker {
        epoll,
        spares: Spares::default(),
        slots: Vec::with_capacity(cap.min(4096)),
        free: Vec::new(),
        deadlines: VecDeque::with_capacity(cap.min(4096)),
        in_flight: 0,
        cap,
        window: cap,
        backoff: Duration::ZERO,
        paused_until: None,
        timeout: shared.timeout,
    };
    let mut done: Vec<Done> = Vec::new();
    let mut unsent: Vec<Probe> = Vec::new();
    let mut batch: Vec<Probe> = Vec::new();
    // SAFETY: epoll_event is plain old data.
    let mut events = vec![unsafe { mem::zeroed::<libc::epoll_event>() }; 512];
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            w.close_all();
            return;
        }
        let paused = match w.paused_until {
            Some(t) if t > Instant::now() => true,
            _ => {
                w.paused_until = None;
                false
            }
        };
        let free = if paused { 0 } else { w.window.saturating_sub(w.in_flight) };
        let finished = {
            let mut sched = shared.sched.lock().unwrap_or_else(|e| e.into_inner());
            sched.give_back(&mut unsent);
            sched.complete(&mut done);
            if free > 0 {
                sched.take(free, &mut batch);
            }
            if !sched.events.is_empty() {
                let out = mem::take(&mut sched.events);
                if shared.events.blocking_send(out).is_err() {
                    // Nobody listens any more: stop the whole scan.
                    shared.stop.store(true, Ordering::Relaxed);
                }
            }
            sched.finished() && w.in_flight == 0 && batch.is_empty()
        };
        if finished {
            return;
        }
        let launched = !batch.is_empty();
        w.launch(&mut batch, &mut done, &mut unsent);
        // Answers are waiting to be reported, or more can be launched: only
        // collect what is ready. Otherwise sleep until an answer or deadline.
        let max_wait = if !done.is_empty() || (launched && w.in_flight < w.window && !paused) {
            Duration::ZERO
        } else if let Some(t) = w.paused_until {
            t.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))
        } else if w.in_flight == 0 {
            IDLE_POLL
        } else {
            Duration::from_millis(100)
        };
        if w.in_flight > 0 || !max_wait.is_zero() {
            w.poll(&mut events, max_wait, &mut done);
        }
    }
}
