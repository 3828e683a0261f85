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
//! There is no task of its own: whichever sleep is polled does the work.
//! The earliest sleep's waker is the one registered for the timerfd; when
//! it fires, that sleep's item is polled, wakes every sleep that is due,
//! arms the timerfd for the next one and registers that one's waker. A
//! sleep that is dropped (its item stopped) takes its entry out and, when
//! it was the earliest, hands the registration on the same way.
//!
//! Without the `net` feature (no tokio I/O driver) sleeps use tokio's
//! timer as before.

#[cfg(feature = "net")]
use std::time::Duration;
use std::time::Instant;

/// Sleeps until `deadline`.
#[cfg(not(feature = "net"))]
pub(crate) async fn sleep_until(_timer: &Timer, deadline: Instant) {
    tokio::time::sleep_until(deadline.into()).await;
}

/// A runspace's sleeps (without the `net` feature: nothing; tokio's timer).
#[cfg(not(feature = "net"))]
#[derive(Default)]
pub(crate) struct Timer;

#[cfg(feature = "net")]
pub(crate) use precise::{sleep_until, Timer};

#[cfg(feature = "net")]
mod precise {
    use std::cell::{Cell, OnceCell, RefCell};
    use std::collections::BTreeMap;
    use std::future::Future;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;

    use super::{Duration, Instant};

    /// Deadlines in one slot are served by one wake-up (see the module).
    const SLOT: Duration = Duration::from_micros(100);

    /// A runspace's sleeps, by deadline, and the timerfd armed for the first.
    #[derive(Default)]
    pub(crate) struct Timer {
        /// Made on first use, inside the event loop that will watch it,
        /// with the instant slots count from; `None` inside when the kernel
        /// refused one (then tokio's timer).
        fd: OnceCell<Option<(AsyncFd<OwnedFd>, Instant)>>,
        pub(super) sleeps: RefCell<BTreeMap<(Instant, u64), Waker>>,
        next_id: Cell<u64>,
        /// What the timerfd is armed for.
        armed: Cell<Option<Instant>>,
    }

    /// Sleeps until `deadline`.
    pub(crate) async fn sleep_until(timer: &Timer, deadline: Instant) {
        match timer.fd() {
            Some(_) => Sleep { timer, deadline, key: None }.await,
            None => tokio::time::sleep_until(deadline.into()).await,
        }
    }

    impl Timer {
        fn fd(&self) -> Option<&(AsyncFd<OwnedFd>, Instant)> {
            self.fd.get_or_init(|| new_timerfd().map(|fd| (fd, Instant::now()))).as_ref()
        }

        /// The end of the slot `at` falls in.
        fn slot_end(base: Instant, at: Instant) -> Instant {
            let into = at.saturating_duration_since(base).as_nanos();
            let slot = SLOT.as_nanos();
            let end = into.div_ceil(slot).saturating_mul(slot);
            base + Duration::from_nanos(u64::try_from(end).unwrap_or(u64::MAX))
        }

        /// Wakes every sleep that is due, arms the timerfd for the next one
        /// and registers that one's waker for it.
        fn service(&self) {
            let Some((fd, base)) = self.fd() else { return };
            loop {
                let now = Instant::now();
                let next = {
                    let mut sleeps = self.sleeps.borrow_mut();
                    while let Some(entry) = sleeps.first_entry() {
                        if entry.key().0 > now {
                            break;
                        }
                        entry.remove().wake();
                    }
                    sleeps.first_key_value().map(|(key, waker)| (key.0, waker.clone()))
                };
                self.arm(fd, next.as_ref().map(|(at, _)| Self::slot_end(*base, *at)));
                let waker = next.map_or(Waker::noop().clone(), |(_, waker)| waker);
                match fd.poll_read_ready(&mut Context::from_waker(&waker)) {
                    Poll::Pending => return,
                    Poll::Ready(Ok(mut ready)) => {
                        // Fired: read it (which clears it), then look again.
                        let _ = ready.try_io(|fd| read_expirations(fd.get_ref()));
                    }
                    // The descriptor broke: the sleeps are woken by time when
                    // next polled; nothing more can be done here.
                    Poll::Ready(Err(_)) => return,
                }
            }
        }

        /// Arms the timerfd for `at` (disarms it for `None`), unless it is
        /// armed for that already.
        fn arm(&self, fd: &AsyncFd<OwnedFd>, at: Option<Instant>) {
            if self.armed.get() == at {
                return;
            }
            self.armed.set(at);
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
            // SAFETY: the descriptor is a timerfd this timer owns; `spec` is a
            // valid itimerspec and the old value is not asked for.
            unsafe { libc::timerfd_settime(fd.get_ref().as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
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
        // and the same, for as long as the AsyncFd lives. (Every runspace's
        // event loop has I/O enabled; a failure to register falls back to
        // tokio's timer.)
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
    struct Sleep<'a> {
        timer: &'a Timer,
        deadline: Instant,
        key: Option<(Instant, u64)>,
    }

    impl Future for Sleep<'_> {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let timer = self.timer;
            if Instant::now() >= self.deadline {
                // Still in the map: not woken by another sleep's service but
                // by the timerfd (or polled late), so serve the rest.
                let listed = self.key.take().is_some_and(|key| timer.sleeps.borrow_mut().remove(&key).is_some());
                if listed {
                    timer.service();
                }
                return Poll::Ready(());
            }
            let key = match self.key {
                Some(key) => key,
                None => {
                    let id = timer.next_id.get();
                    timer.next_id.set(id + 1);
                    let key = (self.deadline, id);
                    self.key = Some(key);
                    key
                }
            };
            let earliest = {
                let mut sleeps = timer.sleeps.borrow_mut();
                match sleeps.get_mut(&key) {
                    Some(waker) => waker.clone_from(cx.waker()),
                    None => {
                        sleeps.insert(key, cx.waker().clone());
                    }
                }
                sleeps.first_key_value().is_some_and(|(first, _)| *first == key)
            };
            // Only the earliest sleep moves the timerfd or holds its
            // registration; a later one just waits in the map.
            if earliest {
                timer.service();
            }
            Poll::Pending
        }
    }

    impl Drop for Sleep<'_> {
        fn drop(&mut self) {
            if let Some(key) = self.key.take() {
                let earliest = {
                    let mut sleeps = self.timer.sleeps.borrow_mut();
                    let earliest = sleeps.first_key_value().is_some_and(|(first, _)| *first == key);
                    sleeps.remove(&key);
                    earliest
                };
                // The earliest one held the timerfd's registration: hand it on.
                if earliest {
                    self.timer.service();
                }
            }
        }
    }
}

#[cfg(all(test, feature = "net"))]
mod tests {
    use std::rc::Rc;

    use super::*;

    /// Runs `f` on a current-thread event loop like a worker's, giving up
    /// (a hang) after a generous while.
    fn on_event_loop<F: std::future::Future<Output = ()>>(f: F) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        let ended = runtime.block_on(local.run_until(async { tokio::time::timeout(Duration::from_secs(20), f).await }));
        assert!(ended.is_ok(), "the sleeps hung");
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
                    let timer = timer.clone();
                    let deadline = start + Duration::from_millis(ms);
                    tokio::task::spawn_local(async move {
                        sleep_until(&timer, deadline).await;
                        (deadline, Instant::now())
                    })
                })
                .collect();
            for sleep in sleeps {
                let (deadline, woke) = sleep.await.unwrap();
                assert!(woke >= deadline, "woke {:?} early", deadline - woke);
            }
        });
    }

    #[test]
    fn a_sleep_dropped_while_it_is_the_earliest_does_not_stall_the_rest() {
        on_event_loop(async {
            let timer = Rc::new(Timer::default());
            let start = Instant::now();
            // The earliest sleep is given up (its item was stopped), after it
            // took the timer's registration; the later ones must still end.
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
                .map(|ms| {
                    let timer = timer.clone();
                    tokio::task::spawn_local(
                        async move { sleep_until(&timer, start + Duration::from_millis(ms)).await },
                    )
                })
                .collect();
            assert!(dropped.await.unwrap(), "the earliest sleep was meant to be dropped");
            for sleep in later {
                sleep.await.unwrap();
            }
            assert!(timer.sleeps.borrow().is_empty());
            assert!(start.elapsed() >= Duration::from_millis(60));
        });
    }
}
