//! Progress of `rsp run` on stderr: a bar on a terminal (done/total,
//! items/s, elapsed, ETA, failures, the scripts' current `write_progress`
//! activity), or with `--progress` on a non-terminal an occasional plain
//! line. Redrawn from the engine's [`RunProgress`] snapshots, not per item.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use runspace::RunProgress;

use crate::common::diag::diag;
use crate::common::human::{count_of, human_count, human_rate};

/// How often a plain progress line is printed when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(2);

/// Where progress goes.
pub enum Progress {
    /// Nothing is shown.
    Hidden,
    /// A bar on a terminal.
    Bar(ProgressBar),
    /// A line now and then.
    Plain { last: Instant },
}

impl Progress {
    /// A bar when `terminal`, plain lines otherwise.
    pub fn new(terminal: bool, total: Option<u64>) -> Progress {
        if !terminal {
            return Progress::Plain { last: Instant::now() };
        }
        let target = ProgressDrawTarget::stderr_with_hz(10);
        let (bar, template) = match total {
            Some(n) => (ProgressBar::with_draw_target(Some(n), target), "[{bar:30}] {wide_msg}"),
            None => (ProgressBar::with_draw_target(None, target), "{spinner} {wide_msg}"),
        };
        bar.set_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        let _ = io::stderr().flush();
        Progress::Bar(bar)
    }

    /// The bar, to hide it around terminal writes.
    pub fn bar(&self) -> Option<&ProgressBar> {
        match self {
            Progress::Bar(bar) => Some(bar),
            _ => None,
        }
    }

    /// Shows `p` (a plain line only if one is due, or `p.finished`).
    pub fn update(&mut self, p: &RunProgress) {
        match self {
            Progress::Hidden => {}
            Progress::Bar(bar) => {
                // The message first: setting the position may draw.
                bar.set_message(describe(p));
                bar.set_position(p.done);
            }
            Progress::Plain { last } => {
                if p.finished || last.elapsed() >= PLAIN_EVERY {
                    *last = Instant::now();
                    diag!("rsp: progress: {}", describe(p));
                }
            }
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// `1,234/10,000 (12.3%)  2,345 items/s  elapsed 0:05  ETA 0:37  3 failed  | activity: status`
pub fn describe(p: &RunProgress) -> String {
    let mut text = match p.total {
        Some(total) if total > 0 => {
            format!("{}/{} ({:.1}%)", human_count(p.done), human_count(total), p.done as f64 * 100.0 / total as f64)
        }
        _ => count_of(p.done, "item", "items"),
    };
    text.push_str(&format!("  {} items/s  elapsed {}", human_rate(p.items_per_sec), clock(p.elapsed)));
    if let Some(eta) = p.eta.filter(|_| !p.finished) {
        text.push_str(&format!("  ETA {}", clock(eta)));
    }
    if p.failures() > 0 {
        text.push_str(&format!("  {} failed", human_count(p.failures())));
    }
    if p.with_errors > 0 {
        text.push_str(&format!("  {} with errors", human_count(p.with_errors)));
    }
    if p.retried > 0 {
        text.push_str(&format!("  {} retried", human_count(p.retried)));
    }
    if let Some(activity) = &p.activity {
        text.push_str("  | ");
        text.push_str(&activity.activity);
        if let Some(status) = &activity.status {
            text.push_str(": ");
            text.push_str(status);
        }
        if let Some(pct) = activity.percent {
            text.push_str(&format!(" {pct:.0}%"));
        }
    }
    text
}

/// `0:05`, `12:03`, `3:02:01`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runspace::ProgressRecord;

    #[test]
    fn the_line_shows_counts_rate_eta_failures_and_activity() {
        let p = RunProgress {
            total: Some(10_000),
            done: 1_234,
            failed: 2,
            timed_out: 1,
            items_per_sec: 2_345.4,
            elapsed: Duration::from_secs(5),
            eta: Some(Duration::from_secs(3_725)),
            activity: Some(ProgressRecord { activity: "copy".into(), status: Some("a.txt".into()), percent: None }),
            ..RunProgress::default()
        };
        assert_eq!(
            describe(&p),
            "1,234/10,000 (12.3%)  2,345 items/s  elapsed 0:05  ETA 1:02:05  3 failed  | copy: a.txt"
        );
    }
}
