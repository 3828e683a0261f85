//! The writes a store queues for its writer, and what a store remembers
//! of the writes that failed. Shared by both backends, so a failure means
//! the same thing in each: the job it belongs to ends `Failed` with a
//! `storage error: …` message, and the store reports itself failing until
//! a write succeeds again.

use std::collections::HashMap;
use std::sync::Mutex;

use crossbeam_channel::Sender;

use super::{secs, NewJob};

/// A write for the writer thread.
pub(crate) enum Op {
    /// A new job, Queued. Fails (and is acknowledged as such) on a duplicate name.
    Insert { name: String, parallel: bool, request: String, total: u64, at: f64, inputs: Option<String> },
    /// The job began running.
    Started { name: String, at: f64 },
    /// One output record (an item of a run over inputs, or an output value).
    Output { name: String, seq: u64, record: String, done: Option<u64> },
    /// One record of one of the job's streams, at position `seq` in it.
    Stream { name: String, stream: String, seq: u64, record: String },
    /// The job ended.
    Finished { name: String, state: String, at: f64, error: Option<String>, done: u64 },
    /// Forget the job entirely.
    Delete { name: String },
    /// Forget each of these jobs that is finished.
    DeleteFinished { names: Vec<String> },
    /// Nothing: acknowledged once everything sent before it is committed.
    Flush,
}

impl Op {
    /// The write that stores a new job.
    pub(crate) fn insert(job: NewJob) -> Op {
        Op::Insert {
            name: job.name,
            parallel: job.parallel,
            request: job.request,
            total: job.total,
            at: secs(job.at),
            inputs: job.inputs,
        }
    }

    /// The running job this write records something of, if any: the job a
    /// failure of this write turns `Failed`. (A failed insert or delete is
    /// reported to the caller waiting for it instead.)
    pub(crate) fn job_record(&self) -> Option<&str> {
        match self {
            Op::Started { name, .. }
            | Op::Output { name, .. }
            | Op::Stream { name, .. }
            | Op::Finished { name, .. } => Some(name),
            Op::Insert { .. } | Op::Delete { .. } | Op::DeleteFinished { .. } | Op::Flush => None,
        }
    }
}

/// A write and, if the caller waits for it, where to say how it went.
pub(crate) struct Msg {
    pub(crate) op: Op,
    pub(crate) ack: Option<Sender<Result<(), String>>>,
}

/// What a job lost to storage errors.
struct Lost {
    /// The first error.
    error: String,
    /// How many writes of it failed.
    writes: u64,
}

/// Jobs that lost records to storage errors, and whether the store is
/// failing now; shared by the writer and the readers.
#[derive(Default)]
pub(crate) struct Failures {
    jobs: Mutex<HashMap<String, Lost>>,
    failing: Mutex<Option<String>>,
}

impl Failures {
    pub(crate) fn lost(&self, op: &Op, error: &str) {
        if let Some(name) = op.job_record() {
            self.lost_write(name, error);
        }
    }

    /// A write of job `name` failed with `error`.
    pub(crate) fn lost_write(&self, name: &str, error: &str) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.entry(name.to_string()).or_insert_with(|| Lost { error: error.to_string(), writes: 0 }).writes += 1;
    }

    /// Why the job failed, if its records could not all be stored.
    pub(crate) fn message(&self, name: &str) -> Option<String> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.get(name).map(|l| format!("storage error: {} ({} write(s) of this job failed)", l.error, l.writes))
    }

    /// Forgets a deleted job.
    pub(crate) fn forget(&self, name: &str) {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
    }

    /// The last failed write, while no write has succeeded since.
    pub(crate) fn failing(&self) -> Option<String> {
        self.failing.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many jobs lost records.
    pub(crate) fn failed_jobs(&self) -> u64 {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    pub(crate) fn set_failing(&self, error: Option<String>) {
        *self.failing.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }
}
