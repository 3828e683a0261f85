//! The summary of `rsp run` on stderr, and the counts the exit code is decided from.

use std::time::Duration;

use console::style;
use runspace::{RunProgress, Status};

use super::output::paint;
use crate::common::human::{count_of, human_count, human_duration, human_rate};

/// Counts by status and the run's shape, for the summary and the exit code.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    /// Items processed (handed out) in this run.
    pub total: u64,
    pub completed: u64,
    pub with_errors: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub stopped: u64,
    /// Items that took more than one attempt.
    pub retried: u64,
    /// Batches formed (batch mode).
    pub batches: u64,
    /// The batch size (batch mode).
    pub batch_size: Option<usize>,
    /// Inputs skipped because the job log has them (`--resume`).
    pub skipped: u64,
    /// All inputs: known up front, or read plus skipped.
    pub inputs: u64,
}

impl Tally {
    /// The counts of a finished run's last progress snapshot.
    pub fn from_progress(p: &RunProgress) -> Tally {
        Tally {
            total: p.done,
            completed: p.completed,
            with_errors: p.with_errors,
            failed: p.failed,
            timed_out: p.timed_out,
            stopped: p.stopped,
            retried: p.retried,
            batches: p.batches,
            inputs: p.total.unwrap_or(p.read),
            ..Tally::default()
        }
    }

    pub fn all_completed(&self) -> bool {
        self.completed == self.total
    }

    /// Completed items as a percentage of those processed (100 for none).
    pub fn success_rate(&self) -> f64 {
        if self.total == 0 {
            100.0
        } else {
            self.completed as f64 * 100.0 / self.total as f64
        }
    }

    /// The summary block, coloured when `colour`.
    pub fn summary(&self, elapsed: Duration, interrupted: bool, colour: bool) -> String {
        let secs = elapsed.as_secs_f64();
        let rate = if secs > 0.0 { self.total as f64 / secs } else { 0.0 };
        let paint = |n: u64, label: &str, status: Status| {
            let text = format!("{} {label}", human_count(n));
            if colour && n > 0 {
                self::paint(status, &text)
            } else {
                text
            }
        };
        let head = format!(
            "{} in {} ({} items/s)",
            count_of(self.total, "item", "items"),
            human_duration(elapsed),
            human_rate(rate)
        );
        let head = if colour { style(head).bold().to_string() } else { head };
        let mut text = format!(
            "Summary: {head}\n  {}, {}, {}, {}, {}",
            paint(self.completed, "completed", Status::Completed),
            paint(self.with_errors, "with errors", Status::CompletedWithErrors),
            paint(self.failed, "failed", Status::Failed),
            paint(self.timed_out, "timed out", Status::TimedOut),
            paint(self.stopped, "stopped", Status::Stopped),
        );
        text.push_str(&format!(
            "\n  total {}, processed {}, successful {}, success rate {:.1}%, retried {}",
            human_count(self.inputs.max(self.total + self.skipped)),
            human_count(self.total),
            human_count(self.completed),
            self.success_rate(),
            human_count(self.retried)
        ));
        if let Some(size) = self.batch_size {
            text.push_str(&format!(
                "\n  batches {}, batch size {}",
                human_count(self.batches),
                human_count(size as u64)
            ));
        }
        if self.skipped > 0 {
            text.push_str(&format!("\n  skipped {} already in the job log", human_count(self.skipped)));
        }
        if interrupted {
            text.push_str("\n  interrupted: items not yet started were not run");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_and_summary_add_up() {
        let t = Tally { total: 5, completed: 2, with_errors: 1, failed: 1, timed_out: 1, ..Tally::default() };
        assert_eq!((t.total, t.completed, t.failed, t.timed_out, t.with_errors), (5, 2, 1, 1, 1));
        assert!(!t.all_completed());
        let s = t.summary(Duration::from_millis(500), false, false);
        assert!(s.contains("5 items in 500.0 ms (10.0 items/s)"), "{s}");
        assert!(s.contains("2 completed, 1 with errors, 1 failed, 1 timed out, 0 stopped"), "{s}");
        assert_eq!(human_rate(1234567.0), "1,234,567");
    }

    #[test]
    fn summary_arithmetic_of_a_batched_resumed_run() {
        let t = Tally {
            total: 8,
            completed: 6,
            with_errors: 0,
            failed: 1,
            timed_out: 1,
            stopped: 0,
            retried: 3,
            batches: 4,
            batch_size: Some(2),
            skipped: 2,
            inputs: 10,
        };
        assert_eq!(t.total, t.completed + t.with_errors + t.failed + t.timed_out + t.stopped);
        let s = t.summary(Duration::from_secs(2), false, false);
        assert!(s.contains("8 items in 2.00 s (4.0 items/s)"), "{s}");
        assert!(s.contains("total 10, processed 8, successful 6, success rate 75.0%, retried 3"), "{s}");
        assert!(s.contains("batches 4, batch size 2"), "{s}");
        assert!(s.contains("skipped 2 already in the job log"), "{s}");
        assert_eq!(Tally::default().success_rate(), 100.0);
    }
}
