//! The shared work queue of a scan: which host gets the next socket, what
//! gets retried, and when a host is done.
//!
//! Fairness: up to `throttle` hosts are active at once, and each host may
//! hold at most its fair share of the global socket budget
//! (`concurrency / hosts with work left`). Probes are handed out round-robin
//! across hosts. Without the per-host cap a silent (filtered) host would
//! slowly collect every socket — its probes hold one for the whole timeout
//! while a fast host's probes return theirs at once — and starve the others.
//!
//! Workers take probes in batches and hand back answers in batches, so the
//! lock is taken once per batch, not once per probe.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::probe::{self, Answer};
use crate::result::{Counts, HostSummary, PortResult, Reason, ScanEvent};
use crate::target::Target;

/// How often a probe may hit a transient local failure (out of file
/// descriptors, out of ephemeral ports) or a self-connect before it is
/// reported as an error. Workers back off between attempts, so this spans
/// seconds, long enough for TIME_WAIT sockets and other processes to let go.
pub(crate) const MAX_LOCAL_RETRIES: u8 = 40;

/// One probe to send.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Probe {
    /// Index of the host in the scheduler's slab.
    pub host: u32,
    pub address: IpAddr,
    pub port: u16,
    /// Network attempts already made without an answer.
    pub attempt: u8,
    /// Local failures so far.
    pub local_fails: u8,
}

/// A worker's report on one probe.
#[derive(Debug)]
pub(crate) struct Done {
    pub probe: Probe,
    /// `None` means the timeout expired without an answer.
    pub answer: Option<Answer>,
    pub rtt: Duration,
}

struct HostState {
    host: Arc<str>,
    address: IpAddr,
    /// Next index into the port list for the first pass.
    next_port: usize,
    /// Probes to send again (timeouts with retries left, local failures).
    again: VecDeque<Probe>,
    in_flight: usize,
    counts: Counts,
    started: Instant,
}

impl HostState {
    fn has_work(&self, nports: usize) -> bool {
        self.next_port < nports || !self.again.is_empty()
    }
}

pub(crate) struct Scheduler {
    ports: Arc<[u16]>,
    retries: u8,
    throttle: usize,
    concurrency: usize,
    targets: Receiver<Target>,
    targets_done: bool,
    hosts: Vec<Option<HostState>>,
    /// Indices of active hosts, in round-robin order.
    active: Vec<u32>,
    cursor: usize,
    /// Events produced under the lock, sent by the worker before unlocking
    /// so that a host's port events always precede its `HostDone`.
    pub events: Vec<ScanEvent>,
}

impl Scheduler {
    pub(crate) fn new(
        ports: Arc<[u16]>,
        retries: u8,
        throttle: usize,
        concurrency: usize,
        targets: Receiver<Target>,
    ) -> Scheduler {
        Scheduler {
            ports,
            retries,
            throttle: throttle.max(1),
            concurrency: concurrency.max(1),
            targets,
            targets_done: false,
            hosts: Vec::new(),
            active: Vec::new(),
            cursor: 0,
            events: Vec::new(),
        }
    }

    /// True when every target has been scanned.
    pub(crate) fn finished(&self) -> bool {
        self.targets_done && self.active.is_empty()
    }

    /// Activates hosts from the target feed up to the throttle.
    fn refill(&mut self) {
        while !self.targets_done && self.active.len() < self.throttle {
            match self.targets.try_recv() {
                Ok(t) => {
                    if self.ports.is_empty() {
                        continue;
                    }
                    let state = HostState {
                        host: t.host.into(),
                        address: t.address,
                        next_port: 0,
                        again: VecDeque::new(),
                        in_flight: 0,
                        counts: Counts::default(),
                        started: Instant::now(),
                    };
                    let idx = match self.hosts.iter().position(Option::is_none) {
                        Some(i) => {
                            self.hosts[i] = Some(state);
                            i
                        }
                        None => {
                            self.hosts.push(Some(state));
                            self.hosts.len() - 1
                        }
                    };
                    self.active.push(idx as u32);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.targets_done = true,
            }
        }
    }

    /// Hands out up to `max` probes, round-robin over hosts under their
    /// fair-share cap.
    pub(crate) fn take(&mut self, max: usize, out: &mut Vec<Probe>) {
        self.refill();
        let nports = self.ports.len();
        let with_work = self
            .active
            .iter()
            .filter(|&&i| self.hosts[i as usize].as_ref().is_some_and(|h| h.has_work(nports)))
            .count();
        if with_work == 0 {
            return;
        }
        let cap = self.concurrency.div_ceil(with_work);
        let start = out.len();
        while out.len() - start < max {
            let mut gave = false;
            for _ in 0..self.active.len() {
                if out.len() - start >= max {
                    break;
                }
                self.cursor = (self.cursor + 1) % self.active.len();
                let idx = self.active[self.cursor];
                let h = self.hosts[idx as usize].as_mut().expect("active host exists");
                if h.in_flight >= cap {
                    continue;
                }
                let probe = if let Some(p) = h.again.pop_front() {
                    p
                } else if h.next_port < nports {
                    h.next_port += 1;
                    Probe {
                        host: idx,
                        address: h.address,
                        port: self.ports[h.next_port - 1],
                        attempt: 0,
                        local_fails: 0,
                    }
                } else {
                    continue;
                };
                h.in_flight += 1;
                out.push(probe);
                gave = true;
            }
            if !gave {
                break;
            }
        }
    }

    /// Takes back probes a worker did not send (it hit a local failure
    /// first); they go out again first, with no failure counted.
    pub(crate) fn give_back(&mut self, probes: &mut Vec<Probe>) {
        for p in probes.drain(..).rev() {
            let h = self.hosts[p.host as usize].as_mut().expect("probe belongs to a live host");
            h.in_flight -= 1;
            h.again.push_front(p);
        }
    }

    /// Records the workers' reports: emits final states, queues retries and
    /// finishes hosts whose every port is answered.
    pub(crate) fn complete(&mut self, done: &mut Vec<Done>) {
        for d in done.drain(..) {
            let mut p = d.probe;
            let h = self.hosts[p.host as usize].as_mut().expect("probe belongs to a live host");
            h.in_flight -= 1;
            let (reason, rtt, error) = match d.answer {
                Some(Answer::Final(reason)) => (reason, Some(d.rtt), None),
                None if p.attempt < self.retries => {
                    p.attempt += 1;
                    h.again.push_back(p);
                    continue;
                }
                None => (Reason::NoResponse, None, None),
                Some(Answer::Local(_) | Answer::SelfConnect) if p.local_fails < MAX_LOCAL_RETRIES => {
                    p.local_fails += 1;
                    h.again.push_front(p);
                    continue;
                }
                Some(Answer::Local(err) | Answer::Fatal(err)) => (Reason::LocalError, None, Some(probe::describe(err))),
                Some(Answer::SelfConnect) => {
                    (Reason::LocalError, None, Some("every attempt connected the socket to itself".to_string()))
                }
            };
            let state = reason.state();
            h.counts.add(state);
            self.events.push(ScanEvent::Port(PortResult {
                host: h.host.clone(),
                address: h.address,
                port: p.port,
                state,
                reason,
                rtt,
                attempts: u32::from(p.attempt) + 1,
                error,
            }));
        }
        self.retire_finished();
    }

    fn retire_finished(&mut self) {
        let nports = self.ports.len();
        let hosts = &mut self.hosts;
        let events = &mut self.events;
        self.active.retain(|&i| {
            let h = hosts[i as usize].as_ref().expect("active host exists");
            if h.in_flight > 0 || h.has_work(nports) {
                return true;
            }
            let h = hosts[i as usize].take().expect("active host exists");
            events.push(ScanEvent::HostDone(HostSummary {
                host: h.host,
                address: h.address,
                counts: h.counts,
                elapsed: h.started.elapsed(),
            }));
            false
        });
        if self.cursor >= self.active.len() {
            self.cursor = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::PortState;
    use std::sync::mpsc::sync_channel;

    fn sched(hosts: usize, ports: &[u16], conc: usize) -> Scheduler {
        let (tx, rx) = sync_channel(hosts);
        for i in 0..hosts {
            tx.send(Target::new(IpAddr::from([127, 0, 0, i as u8 + 1]))).unwrap();
        }
        drop(tx);
        Scheduler::new(ports.into(), 1, 10, conc, rx)
    }

    #[test]
    fn round_robin_with_fair_cap() {
        let mut s = sched(2, &[1, 2, 3, 4, 5, 6], 4);
        let mut out = Vec::new();
        s.take(100, &mut out);
        // Two hosts with work, budget 4: two probes each, alternating.
        assert_eq!(out.len(), 4);
        assert_ne!(out[0].host, out[1].host);
        let per_host = out.iter().filter(|p| p.host == out[0].host).count();
        assert_eq!(per_host, 2);
    }

    #[test]
    fn retries_only_unanswered_then_reports() {
        let mut s = sched(1, &[10, 11], 10);
        let mut out = Vec::new();
        s.take(10, &mut out);
        assert_eq!(out.len(), 2);
        let mut done = vec![
            Done { probe: out[0], answer: Some(Answer::Final(Reason::ConnRefused)), rtt: Duration::ZERO },
            Done { probe: out[1], answer: None, rtt: Duration::ZERO },
        ];
        s.complete(&mut done);
        assert_eq!(s.events.len(), 1);
        out.clear();
        s.take(10, &mut out);
        assert_eq!(out.len(), 1, "only the unanswered port is probed again");
        assert_eq!((out[0].port, out[0].attempt), (11, 1));
        let mut done = vec![Done { probe: out[0], answer: None, rtt: Duration::ZERO }];
        s.complete(&mut done);
        match &s.events[1] {
            ScanEvent::Port(r) => {
                assert_eq!((r.state, r.reason, r.attempts), (PortState::Filtered, Reason::NoResponse, 2));
                assert_eq!(r.rtt, None);
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(s.events[2], ScanEvent::HostDone(_)));
        s.take(10, &mut out);
        assert!(s.finished());
    }

    #[test]
    fn local_failures_are_requeued_not_reported() {
        let mut s = sched(1, &[10], 10);
        let mut out = Vec::new();
        s.take(10, &mut out);
        let mut done = vec![Done { probe: out[0], answer: Some(Answer::Local(libc::EMFILE)), rtt: Duration::ZERO }];
        s.complete(&mut done);
        assert!(s.events.is_empty());
        out.clear();
        s.take(10, &mut out);
        assert_eq!((out[0].port, out[0].local_fails, out[0].attempt), (10, 1, 0));
    }
}
