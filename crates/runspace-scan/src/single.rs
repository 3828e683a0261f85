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
