//! One TCP connect probe on a raw non-blocking socket (Linux/Unix, via libc).
//!
//! Why not tokio's `TcpStream::connect`: a full loopback scan is 65535
//! probes, and per-probe future, waker and reactor-registration overhead made
//! a naive tokio scan ~3x slower than plain `connect()` on this kind of
//! machine. Here a probe is `connect` + one `getsockopt` on a socket reused
//! from the previous refused probe (see [`Spares`]); only a probe that is
//! still in flight after that is registered with the worker's epoll set. On
//! loopback the kernel handles the SYN and the RST inside the `connect()`
//! call, so the `getsockopt` right after it already holds the answer and
//! epoll is never touched for a closed port.

use std::io;
use std::mem;
use std::net::IpAddr;
use std::os::fd::RawFd;

use crate::result::Reason;

/// A socket address in the form `connect()` takes.
#[derive(Clone, Copy)]
pub(crate) struct SockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl SockAddr {
    /// Builds the kernel form of `ip:port`.
    pub(crate) fn new(ip: IpAddr, port: u16) -> SockAddr {
        // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let len = match ip {
            IpAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: port.to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.octets()) },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
                mem::size_of::<libc::sockaddr_in>()
            }
            IpAddr::V6(v6) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: port.to_be(),
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr { s6_addr: v6.octets() },
                    sin6_scope_id: 0,
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
                mem::size_of::<libc::sockaddr_in6>()
            }
        };
        SockAddr { storage, len: len as libc::socklen_t }
    }

    fn family(&self) -> libc::c_int {
        libc::c_int::from(self.storage.ss_family)
    }

    fn as_ptr(&self) -> *const libc::sockaddr {
        &self.storage as *const _ as *const libc::sockaddr
    }

    /// Address and port bytes, for comparing a socket's two ends.
    fn key(&self) -> ([u8; 16], u16) {
        match self.family() {
            libc::AF_INET => {
                // SAFETY: family is AF_INET, so storage holds a sockaddr_in.
                let sin = unsafe { &*(self.as_ptr() as *const libc::sockaddr_in) };
                let mut a = [0u8; 16];
                a[..4].copy_from_slice(&sin.sin_addr.s_addr.to_ne_bytes());
                (a, sin.sin_port)
            }
            _ => {
                // SAFETY: family is AF_INET6, so storage holds a sockaddr_in6.
                let sin6 = unsafe { &*(self.as_ptr() as *const libc::sockaddr_in6) };
                (sin6.sin6_addr.s6_addr, sin6.sin6_port)
            }
        }
    }
}

/// How a probe ended, as far as the probe itself can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// A final answer from the network.
    Final(Reason),
    /// The kernel joined the socket to itself (loopback, source port equal
    /// to the destination port). Nothing listens there; probe again, which
    /// picks another source port.
    SelfConnect,
    /// A local, transient failure (EMFILE, EADDRNOTAVAIL, ENOBUFS, …):
    /// back off and probe again; never a port state.
    Local(i32),
    /// A local failure that retrying cannot fix (EAFNOSUPPORT, EINVAL, …).
    Fatal(i32),
}

/// Result of starting a probe.
pub(crate) enum Launch {
    /// The answer is already known.
    Done(Answer),
    /// The connection is in progress on this socket; wait for it to become
    /// writable, then call [`finish`].
    Pending(RawFd),
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// Maps a connect error to an answer.
pub(crate) fn classify(err: i32) -> Answer {
    match err {
        libc::ECONNREFUSED => Answer::Final(Reason::ConnRefused),
        libc::ECONNRESET => Answer::Final(Reason::Reset),
        libc::ETIMEDOUT => Answer::Final(Reason::NoResponse),
        libc::EHOSTUNREACH => Answer::Final(Reason::HostUnreach),
        libc::ENETUNREACH | libc::ENETDOWN => Answer::Final(Reason::NetUnreach),
        libc::EHOSTDOWN => Answer::Final(Reason::HostDown),
        libc::EACCES | libc::EPERM => Answer::Final(Reason::AdminProhibited),
        libc::EMFILE
        | libc::ENFILE
        | libc::ENOBUFS
        | libc::ENOMEM
        | libc::EADDRNOTAVAIL
        | libc::EADDRINUSE
        | libc::EAGAIN
        | libc::EINTR => Answer::Local(err),
        other => Answer::Fatal(other),
    }
}

/// Closes a socket. With `reset`, sets a zero linger first so the close
/// sends a RST instead of leaving the port in TIME_WAIT for a minute — what
/// nmap does too; a scan of many open ports would otherwise run out of
/// ephemeral ports.
pub(crate) fn close(fd: RawFd, reset: bool) {
    if reset {
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: fd is an open socket owned by us; linger is a valid option value.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const _ as *const libc::c_void,
                mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
    }
    // SAFETY: fd is an open socket owned by us and closed exactly once.
    unsafe { libc::close(fd) };
}

fn so_error(fd: RawFd) -> i32 {
    let mut err: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: fd is an open socket; err and len are valid for writes.
    let r = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, &mut err as *mut _ as *mut libc::c_void, &mut len)
    };
    if r < 0 {
        errno()
    } else {
        err
    }
}

/// True when the socket's local end equals `target`: a self-connect.
fn is_self_connect(fd: RawFd, target: &SockAddr) -> bool {
    // SAFETY: zeroed sockaddr_storage is valid; getsockname writes at most len bytes.
    let mut local = SockAddr {
        storage: unsafe { mem::zeroed() },
        len: mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
    };
    // SAFETY: fd is an open socket; the buffer and its length are valid.
    let r = unsafe { libc::getsockname(fd, &mut local.storage as *mut _ as *mut libc::sockaddr, &mut local.len) };
    r == 0 && local.family() == target.family() && local.key() == target.key()
}

/// The socket is connected: open, unless it is connected to itself.
fn connected(fd: RawFd, target: &SockAddr) -> Answer {
    let answer = if is_self_connect(fd, target) { Answer::SelfConnect } else { Answer::Final(Reason::SynAck) };
    close(fd, true);
    answer
}

/// Sockets whose connection attempt was refused, kept for the next probe.
///
/// After a refusal a TCP socket is back in the CLOSE state with its source
/// port released, and Linux lets it `connect()` again. Reusing it saves the
/// `socket()` and `close()` calls — file and inode set-up and tear-down —
/// which on loopback are about a third of a probe's cost.
#[derive(Default)]
pub(crate) struct Spares {
    v4: Vec<RawFd>,
    v6: Vec<RawFd>,
}

/// Spare sockets kept per address family.
const MAX_SPARES: usize = 32;

impl Spares {
    fn list(&mut self, family: libc::c_int) -> &mut Vec<RawFd> {
        if family == libc::AF_INET {
            &mut self.v4
        } else {
            &mut self.v6
        }
    }

    fn put(&mut self, family: libc::c_int, fd: RawFd) {
        let list = self.list(family);
        if list.len() < MAX_SPARES {
            list.push(fd);
        } else {
            close(fd, false);
        }
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        for fd in self.v4.drain(..).chain(self.v6.drain(..)) {
            close(fd, false);
        }
    }
}

/// Starts a probe: connects a non-blocking socket (a spare one if there is
/// one, else a new one).
pub(crate) fn start(target: &SockAddr, spares: &mut Spares) -> Launch {
    let family = target.family();
    let (fd, reused) = match spares.list(family).pop() {
        Some(fd) => (fd, true),
        None => {
            // SAFETY: plain socket(2) call.
            let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return Launch::Done(classify(errno()));
            }
            (fd, false)
        }
    };
    // SAFETY: fd is an open socket; the address pointer and length are valid.
    let mut r = unsafe { libc::connect(fd, target.as_ptr(), target.len) };
    if r < 0 && reused && errno() == libc::ECONNABORTED {
        // The first connect() after a refusal reports the old, aborted
        // attempt and resets the socket; the next one is a real attempt.
        // SAFETY: as above.
        r = unsafe { libc::connect(fd, target.as_ptr(), target.len) };
    }
    if r == 0 {
        return Launch::Done(connected(fd, target));
    }
    match errno() {
        libc::EINPROGRESS => match so_error(fd) {
            // Still in flight (or connected already: epoll will say so at once).
            0 => Launch::Pending(fd),
            libc::ECONNREFUSED => {
                spares.put(family, fd);
                Launch::Done(Answer::Final(Reason::ConnRefused))
            }
            err => {
                close(fd, false);
                Launch::Done(classify(err))
            }
        },
        _ if reused => {
            // The spare was not reusable after all: use a fresh socket.
            close(fd, false);
            start(target, spares)
        }
        err => {
            close(fd, false);
            Launch::Done(classify(err))
        }
    }
}

/// Completes a probe whose socket became writable or got an error, and
/// closes the socket.
pub(crate) fn finish(fd: RawFd, target: &SockAddr) -> Answer {
    match so_error(fd) {
        0 => connected(fd, target),
        err => {
            close(fd, false);
            classify(err)
        }
    }
}

/// Describes an errno for an error record ("Too many open files (os error 24)").
/// Whether this machine can send to `ip` at all: a UDP `connect()` picks a
/// route and a source address without sending anything. `Err(errno)` when it
/// has no source address for that family (EADDRNOTAVAIL, EAFNOSUPPORT) or no
/// route (ENETUNREACH, ENETDOWN): then every TCP probe would fail the same way,
/// locally, and retrying cannot help. Other failures (out of descriptors…)
/// say nothing about the target and count as reachable.
pub(crate) fn source_check(ip: IpAddr) -> Result<(), i32> {
    let unspecified: IpAddr = match ip {
        IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    let no_source = |e: io::Error| match e.raw_os_error() {
        Some(err @ (libc::EADDRNOTAVAIL | libc::EAFNOSUPPORT | libc::ENETUNREACH | libc::ENETDOWN)) => Err(err),
        _ => Ok(()),
    };
    let socket = match std::net::UdpSocket::bind((unspecified, 0)) {
        Ok(s) => s,
        Err(e) => return no_source(e),
    };
    socket.connect((ip, 9)).or_else(no_source)
}

pub(crate) fn describe(err: i32) -> String {
    io::Error::from_raw_os_error(err).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket bound to 127.0.0.1:P and connected to 127.0.0.1:P ends up
    /// connected to itself (TCP simultaneous open) — exactly what happens
    /// when a scan of the ephemeral range picks P as its own source port.
    #[test]
    fn self_connect_is_not_open() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let target = SockAddr::new("127.0.0.1".parse().unwrap(), port);
        // SAFETY: plain socket calls on a socket we own.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0);
            assert_eq!(libc::bind(fd, target.as_ptr(), target.len), 0);
            assert_eq!(libc::connect(fd, target.as_ptr(), target.len), 0, "{}", describe(errno()));
            assert_eq!(connected(fd, &target), Answer::SelfConnect);
        }
    }

    #[test]
    fn refused_and_open() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = SockAddr::new("127.0.0.1".parse().unwrap(), l.local_addr().unwrap().port());
        let mut spares = Spares::default();
        let mut answer = |t: &SockAddr| match start(t, &mut spares) {
            Launch::Done(a) => a,
            Launch::Pending(fd) => {
                let mut p = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
                // SAFETY: p is a valid pollfd.
                unsafe { libc::poll(&mut p, 1, 1000) };
                finish(fd, t)
            }
        };
        assert_eq!(answer(&open), Answer::Final(Reason::SynAck));
        drop(l);
        // The refused socket is kept and reused: answers stay right.
        for _ in 0..3 {
            assert_eq!(answer(&open), Answer::Final(Reason::ConnRefused));
        }
        let l = std::net::TcpListener::bind(("127.0.0.1", open.key().1.to_be())).unwrap();
        assert_eq!(answer(&open), Answer::Final(Reason::SynAck));
        drop(l);
    }

    #[test]
    fn local_errors_are_not_port_states() {
        assert_eq!(classify(libc::EMFILE), Answer::Local(libc::EMFILE));
        assert_eq!(classify(libc::EADDRNOTAVAIL), Answer::Local(libc::EADDRNOTAVAIL));
        assert_eq!(classify(libc::EHOSTUNREACH), Answer::Final(Reason::HostUnreach));
        assert_eq!(classify(libc::EAFNOSUPPORT), Answer::Fatal(libc::EAFNOSUPPORT));
    }
}
