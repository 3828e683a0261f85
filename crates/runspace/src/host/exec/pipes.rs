//! A child's stdout and stderr, read on the thread that waits for it: one
//! poll(2) over both pipes and the child's pidfd, instead of a thread per
//! pipe and naps between looks at the child. A short command is then seen
//! to end the moment it exits, and costs no thread start.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Child;
use std::time::{Duration, Instant};

/// Bytes read per `read` call.
const CHUNK: usize = 64 << 10;

/// The child's output pipes and its exit, being watched.
pub(super) struct Pipes {
    /// stdout, stderr.
    streams: [Stream; 2],
    /// Readable once the child has exited (Linux 5.3+); None where pidfds are missing.
    exit: Option<OwnedFd>,
    chunk: Vec<u8>,
}

/// One pipe and what was kept of it.
struct Stream {
    pipe: Option<File>,
    kept: Vec<u8>,
    max: usize,
}

impl Pipes {
    /// Takes the child's stdout and stderr; each keeps at most `max` bytes
    /// (the rest is read and dropped, so the child never blocks on a full pipe).
    pub(super) fn new(child: &mut Child, max: usize) -> Pipes {
        let stream = |pipe: Option<OwnedFd>| Stream { pipe: pipe.map(File::from), kept: Vec::new(), max };
        Pipes {
            streams: [stream(child.stdout.take().map(OwnedFd::from)), stream(child.stderr.take().map(OwnedFd::from))],
            exit: pidfd(child),
            chunk: vec![0; CHUNK],
        }
    }

    /// Waits up to `timeout` for output or the child's exit, and reads what
    /// came. False when there is nothing left to wait on (no open pipe, no
    /// pidfd): the caller then naps.
    pub(super) fn pump(&mut self, timeout: Duration) -> bool {
        self.poll(timeout, true)
    }

    /// After the child ended: reads until both pipes close or `until`
    /// passes (a grandchild outside the group may hold them open), and
    /// returns what stdout and stderr kept.
    pub(super) fn finish(mut self, until: Instant) -> (Vec<u8>, Vec<u8>) {
        loop {
            let left = until.saturating_duration_since(Instant::now());
            // The pidfd of an exited child is always readable: leave it out.
            if left.is_zero() || !self.poll(left, false) {
                break;
            }
        }
        let [out, err] = self.streams;
        (out.kept, err.kept)
    }

    fn poll(&mut self, timeout: Duration, watch_exit: bool) -> bool {
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(3);
        let mut open = [false; 2];
        for (i, stream) in self.streams.iter().enumerate() {
            if let Some(pipe) = &stream.pipe {
                fds.push(libc::pollfd { fd: pipe.as_raw_fd(), events: libc::POLLIN, revents: 0 });
                open[i] = true;
            }
        }
        if watch_exit {
            if let Some(exit) = &self.exit {
                fds.push(libc::pollfd { fd: exit.as_raw_fd(), events: libc::POLLIN, revents: 0 });
            }
        }
        if fds.is_empty() || (!watch_exit && !open.contains(&true)) {
            return false;
        }
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
        // SAFETY: `fds` holds `fds.len()` initialised pollfds and outlives the call;
        // poll(2) only writes their `revents`.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if ready > 0 {
            let mut polled = fds.iter();
            for (i, stream) in self.streams.iter_mut().enumerate() {
                if open[i] && polled.next().is_some_and(|p| p.revents != 0) {
                    stream.read_once(&mut self.chunk);
                }
            }
        }
        true
    }
}

impl Stream {
    /// One read of a pipe poll(2) said is ready (so it does not block).
    fn read_once(&mut self, chunk: &mut [u8]) {
        let Some(pipe) = &mut self.pipe else { return };
        match pipe.read(chunk) {
            Ok(0) => self.pipe = None,
            Ok(n) => {
                let room = self.max.saturating_sub(self.kept.len());
                self.kept.extend_from_slice(&chunk[..n.min(room)]);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => self.pipe = None,
        }
    }
}

/// A pidfd of the child, or None where pidfd_open(2) is missing.
fn pidfd(child: &Child) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and a flags word and returns a new
    // descriptor or -1. The child is not reaped yet, so the pid is still its.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    let fd = RawFd::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}
