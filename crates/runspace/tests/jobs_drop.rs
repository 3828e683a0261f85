//! Dropping a JobManager stops every job and frees every runspace thread.
//! Alone in its own test binary so that the thread count is not disturbed
//! by other tests.

use std::time::{Duration, Instant};

use runspace::{JobEvent, JobManager, JobSpec, JobState, Script};

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0)
}

#[test]
fn drop_stops_every_job_and_joins_every_thread() {
    let before = threads();
    let (tx, rx) = std::sync::mpsc::channel();
    let jobs = JobManager::builder()
        .max_concurrent(3)
        .observer(move |e| {
            if let JobEvent::Finished(info) = e {
                let _ = tx.send((info.name.clone(), info.state));
            }
        })
        .build()
        .unwrap();
    jobs.start(JobSpec::new(&Script::new("while true do end").unwrap()).name("spin")).unwrap();
    jobs.start(JobSpec::new(&Script::new("sleep(3600)").unwrap()).name("sleep")).unwrap();
    jobs.start(JobSpec::new(&Script::new("sleep(3600)").unwrap()).name("each").range(1, 50).throttle(2)).unwrap();
    jobs.start(JobSpec::new(&Script::new("return 1").unwrap()).name("queued")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while jobs.running().len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(jobs.get("queued").unwrap().state, JobState::Queued);
    assert!(threads() > before);
    let t = Instant::now();
    drop(jobs);
    assert!(t.elapsed() < Duration::from_secs(5), "drop took {:?}", t.elapsed());
    let mut ended: Vec<_> = rx.try_iter().collect();
    ended.sort_by(|a, b| a.0.cmp(&b.0));
    let expected: Vec<_> =
        ["each", "queued", "sleep", "spin"].iter().map(|n| (n.to_string(), JobState::Stopped)).collect();
    assert_eq!(ended, expected);
    // Every worker, runner and watchdog thread is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while threads() > before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(threads(), before);
}
