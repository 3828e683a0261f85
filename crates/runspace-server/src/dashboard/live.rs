//! The live picture: one task reads the store every [`TICK`] (the jobs in
//! flight, the counts by state, the workers), works out rates, ETAs and the
//! throughput of the last hour, and publishes a [`Snapshot`]. Every open
//! page's event stream only reads the latest snapshot, so ten browsers cost
//! what one does, and the store sees two small queries a tick whoever
//! watches.
//!
//! The store is the source, not this server's job manager: with a shared
//! store, jobs run by other hosts' workers show the same way.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;

use super::html::now;
use crate::store::{JobRow, JobStore, WorkerRow};

/// How often the picture is refreshed.
pub(super) const TICK: Duration = Duration::from_millis(500);
/// The most jobs in flight the picture follows.
const MAX_ACTIVE: u64 = 500;
/// The span a rate is measured over.
const RATE_WINDOW: f64 = 3.0;
/// How many rate points a job's chart keeps (a point a tick: ten minutes).
const SERIES_POINTS: usize = 1200;
/// How many jobs' charts are kept (the oldest ended go first).
const MAX_SERIES: usize = 200;
/// How long an ended job stays in the snapshots (for pages to see its end).
const ENDED_FOR: f64 = 10.0;
/// Minutes of throughput kept.
const MINUTES: usize = 60;

/// A job in flight, with its measured rate.
#[derive(Debug, Clone)]
pub(super) struct Active {
    pub(super) row: JobRow,
    /// Items per second over the last few seconds.
    pub(super) rate: Option<f64>,
}

impl Active {
    /// Seconds until it ends at its current rate.
    pub(super) fn eta(&self) -> Option<f64> {
        let rate = self.rate.filter(|r| *r > 0.0)?;
        Some(self.row.total.saturating_sub(self.row.done) as f64 / rate)
    }
}

/// What the store looked like at one tick.
#[derive(Debug, Default)]
pub(super) struct Snapshot {
    /// When (seconds since the epoch).
    pub(super) at: f64,
    /// Jobs by state.
    pub(super) counts: Vec<(String, u64)>,
    /// Queued and Running jobs, oldest first.
    pub(super) active: Vec<Active>,
    /// Jobs that ended in the last few seconds, with their final row.
    pub(super) ended: Vec<JobRow>,
    /// Items finished per minute across jobs, oldest minute first, the current one last.
    pub(super) per_minute: Vec<u64>,
    /// Items per second across jobs now.
    pub(super) rate: f64,
    /// The workers of a shared store.
    pub(super) workers: Vec<WorkerRow>,
    /// Why the store could not be read, if it could not.
    pub(super) error: Option<String>,
}

impl Snapshot {
    /// The snapshot as the overview and list pages receive it.
    pub(super) fn summary(&self) -> Value {
        let job = |row: &JobRow, rate: Option<f64>, eta: Option<f64>| {
            json!({"name": row.name, "state": row.state, "done": row.done, "total": row.total,
                   "rate": rate, "eta_s": eta, "started": row.started, "ended": row.ended})
        };
        json!({
            "at": self.at,
            "counts": self.counts.iter().map(|(s, n)| (s.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "active": self.active.iter().map(|a| job(&a.row, a.rate, a.eta())).collect::<Vec<_>>(),
            "ended": self.ended.iter().map(|r| job(r, None, None)).collect::<Vec<_>>(),
            "per_minute": self.per_minute,
            "rate": self.rate,
            "workers": self.workers.iter().map(|w| json!({"id": w.id, "heartbeat_age_s": (self.at - w.heartbeat).max(0.0),
                "slots": w.slots, "items_done": w.items_done})).collect::<Vec<_>>(),
            "error": self.error,
        })
    }

    /// One job in this snapshot: in flight (with its rate), or just ended.
    pub(super) fn job(&self, name: &str) -> Option<Active> {
        self.active
            .iter()
            .find(|a| a.row.name == name)
            .cloned()
            .or_else(|| self.ended.iter().find(|r| r.name == name).map(|r| Active { row: r.clone(), rate: None }))
    }
}

/// One job's measurements.
#[derive(Default)]
struct Meter {
    /// `(time, done)` over the last [`RATE_WINDOW`].
    samples: VecDeque<(f64, u64)>,
    /// `(time, rate)` for the chart.
    points: VecDeque<(f64, f64)>,
    /// When it was last seen in flight.
    seen: f64,
}

impl Meter {
    /// Records `done` at `at`; returns the items finished since the last
    /// sample and the rate over the window.
    fn sample(&mut self, at: f64, done: u64) -> (u64, Option<f64>) {
        let delta = self.samples.back().map_or(0, |&(_, d)| done.saturating_sub(d));
        self.samples.push_back((at, done));
        while self.samples.front().is_some_and(|&(t, _)| at - t > RATE_WINDOW) {
            self.samples.pop_front();
        }
        self.seen = at;
        let &(t0, d0) = self.samples.front().unwrap_or(&(at, done));
        let rate = (at - t0 >= 0.4).then(|| done.saturating_sub(d0) as f64 / (at - t0));
        if let Some(rate) = rate {
            if self.points.len() == SERIES_POINTS {
                self.points.pop_front();
            }
            self.points.push_back((at, rate));
        }
        (delta, rate)
    }
}

/// The live picture and what it is made from.
pub(super) struct Live {
    store: Arc<dyn JobStore>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    meters: Mutex<HashMap<String, Meter>>,
    /// `(minute since the epoch, items)`, oldest first.
    minutes: Mutex<VecDeque<(u64, u64)>>,
}

impl Live {
    /// Starts the task that refreshes the picture until `stop` turns true
    /// (in the current tokio runtime).
    pub(super) fn start(store: Arc<dyn JobStore>, mut stop: watch::Receiver<bool>) -> Arc<Live> {
        let (snapshot, _) = watch::channel(Arc::new(Snapshot::default()));
        let live = Arc::new(Live { store, snapshot, meters: Mutex::default(), minutes: Mutex::new(VecDeque::new()) });
        let task = live.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut previous: Arc<Snapshot> = Arc::default();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => break,
                }
                let (task2, before) = (task.clone(), previous.clone());
                match tokio::task::spawn_blocking(move || task2.refresh(&before)).await {
                    Ok(next) => {
                        previous = Arc::new(next);
                        task.snapshot.send_replace(previous.clone());
                    }
                    Err(_) => break,
                }
            }
        });
        live
    }

    /// A receiver of the snapshots, the current one marked unseen.
    pub(super) fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        let mut rx = self.snapshot.subscribe();
        rx.mark_changed();
        rx
    }

    /// The latest snapshot.
    pub(super) fn latest(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// The chart points of a job: `(seconds since the epoch, items/s)`.
    pub(super) fn series(&self, name: &str) -> Vec<(f64, f64)> {
        let meters = self.meters.lock().unwrap_or_else(|e| e.into_inner());
        meters.get(name).map(|m| m.points.iter().copied().collect()).unwrap_or_default()
    }

    /// Reads the store and builds the next snapshot.
    fn refresh(&self, previous: &Snapshot) -> Snapshot {
        let at = now();
        let mut error = None;
        let mut keep = |e: crate::store::StoreError| {
            error.get_or_insert(e.to_string());
        };
        let rows = self.store.active_jobs(MAX_ACTIVE).unwrap_or_else(|e| {
            keep(e);
            Vec::new()
        });
        // Only when someone watches: the counts are the one query that
        // grows with the number of jobs stored.
        let watched = self.snapshot.receiver_count() > 0;
        let counts = if watched || previous.counts.is_empty() {
            self.store.state_counts().unwrap_or_else(|e| {
                keep(e);
                previous.counts.clone()
            })
        } else {
            previous.counts.clone()
        };
        let workers = self.store.workers().unwrap_or_else(|e| {
            keep(e);
            Vec::new()
        });
        let in_flight: HashSet<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        let mut items = 0;
        let mut ended: Vec<JobRow> = previous
            .ended
            .iter()
            .filter(|r| r.ended.is_none_or(|e| at - e < ENDED_FOR) && !in_flight.contains(r.name.as_str()))
            .cloned()
            .collect();
        let mut meters = self.meters.lock().unwrap_or_else(|e| e.into_inner());
        for gone in previous.active.iter().filter(|a| !in_flight.contains(a.row.name.as_str())) {
            // Ended (or removed) since the last tick: its last items count too.
            if let Ok(Some(row)) = self.store.job_row(&gone.row.name) {
                if let Some(meter) = meters.get_mut(&row.name) {
                    items += meter.sample(at, row.done).0;
                }
                ended.push(row);
            }
        }
        let active: Vec<Active> = rows
            .into_iter()
            .map(|row| {
                let meter = meters.entry(row.name.clone()).or_default();
                let (delta, rate) = if row.state == "Running" { meter.sample(at, row.done) } else { (0, None) };
                items += delta;
                Active { row, rate }
            })
            .collect();
        if meters.len() > MAX_SERIES {
            let mut by_age: Vec<(f64, String)> = meters.iter().map(|(k, m)| (m.seen, k.clone())).collect();
            by_age.sort_by(|a, b| a.0.total_cmp(&b.0));
            for (_, name) in by_age.into_iter().take(meters.len() - MAX_SERIES) {
                meters.remove(&name);
            }
        }
        drop(meters);
        let per_minute = self.count_minute(at, items);
        let rate = active.iter().filter_map(|a| a.rate).fold(0.0, |sum, r| sum + r);
        Snapshot { at, counts, active, ended, per_minute, rate, workers, error }
    }

    /// Adds `items` to the current minute; returns the last hour, a value a minute.
    fn count_minute(&self, at: f64, items: u64) -> Vec<u64> {
        let minute = (at / 60.0) as u64;
        let mut minutes = self.minutes.lock().unwrap_or_else(|e| e.into_inner());
        match minutes.back_mut() {
            Some((m, n)) if *m == minute => *n += items,
            _ => minutes.push_back((minute, items)),
        }
        while minutes.front().is_some_and(|&(m, _)| m + (MINUTES as u64) <= minute) {
            minutes.pop_front();
        }
        let first = minute + 1 - MINUTES as u64;
        let mut out = vec![0; MINUTES];
        for &(m, n) in minutes.iter() {
            if m >= first {
                out[(m - first) as usize] = n;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_carries_the_workers_with_their_heartbeat_age() {
        let snapshot = Snapshot {
            at: 1000.0,
            workers: vec![WorkerRow { id: "host-a:42".into(), heartbeat: 997.5, slots: 8, items_done: 12 }],
            ..Snapshot::default()
        };
        let summary = snapshot.summary();
        assert_eq!(summary["workers"][0]["id"], "host-a:42");
        assert_eq!(summary["workers"][0]["heartbeat_age_s"], 2.5);
        assert_eq!(summary["workers"][0]["slots"], 8);
    }

    #[test]
    fn a_meter_measures_the_rate_over_its_window() {
        let mut meter = Meter::default();
        assert_eq!(meter.sample(100.0, 0), (0, None));
        assert_eq!(meter.sample(100.5, 50).0, 50);
        let (delta, rate) = meter.sample(101.0, 100);
        assert_eq!(delta, 50);
        assert!((rate.unwrap() - 100.0).abs() < 1e-9);
        // Samples older than the window are dropped.
        meter.sample(110.0, 100);
        let (_, rate) = meter.sample(111.0, 200);
        assert!((rate.unwrap() - 100.0).abs() < 1e-9, "{rate:?}");
    }
}
