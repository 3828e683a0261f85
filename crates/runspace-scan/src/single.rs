//! One blocking, cancellable probe of one address, for callers that are not
//! scanning (the `net.probe` host function of the runspace engine).
//!
//! It reuses the scanner's probe ([`crate::probe`]), so a port gets exactly
//! the state and reason `rsp scan` would give it, including the self-connect
//! and local-error handling. The wait is cut into short `poll` slices so the
//! caller's `cancelled` check runs every few milliseconds: a stopped script
//! does not sit out the whole timeout.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::probe::{self, Answer, Launch, SockAddr, Spares};
use crate::result::{PortState, Reason};

/// How long one `poll` waits before the cancellation check runs again.
const SLICE: Duration = Duration::from_millis(10);

/// Back-off before retrying after a local, transient error (EMFILE, …).
const LOCAL_BACKOFF: Duration = Duration::from_millis(5);

/// The answer of one [`probe_one`] call.
///
/// ```
/// use runspace_scan::{probe_one, PortState, Reason};
/// use std::time::Duration;
/// let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
/// let r = probe_one(listener.local_addr().unwrap(), Duration::from_secs(1), || false).unwrap();
/// assert_eq!((r.state, r.reason), (PortState::Open, Reason::SynAck));
/// assert!(r.rtt.is_some());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeOutcome {
    /// The port state, with nmap's meanings.
    pub state: PortState,
    /// Why it has that state.
    pub reason: Reason,
    /// Time from `connect()` to the answer; `None` when nothing answered.
    pub rtt: Option<Duration>,
    /// For [`PortState::Error`]: the system error.
    pub error: Option<String>,
}

/// The probe was cancelled before it had an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cancelled;

/// Probes `addr` once, waiting at most `timeout` for an answer, and checking
/// `cancelled` every few milliseconds while it waits.
///
/// No retries: a caller that wants `rsp scan --retries` semantics calls
/// again while the answer is `no-response`.
pub fn probe_one(
    addr: SocketAddr,
    timeout: Duration,
    mut cancelled: impl FnMut() -> bool,
) -> Result<ProbeOutcome, Cancelled> {
    let target = SockAddr::new(addr.ip(), addr.port());
    let mut spares = Spares::default();
    let deadline = Instant::now() + timeout;
    loop {
        if cancelled() {
            return Err(Cancelled);
        }
        let start = Instant::now();
        let answer = match probe::start(&target, &mut spares) {
            Launch::Done(answer) => answer,
            Launch::Pending(fd) => wait(fd, &target, deadline, &mut cancelled)?,
        };
        let now = Instant::now();
        match answer {
            Answer::Final(reason) => {
                let rtt = (reason != Reason::NoResponse).then(|| now - start);
                return Ok(ProbeOutcome { state: reason.state(), reason, rtt, error: None });
            }
            // Another attempt picks another source port.
            Answer::SelfConnect if now < deadline => {}
            Answer::SelfConnect => return Ok(no_response()),
            // EADDRNOTAVAIL is transient when ephemeral ports run out, but
            // final when there is no source address of the family at all.
            Answer::Local(libc::EADDRNOTAVAIL) if probe::source_check(addr.ip()).is_err() => {
                return Ok(local_error(libc::EADDRNOTAVAIL))
            }
            Answer::Local(_) if now + LOCAL_BACKOFF < deadline => std::thread::sleep(LOCAL_BACKOFF),
            Answer::Local(err) | Answer::Fatal(err) => return Ok(local_error(err)),
        }
    }
}

fn local_error(err: i32) -> ProbeOutcome {
    ProbeOutcome { state: PortState::Error, reason: Reason::LocalError, rtt: None, error: Some(probe::describe(err)) }
}

fn no_response() -> ProbeOutcome {
    ProbeOutcome { state: PortState::Filtered, reason: Reason::NoResponse, rtt: None, error: None }
}

/// Waits for a pending connect in short slices; closes the socket on every path.
fn wait(
    fd: std::os::fd::RawFd,
    target: &SockAddr,
    deadline: Instant,
    cancelled: &mut impl FnMut() -> bool,
) -> Result<Answer, Cancelled> {
    loop {
        if cancelled() {
            probe::close(fd, true);
            return Err(Cancelled);
        }
        let now = Instant::now();
        if now >= deadline {
            probe::close(fd, false);
            return Ok(Answer::Final(Reason::NoResponse));
        }
        let slice = (deadline - now).min(SLICE);
        let mut p = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
        let ms = slice.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
        // SAFETY: `p` is a valid pollfd for an open socket we own.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r > 0 {
            return Ok(probe::finish(fd, target));
        }
        // r == 0: the slice ran out; r < 0: EINTR or similar, just poll again.
    }
}

/// Probes `addr` once, like [`probe_one`], as a future for an event loop
/// that drives many probes at once (the `net.probe` host function of items
/// that run as Luau threads). Dropping the future closes its socket, which
/// is how a stopped caller cancels it.
///
/// ```
/// use runspace_scan::{probe_async, PortState};
/// use std::time::Duration;
/// let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
/// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
/// let r = rt.block_on(probe_async(listener.local_addr().unwrap(), Duration::from_secs(1)));
/// assert_eq!(r.state, PortState::Open);
/// ```
pub async fn probe_async(addr: SocketAddr, timeout: Duration) -> ProbeOutcome {
    let target = SockAddr::new(addr.ip(), addr.port());
    let mut spares = Spares::default();
    let deadline = Instant::now() + timeout;
    loop {
        let start = Instant::now();
        let answer = match probe::start(&target, &mut spares) {
            Launch::Done(answer) => answer,
            Launch::Pending(fd) => wait_async(Socket(fd), &target, deadline).await,
        };
        let now = Instant::now();
        match answer {
            Answer::Final(reason) => {
                let rtt = (reason != Reason::NoResponse).then(|| now - start);
                return ProbeOutcome { state: reason.state(), reason, rtt, error: None };
            }
            Answer::SelfConnect if now < deadline => {}
            Answer::SelfConnect => return no_response(),
            Answer::Local(libc::EADDRNOTAVAIL) if probe::source_check(addr.ip()).is_err() => {
                return local_error(libc::EADDRNOTAVAIL)
            }
            Answer::Local(_) if now + LOCAL_BACKOFF < deadline => tokio::time::sleep(LOCAL_BACKOFF).await,
            Answer::Local(err) | Answer::Fatal(err) => return local_error(err),
        }
    }
}

/// A socket with a connect in progress; closed (with a reset) if dropped
/// before the probe took it back.
struct Socket(std::os::fd::RawFd);

impl std::os::fd::AsRawFd for Socket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

impl Socket {
    fn take(self) -> std::os::fd::RawFd {
        let fd = self.0;
        std::mem::forget(self);
        fd
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        probe::close(self.0, true);
    }
}

/// Waits for a pending connect on the event loop; closes the socket on every path.
async fn wait_async(socket: Socket, target: &SockAddr, deadline: Instant) -> Answer {
    // SAFETY: `socket` owns an open descriptor that nothing else closes
    // while the `AsyncFd` holds it (it is closed only after `into_inner`, or
    // by `Socket`'s drop after the registration is gone), and `as_raw_fd`
    // always returns that descriptor.
    let registered =
        match unsafe { tokio::io::unix::AsyncFd::register_with_interest(socket, tokio::io::Interest::WRITABLE) } {
            Ok(registered) => registered,
            Err(e) => return Answer::Local(e.into_parts().1.raw_os_error().unwrap_or(libc::ENOMEM)),
        };
    let ready = tokio::time::timeout_at(deadline.into(), registered.writable()).await.map(|r| r.map(|_| ()));
    // Deregistered before the socket is closed or handed on.
    let fd = registered.into_inner().take();
    match ready {
        Ok(Ok(())) => probe::finish(fd, target),
        Ok(Err(e)) => {
            probe::close(fd, true);
            Answer::Local(e.raw_os_error().unwrap_or(libc::EIO))
        }
        Err(_elapsed) => {
            probe::close(fd, false);
            Answer::Final(Reason::NoResponse)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_port_is_refused_with_an_rtt() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let r = probe_one(SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(1), || false).unwrap();
        assert_eq!((r.state, r.reason), (PortState::Closed, Reason::ConnRefused));
        assert!(r.rtt.is_some());
    }

    #[test]
    fn cancelled_before_start() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(probe_one(l.local_addr().unwrap(), Duration::from_secs(1), || true), Err(Cancelled));
    }
}
