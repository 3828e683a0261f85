//! Work as rows with leases, on a real PostgreSQL server: claims never
//! overlap, an expired lease makes its chunk claimable again, the fence
//! drops a late completion and counts it, a stopped job fences everything,
//! and worker loops share a run exactly once, across a database restart.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runspace_server::store::work::{ClusterJob, Completion, Lease};
use runspace_server::store::{JobStore, PgStore};
use runspace_server::worker::{run_worker, WorkerConfig, WorkerEvent};
use serde_json::{json, Value};

fn store(prefix: &str) -> Option<PgStore> {
    Some(PgStore::open(&support::pg::fresh_database(prefix)?).unwrap())
}

fn submit(store: &PgStore, name: &str, items: u64, chunk: usize) {
    let job = ClusterJob {
        name: name.into(),
        request: json!({"script": "return _ * 2", "script_name": "double"}),
        inputs: (0..items).map(|i| json!(i)).collect(),
        chunk_size: chunk,
    };
    store.submit_cluster(job).unwrap();
}

fn records(lease: &Lease) -> Vec<(u64, String, bool)> {
    lease
        .inputs
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let index = lease.first + i as u64;
            (
                index,
                json!({"index": index, "input": v, "result": v.as_u64().unwrap() * 2, "status": "Completed"})
                    .to_string(),
                true,
            )
        })
        .collect()
}

#[test]
fn claims_never_overlap_and_the_last_completion_ends_the_job() {
    let Some(store) = store("claims") else { return };
    submit(&store, "j", 10, 3);
    let lease = Duration::from_secs(60);
    let mut leases = Vec::new();
    while let Some(l) = store.claim("a", lease, &[]).unwrap() {
        leases.push(l);
    }
    assert_eq!(leases.iter().map(|l| (l.first, l.inputs.len())).collect::<Vec<_>>(), [(0, 3), (3, 3), (6, 3), (9, 1)]);
    assert!(leases.iter().all(|l| l.attempt == 1 && l.job == "j"));
    assert_eq!(store.cluster_status("j").unwrap().unwrap().state, "Queued", "claimed, not yet taken on");
    store.job_started(leases[0].job_id).unwrap();
    assert_eq!(store.cluster_status("j").unwrap().unwrap().state, "Running");
    for l in &leases {
        assert_eq!(store.complete("a", l, records(l)).unwrap(), Completion::Recorded);
    }
    let status = store.cluster_status("j").unwrap().unwrap();
    assert_eq!((status.state.as_str(), status.done, status.total, status.rejected), ("Completed", 10, 10, 0));
    let job = store.get("j").unwrap().unwrap();
    assert_eq!(job["output_count"], 10);
    let states: Vec<&str> = job["history"].as_array().unwrap().iter().map(|h| h["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["Queued", "Running", "Completed"]);
    // A duplicate completion of a done chunk is fenced off and counted.
    assert_eq!(store.complete("a", &leases[0], records(&leases[0])).unwrap(), Completion::Rejected);
    assert_eq!(store.cluster_status("j").unwrap().unwrap().rejected, 1);
    assert_eq!(store.get("j").unwrap().unwrap()["output_count"], 10);
}

#[test]
fn the_dashboard_sees_a_running_cluster_job_s_progress_and_failures_as_chunks_complete() {
    let Some(store) = store("dash") else { return };
    submit(&store, "live", 10, 4);
    let first = store.claim("a", Duration::from_secs(60), &[]).unwrap().unwrap();
    store.job_started(first.job_id).unwrap();
    let mut recs = records(&first);
    recs[1].1 = json!({"index": 1, "status": "Failed", "errors": ["no"]}).to_string();
    recs[1].2 = false;
    assert_eq!(store.complete("a", &first, recs).unwrap(), Completion::Recorded);
    // Completions count on the chunks, not the job's row: the dashboard sums them.
    let row = store.job_row("live").unwrap().unwrap();
    assert_eq!((row.state.as_str(), row.done, row.total, row.failed), ("Running", 4, 10, 1));
    assert_eq!(store.active_jobs(10).unwrap()[0].done, 4, "the jobs in flight too");
    let failed = store.item_rows("live", Some("Failed"), runspace_server::store::Cursor::First, 10).unwrap().unwrap();
    assert_eq!(failed.records.iter().map(|r| r.0).collect::<Vec<_>>(), [1]);
    while let Some(l) = store.claim("a", Duration::from_secs(60), &[]).unwrap() {
        store.complete("a", &l, records(&l)).unwrap();
    }
    let row = store.job_row("live").unwrap().unwrap();
    assert_eq!((row.state.as_str(), row.done, row.failed), ("CompletedWithErrors", 10, 1));
}

#[test]
fn a_job_left_running_with_every_chunk_done_is_ended_by_an_idle_worker_even_unwatched() {
    let Some(url) = support::pg::fresh_database("unwatched") else { return };
    let store = PgStore::open(&url).unwrap();
    submit(&store, "stuck", 5, 5);
    submit(&store, "busy", 5, 5);
    let lease = store.claim("a", Duration::from_secs(60), &[]).unwrap().unwrap();
    assert_eq!(lease.job, "stuck");
    store.job_started(lease.job_id).unwrap();
    assert_eq!(store.complete("a", &lease, records(&lease)).unwrap(), Completion::Recorded);
    let db = url.rsplit('/').next().unwrap();
    support::pg::shared().unwrap().psql(db, "UPDATE jobs SET state = 'Running', ended_at = NULL WHERE name = 'stuck'");
    assert_eq!(store.end_unended().unwrap(), 1);
    assert_eq!(store.job_row("stuck").unwrap().unwrap().state, "Completed");
    // A job with a chunk still open is left alone.
    assert_eq!(store.job_row("busy").unwrap().unwrap().state, "Queued");
    assert_eq!(store.end_unended().unwrap(), 0, "nothing left to end");
}

#[test]
fn a_job_left_running_with_every_chunk_done_is_ended_by_whoever_watches_it() {
    let Some(url) = support::pg::fresh_database("unended") else { return };
    let store = PgStore::open(&url).unwrap();
    submit(&store, "stuck", 5, 5);
    let lease = store.claim("a", Duration::from_secs(60), &[]).unwrap().unwrap();
    store.job_started(lease.job_id).unwrap();
    assert_eq!(store.complete("a", &lease, records(&lease)).unwrap(), Completion::Recorded);
    // As a lost end would leave it: every chunk done, the job Running.
    let db = url.rsplit('/').next().unwrap();
    support::pg::shared().unwrap().psql(db, "UPDATE jobs SET state = 'Running', ended_at = NULL");
    let status = store.cluster_status("stuck").unwrap().unwrap();
    assert_eq!((status.state.as_str(), status.done), ("Completed", 5));
    let states: Vec<String> = store.get("stuck").unwrap().unwrap()["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states.last().map(String::as_str), Some("Completed"));
}

/// The last two chunks completed at the same moment by two workers: each
/// completion's transaction must see the other's chunk done, or neither
/// ends the job and it stays Running forever with every chunk done (a
/// `rsp run --cluster` following it then never finishes).
#[test]
fn two_last_chunks_completed_at_once_still_end_the_job() {
    let Some(url) = support::pg::fresh_database("last_two") else { return };
    let (a, b) = (PgStore::open(&url).unwrap(), PgStore::open(&url).unwrap());
    let lease = Duration::from_secs(60);
    for round in 0..20 {
        let name = format!("pair{round}");
        submit(&a, &name, 2, 1);
        let la = a.claim("a", lease, &[]).unwrap().unwrap();
        let lb = b.claim("b", lease, &[]).unwrap().unwrap();
        a.job_started(la.job_id).unwrap();
        let start = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            let one = s.spawn(|| {
                start.wait();
                a.complete("a", &la, records(&la)).unwrap()
            });
            start.wait();
            assert_eq!(b.complete("b", &lb, records(&lb)).unwrap(), Completion::Recorded);
            assert_eq!(one.join().unwrap(), Completion::Recorded);
        });
        let status = a.cluster_status(&name).unwrap().unwrap();
        assert_eq!((status.state.as_str(), status.done), ("Completed", 2), "round {round}: every chunk done");
    }
}

/// A job of no items has no chunk for a worker to complete: it is
/// Completed as it is submitted, not Queued forever.
#[test]
fn a_job_of_no_items_is_completed_at_once() {
    let Some(store) = store("empty") else { return };
    submit(&store, "none", 0, 10);
    let status = store.cluster_status("none").unwrap().unwrap();
    assert_eq!((status.state.as_str(), status.done, status.total), ("Completed", 0, 0));
    assert!(store.claim("a", Duration::from_secs(60), &[]).unwrap().is_none());
}

#[test]
fn an_expired_lease_is_claimed_again_and_the_late_completion_is_rejected() {
    let Some(store) = store("expiry") else { return };
    submit(&store, "j", 4, 4);
    let a = store.claim("a", Duration::from_millis(300), &[]).unwrap().unwrap();
    assert!(store.claim("b", Duration::from_secs(60), &[]).unwrap().is_none(), "held, not expired");
    let deadline = Instant::now() + Duration::from_secs(10);
    let b = loop {
        if let Some(b) = store.claim("b", Duration::from_secs(60), &[]).unwrap() {
            break b;
        }
        assert!(Instant::now() < deadline, "the expired lease never became claimable");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!((b.chunk, b.attempt), (a.chunk, 2));
    // A heartbeat no longer extends what was taken over.
    assert!(store.heartbeat("a", Duration::from_secs(60), &[(a.job_id, a.chunk, a.attempt)]).unwrap().is_empty());
    assert_eq!(store.complete("a", &a, records(&a)).unwrap(), Completion::Rejected);
    assert_eq!(store.complete("b", &b, records(&b)).unwrap(), Completion::Recorded);
    let status = store.cluster_status("j").unwrap().unwrap();
    assert_eq!((status.state.as_str(), status.done, status.rejected), ("Completed", 4, 1));
}

#[test]
fn a_stopped_job_is_claimed_no_more_and_fences_its_leases() {
    let Some(store) = store("stop") else { return };
    submit(&store, "j", 6, 3);
    let a = store.claim("a", Duration::from_secs(60), &[]).unwrap().unwrap();
    assert!(store.stop_cluster_job("j").unwrap());
    assert!(!store.stop_cluster_job("j").unwrap(), "already ended");
    assert!(store.claim("b", Duration::from_secs(60), &[]).unwrap().is_none());
    assert_eq!(store.complete("a", &a, records(&a)).unwrap(), Completion::Rejected);
    let status = store.cluster_status("j").unwrap().unwrap();
    assert_eq!((status.state.as_str(), status.done), ("Stopped", 0));
}

#[test]
fn a_released_chunk_and_a_refused_job_go_to_other_workers() {
    let Some(store) = store("release") else { return };
    submit(&store, "j", 2, 2);
    let a = store.claim("a", Duration::from_secs(60), &[]).unwrap().unwrap();
    store.release("a", &a).unwrap();
    let b = store.claim("b", Duration::from_secs(60), &[]).unwrap().unwrap();
    assert_eq!((b.chunk, b.attempt), (0, 2));
    assert!(store.claim("c", Duration::from_secs(60), &[b.job_id]).unwrap().is_none(), "skipped job");
    store.refuse(b.job_id, "w1", "the job asks for the 'exec' capability").unwrap();
    store.refuse(b.job_id, "w1", "the job asks for the 'exec' capability").unwrap();
    let status = store.cluster_status("j").unwrap().unwrap();
    assert_eq!(status.refusals, ["worker w1: the job asks for the 'exec' capability"]);
}

fn config(url: &str, name: &str) -> WorkerConfig {
    WorkerConfig {
        url: url.into(),
        name: name.into(),
        slots: 2,
        allow_max: Default::default(),
        allow_max_spec: String::new(),
        lease: Duration::from_secs(3),
        heartbeat: Duration::from_millis(500),
        poll: Duration::from_millis(200),
        grace: Duration::from_secs(5),
    }
}

/// Every recorded item of `job`, by index, once each.
fn recorded(store: &PgStore, job: &str, total: u64) -> Vec<Value> {
    let mut seen = HashSet::new();
    let mut all: Vec<(u64, String)> = store.new_records(job, &mut seen).unwrap();
    all.sort_by_key(|r| r.0);
    assert_eq!(all.len() as u64, total, "every item recorded");
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "no item twice");
    all.into_iter().map(|(_, r)| serde_json::from_str(&r).unwrap()).collect()
}

#[test]
fn worker_loops_share_a_run_exactly_once_across_a_database_restart() {
    let Some(server) = support::pg::PgServer::start() else { return };
    let url = server.new_database("restart");
    let store = PgStore::open(&url).unwrap();
    let total = 3000;
    let job = ClusterJob {
        name: "slow".into(),
        request: json!({"script": "local x = 0 for i = 1, 20000 do x = x + i end return _ * 2"}),
        inputs: (0..total).map(|i| json!(i)).collect(),
        chunk_size: 50,
    };
    store.submit_cluster(job).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Set however the test ends, so a failed assertion cannot leave the workers running.
    let _stop_on_drop = StopOnDrop(stop.clone());
    let retried = Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| {
        let workers: Vec<_> = ["w1", "w2"]
            .into_iter()
            .map(|name| {
                let (config, stop, retried) = (config(&url, name), stop.clone(), retried.clone());
                s.spawn(move || {
                    let events = move |e: WorkerEvent| {
                        if matches!(e, WorkerEvent::Retrying(..)) {
                            retried.store(true, Ordering::Relaxed);
                        }
                    };
                    run_worker(&config, &stop, &events).unwrap()
                })
            })
            .collect();
        // Mid-run, the database goes down (as a crash) and comes back.
        let deadline = Instant::now() + Duration::from_secs(60);
        while store.cluster_status("slow").map(|s| s.map_or(0, |s| s.done)).unwrap_or(0) < 300 {
            assert!(Instant::now() < deadline, "no progress");
            std::thread::sleep(Duration::from_millis(20));
        }
        server.stop();
        std::thread::sleep(Duration::from_millis(1500));
        server.start_again();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = store.cluster_status("slow") {
                if status.state != "Running" {
                    assert_eq!(status.state, "Completed");
                    break;
                }
            }
            assert!(Instant::now() < deadline, "the run did not complete after the restart");
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        let items: u64 = workers.into_iter().map(|w| w.join().unwrap().items).sum();
        assert_eq!(items, total, "the workers recorded each item once between them");
    });
    assert!(retried.load(Ordering::Relaxed), "the workers saw the database go away");
    let results = recorded(&store, "slow", total);
    assert!(results.iter().enumerate().all(|(i, r)| r["index"] == json!(i) && r["result"] == json!(i * 2)));
    let workers = store.worker_list().unwrap();
    assert_eq!(workers.len(), 2);
    assert!(workers.iter().all(|w| w["state"] == "stopped"), "{workers:?}");
}

/// Sets the flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
