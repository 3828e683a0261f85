//! Sleeps that end when they should, not up to two milliseconds later.
//!
//! tokio's timer counts whole milliseconds: a deadline is rounded up to the
//! next tick, and the event loop's wait (epoll's timeout) is rounded up to
//! a whole millisecond again. A `sleep(0.05)` took 51.2–51.4 ms, and a run
//! of 2,000 such items at throttle 200 (ten waves) lost 13 ms to it. This
//! timer keeps a runspace's sleeps in one ordered map and a Linux timerfd
//! armed, to the nanosecond, for the earliest of them; the event loop
//! watches the timerfd like any other file.
//!
//! Deadlines are served in slots of 100 µs: the timerfd is armed for the
//! end of the slot the earliest deadline falls in, and wakes every sleep
//! due by then at once. 100,000 sleeps spread over half a second then cost
//! at most 5,000 wake-ups of the event loop, not 100,000.
//!
//! The timer drives itself. The waker registered for the timerfd is the
//! timer's own ([`Wake`]), not a sleeping item's: when the timerfd fires,
//! the event loop calls it, and it wakes every sleep that is due, arms the
//! timerfd for the next and registers itself again. A first design let the
//! earliest sleep's item do this when polled; an item that timed out while
//! sleeping is not polled again until the collector takes it, and its
//! stale sleep then held the timerfd, so every other sleep in the runspace
//! waited for ever. A sleep that ends or is dropped only takes its entry
//! out: the timerfd may then fire for nothing, which costs one wake-up.
//!
//! Without the `net` feature (no tokio I/O driver), off Linux (no
//! timerfd), or where the kernel refuses a timerfd, sleeps use tokio's
//! timer.
//!
//! The timer belongs to the event loop it first registered with: a
//! runspace is driven by one for life (its own, or its pool worker's), and
//! every runspace's event loop is built with I/O enabled (`enable_all`).

/// Sleeps until `deadline`.
#[cfg(not(all(feature = "net", target_os = "linux")))]
pub(crate) async fn sleep_until(_timer: &Timer, deadline: std::time::Instant) {
    tokio::time::sleep_until(deadline.into()).await;
}

/// A runspace's sleeps (without the `net` feature: nothing; tokio's timer).
/// Not a unit struct, so that it is made as the precise one is.
#[cfg(not(all(feature = "net", target_os = "linux")))]
#[derive(Default)]
pub(crate) struct Timer(());

#[cfg(all(feature = "net", target_os = "linux"))]
pub(crate) use precise::{sleep_until, Timer};

#[cfg(all(feature = "net", target_os = "linux"))]
mod precise {
    use std::cell::OnceCell;
    use std::collections::BTreeMap;
    use std::future::Future;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::pin::Pin;
    use std::sync::{Arc, Mutex, MutexGuard};
    use std::task::{Context, Poll, Wake, Waker};
    use std::time::{Duration, Instant};

    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;

    /// Deadlines in one slot are served by one wake-up (see the module).
    const SLOT: Duration = Duration::from_micros(100);

    /// A runspace's sleeps: made on first use, inside the event loop that
    /// will watch its timerfd.
    #[derive(Default)]
    pub(crate) struct Timer {
        /// `None` inside when the kernel or the event loop refused a
        /// timerfd (then tokio's timer).
        shared: OnceCell<Option<Arc<Shared>>>,
    }

    /// What the timer's own waker reaches. A `Mutex`, though one thread
    /// uses it, because a [`Wake`] must be `Send + Sync`; it is never
    /// contended.
    struct Shared {
        state: Mutex<State>,
    }

    struct State {
        /// `None` once the timer is dropped, or the event loop is gone.
        fd: Option<AsyncFd<OwnedFd>>,
        /// The instant slots count from.
        base: Instant,
        sleeps: BTreeMap<(Instant, u64), Waker>,
        next_id: u64,
        /// What the timerfd is armed for.
        armed: Option<Instant>,
    }

    /// Sleeps until `deadline`.
    pub(crate) async fn sleep_until(timer: &Timer, deadline: Instant) {
        match timer.shared() {
            Some(shared) => Sleep { shared, deadline, key: None, fallback: None }.await,
            None => tokio::time::sleep_until(deadline.into()).await,
        }
    }

    impl Timer {
        fn shared(&self) -> Option<Arc<Shared>> {
            self.shared.get_or_init(Shared::new).clone()
        }
    }

    impl Drop for Timer {
        fn drop(&mut self) {
            // The timerfd's registration holds the timer's waker, which
            // holds the timerfd: dropping the descriptor here (tokio clears
            // a registration's wakers when it goes) breaks that cycle.
            if let Some(Some(shared)) = self.shared.get() {
                let fd = shared.lock().fd.take();
                drop(fd);
            }
        }
    }

    impl Shared {
        fn new() -> Option<Arc<Shared>> {
            // Registering needs an event loop (and its I/O driver, which
            // every runspace's has: see the module).
            tokio::runtime::Handle::try_current().ok()?;
            let fd = new_timerfd()?;
            let state = State { fd: Some(fd), base: Instant::now(), sleeps: BTreeMap::new(), next_id: 0, armed: None };
            let shared = Arc::new(Shared { state: Mutex::new(state) });
            // Registers the timer's waker with the event loop.
            shared.service();
            Some(shared)
        }

        fn lock(&self) -> MutexGuard<'_, State> {
            // Nothing panics while holding it; were it poisoned, the map
            // is still whole.
            self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
        }

        /// Wakes every sleep that is due, arms the timerfd for the next one
        /// and registers the timer's waker for it.
        fn service(self: &Arc<Self>) {
            let waker = Waker::from(self.clone());
            let mut due = Vec::new();
            loop {
                let mut state = self.lock();
                let now = Instant::now();
                while let Some(entry) = state.sleeps.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    due.push(entry.remove());
                }
                let next = state.sleeps.first_key_value().map(|(key, _)| state.slot_end(key.0));
                state.arm(next);
                let registered = match &state.fd {
                    Some(fd) => poll_fired(fd, &waker),
                    None => Poll::Ready(false),
                };
                match registered {
                    // Waits to be fired again.
                    Poll::Pending => break,
                    // Fired meanwhile and cleared: it is disarmed now, so the
                    // next pass arms it again whatever it was armed for
                    // (were it ever to fire before that instant, skipping
                    // the re-arm would leave it off for good).
                    Poll::Ready(true) => state.armed = None,
                    // The event loop is gone (or the timer dropped): nothing
                    // will fire, so every sleep is woken to fall back on
                    // tokio's timer.
                    Poll::Ready(false) => {
                        state.fd = None;
                        due.extend(std::mem::take(&mut state.sleeps).into_values());
                        break;
                    }
                }
            }
            // Woken outside the lock: a waker may run its task at once.
            due.into_iter().for_each(Waker::wake);
        }
    }

    impl Wake for Shared {
        fn wake(self: Arc<Self>) {
            self.service();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.service();
        }
    }

    impl State {
        /// The end of the slot `at` falls in.
        fn slot_end(&self, at: Instant) -> Instant {
            let into = at.saturating_duration_since(self.base).as_nanos();
            let slot = SLOT.as_nanos();
            let end = into.div_ceil(slot).saturating_mul(slot);
            self.base + Duration::from_nanos(u64::try_from(end).unwrap_or(u64::MAX))
        }

        /// Arms the timerfd for `at` (disarms it for `None`), unless it is
        /// armed for that already.
        fn arm(&mut self, at: Option<Instant>) {
            let Some(fd) = &self.fd else { return };
            if self.armed == at {
                return;
            }
            self.armed = at;
            // A relative time: Instant's clock is CLOCK_MONOTONIC, but its
            // value is not exposed. Zero would disarm: a due deadline gets 1 ns.
            let after = at
                .map_or(Duration::ZERO, |at| at.saturating_duration_since(Instant::now()).max(Duration::from_nanos(1)));
            let spec = libc::itimerspec {
                it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
                it_value: libc::timespec {
                    tv_sec: after.as_secs().min(i64::MAX as u64) as libc::time_t,
                    tv_nsec: after.subsec_nanos() as libc::c_long,
                },
            };
            // SAFETY: the descriptor is a timerfd this timer owns and keeps
            // open while borrowed here; `spec` is a valid itimerspec and the
            // old value is not asked for (null is allowed).
            unsafe { libc::timerfd_settime(fd.get_ref().as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        }
    }

    /// Polls the timerfd with `waker`: `Pending` registers the waker;
    /// `Ready(true)` means it fired and has been read (cleared);
    /// `Ready(false)` that the event loop is gone.
    fn poll_fired(fd: &AsyncFd<OwnedFd>, waker: &Waker) -> Poll<bool> {
        let mut cx = Context::from_waker(waker);
        // Outside tokio's task budget: an exhausted budget answers `Pending`
        // and wakes the waker, which here would serve the timer again, and
        // again, without end.
        let mut poll = tokio::task::unconstrained(std::future::poll_fn(|cx| fd.poll_read_ready(cx)));
        match Pin::new(&mut poll).poll(&mut cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(mut ready)) => {
                let _ = read_expirations(fd.get_ref());
                // The read emptied it: it is readable again only when it
                // fires again (tokio keeps a readiness that arrives
                // meanwhile).
                ready.clear_ready();
                Poll::Ready(true)
            }
            Poll::Ready(Err(_)) => Poll::Ready(false),
        }
    }

    fn new_timerfd() -> Option<AsyncFd<OwnedFd>> {
        // SAFETY: timerfd_create takes no pointers; a descriptor it returns
        // is new and ours alone, so OwnedFd may own (and close) it.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        // SAFETY: see above.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open,
        // and the same, for as long as the AsyncFd lives. (An error from
        // epoll falls back to tokio's timer.)
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok()
    }

    /// Reads how often the timerfd expired (and so clears it).
    fn read_expirations(fd: &OwnedFd) -> std::io::Result<u64> {
        let mut count = 0u64;
        // SAFETY: reads at most 8 bytes into `count`, which has 8.
        let read = unsafe { libc::read(fd.as_raw_fd(), (&raw mut count).cast(), 8) };
        match read {
            8 => Ok(count),
            _ => Err(std::io::Error::last_os_error()),
        }
    }

    /// One sleep: its entry in the timer while it waits.
    struct Sleep {
        shared: Arc<Shared>,
        deadline: Instant,
        key: Option<(Instant, u64)>,
        /// tokio's timer, once the event loop the timerfd was registered
        /// with is gone.
        fallback: Option<Pin<Box<tokio::time::Sleep>>>,
    }

    impl Future for Sleep {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if let Some(fallback) = &mut self.fallback {
                return fallback.as_mut().poll(cx);
            }
            if Instant::now() >= self.deadline {
                // A sleep that is due counts against the task's budget, as
                // tokio's own does: `while true do sleep(0) end` must still
                // hand the thread back to the item's neighbours (and to the
                // event loop, which drives this timer) now and then.
                let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
                coop.made_progress();
                self.forget();
                return Poll::Ready(());
            }
            let this = &mut *self;
            let mut state = this.shared.lock();
            if state.fd.is_none() {
                drop(state);
                this.key = None;
                this.fallback = Some(Box::pin(tokio::time::sleep_until(this.deadline.into())));
                return self.poll(cx);
            }
            let key = *this.key.get_or_insert_with(|| {
                state.next_id += 1;
                (this.deadline, state.next_id)
            });
            match state.sleeps.get_mut(&key) {
                Some(waker) => waker.clone_from(cx.waker()),
                None => {
                    state.sleeps.insert(key, cx.waker().clone());
                }
            }
            // Only a new earliest deadline moves the timerfd; the timer's
            // waker stays registered for it throughout.
            if state.sleeps.first_key_value().is_some_and(|(first, _)| *first == key) {
                let next = state.slot_end(key.0);
                state.arm(Some(next));
            }
            Poll::Pending
        }
    }

    impl Sleep {
        /// Takes the sleep's entry out, if it has one.
        fn forget(&mut self) {
            if let Some(key) = self.key.take() {
                self.shared.lock().sleeps.remove(&key);
            }
        }
    }

    impl Drop for Sleep {
        fn drop(&mut self) {
            self.forget();
        }
    }

    #[cfg(test)]
    mod tests {
        use std::rc::Rc;
        use std::time::{Duration, Instant};

        use super::*;

        /// Runs `f` on a current-thread event loop like a worker's, giving
        /// up (a hang) after a generous while.
        fn on_event_loop<F: Future<Output = ()>>(f: F) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let local = tokio::task::LocalSet::new();
            let ended =
                runtime.block_on(local.run_until(async { tokio::time::timeout(Duration::from_secs(20), f).await }));
            assert!(ended.is_ok(), "the sleeps hung");
        }

        fn spawn_sleep(timer: &Rc<Timer>, deadline: Instant) -> tokio::task::JoinHandle<Instant> {
            let timer = timer.clone();
            tokio::task::spawn_local(async move {
                sleep_until(&timer, deadline).await;
                Instant::now()
            })
        }

        #[test]
        fn every_sleep_ends_and_none_ends_early() {
            on_event_loop(async {
                let timer = Rc::new(Timer::default());
                let start = Instant::now();
                // Deadlines out of order, some equal, some already due.
                let offsets_ms = (0..200u64).map(|i| (i * 37) % 60).chain([0, 0, 5, 5]);
                let sleeps: Vec<_> = offsets_ms
                    .map(|ms| {
                        let deadline = start + Duration::from_millis(ms);
                        (deadline, spawn_sleep(&timer, deadline))
                    })
                    .collect();
                for (deadline, sleep) in sleeps {
                    let woke = sleep.await.unwrap();
                    assert!(woke >= deadline, "woke {:?} early", deadline - woke);
                }
                assert!(timer.shared().unwrap().lock().sleeps.is_empty());
            });
        }

        #[test]
        fn a_sleep_dropped_while_it_is_the_earliest_does_not_stall_the_rest() {
            on_event_loop(async {
                let timer = Rc::new(Timer::default());
                let start = Instant::now();
                // The earliest sleep is given up (its item was stopped);
                // the later ones must still end.
                let dropped = {
                    let timer = timer.clone();
                    tokio::task::spawn_local(async move {
                        tokio::select! {
                            _ = sleep_until(&timer, start + Duration::from_millis(30)) => false,
                            _ = tokio::time::sleep(Duration::from_millis(5)) => true,
                        }
                    })
                };
                let later: Vec<_> = [40u64, 60, 60]
                    .into_iter()
                    .map(|ms| spawn_sleep(&timer, start + Duration::from_millis(ms)))
                    .collect();
                assert!(dropped.await.unwrap(), "the earliest sleep was meant to be dropped");
                for sleep in later {
                    sleep.await.unwrap();
                }
                assert!(timer.shared().unwrap().lock().sleeps.is_empty());
                assert!(start.elapsed() >= Duration::from_millis(60));
            });
        }

        /// The defect of the first design: an item that timed out keeps its
        /// sleep, unpolled, until the collector takes it.
        #[test]
        fn an_earliest_sleep_never_polled_again_does_not_stall_the_rest() {
            on_event_loop(async {
                let timer = Rc::new(Timer::default());
                let start = Instant::now();
                let mut stale = Box::pin(sleep_until(&timer, start + Duration::from_millis(10)));
                // Polled once (so it is in the map, the earliest), then left.
                let first = std::future::poll_fn(|cx| Poll::Ready(stale.as_mut().poll(cx))).await;
                assert!(first.is_pending());
                let later: Vec<_> = [20u64, 30, 30]
                    .into_iter()
                    .map(|ms| spawn_sleep(&timer, start + Duration::from_millis(ms)))
                    .collect();
                for sleep in later {
                    sleep.await.unwrap();
                }
                // The stale one was woken and taken out when due, and ends
                // at once when polled again.
                assert!(timer.shared().unwrap().lock().sleeps.is_empty());
                stale.await;
            });
        }

        #[test]
        fn sleeps_that_are_already_due_still_let_other_tasks_run() {
            on_event_loop(async {
                let timer = Rc::new(Timer::default());
                let neighbour_ran = Rc::new(std::cell::Cell::new(false));
                let flag = neighbour_ran.clone();
                let neighbour = tokio::task::spawn_local(async move { flag.set(true) });
                // One future that never waits by itself: an item doing
                // `while true do sleep(0) end`.
                let due = Instant::now();
                let mut saw_neighbour = false;
                for _ in 0..10_000 {
                    sleep_until(&timer, due).await;
                    saw_neighbour |= neighbour_ran.get();
                }
                assert!(saw_neighbour, "10,000 due sleeps never let the neighbour run");
                neighbour.await.unwrap();
            });
        }

        #[test]
        fn a_dropped_timer_leaves_nothing_behind() {
            on_event_loop(async {
                let timer = Timer::default();
                let shared = Arc::downgrade(&timer.shared().unwrap());
                let mut pending = Box::pin(sleep_until(&timer, Instant::now() + Duration::from_secs(3600)));
                let first = std::future::poll_fn(|cx| Poll::Ready(pending.as_mut().poll(cx))).await;
                assert!(first.is_pending());
                drop(pending);
                drop(timer);
                // Neither the timerfd's registration nor a sleep keeps the
                // timer's state (and its descriptor) alive.
                assert!(shared.upgrade().is_none(), "the timer outlived its runspace");
            });
        }
    }
}
