//! JobManager: naming, duplicates, every state, waits, stops, removal, the
//! concurrency limit, observers, and the original's Test-RunspaceJobManager.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runspace::{JobError, JobEvent, JobManager, JobSpec, JobState, Script, SessionState};
use serde_json::json;

const LONG: Duration = Duration::from_secs(20);

fn script(source: &str) -> Script {
    Script::new(source).unwrap()
}

fn states(info: &runspace::JobInfo) -> Vec<JobState> {
    info.history.iter().map(|(s, _)| *s).collect()
}

#[test]
fn auto_names_look_like_the_originals_and_are_unique() {
    let jobs = JobManager::new(5).unwrap();
    let mut names = std::collections::HashSet::new();
    for _ in 0..200 {
        let name = jobs.start(JobSpec::new(&script("return 1"))).unwrap();
        assert!(name.starts_with("Job_") && name.len() == 12, "{name}");
        assert!(name[4..].chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{name}");
        assert!(names.insert(name));
    }
    assert_eq!(jobs.start(JobSpec::new(&script("return 1")).name("mine")).unwrap(), "mine");
    for bad in ["", "../x", "a b", "-lead", &"x".repeat(101)] {
        let e = jobs.start(JobSpec::new(&script("return 1")).name(bad)).unwrap_err();
        assert!(matches!(e, JobError::InvalidName(_)), "{bad}: {e}");
    }
    jobs.wait_all(LONG).unwrap();
}

#[test]
fn duplicate_names_are_refused_until_removed() {
    let jobs = JobManager::new(2).unwrap();
    jobs.start(JobSpec::new(&script("return 1")).name("dup")).unwrap();
    let e = jobs.start(JobSpec::new(&script("return 2")).name("dup")).unwrap_err();
    assert_eq!(e, JobError::Duplicate("dup".into()));
    assert!(e.to_string().contains("already exists"), "{e}");
    jobs.remove("dup").unwrap();
    jobs.start(JobSpec::new(&script("return 2")).name("dup")).unwrap();
    assert_eq!(jobs.wait("dup", LONG).unwrap().result(), json!(2));
}

#[test]
fn completed_job_has_result_times_and_history() {
    let jobs = JobManager::new(2).unwrap();
    let spec = JobSpec::new(&script("emit('a') write_warning('w') return n * 2")).name("ok").param("n", json!(21));
    jobs.start(spec).unwrap();
    let info = jobs.wait("ok", LONG).unwrap();
    assert_eq!(info.state, JobState::Completed);
    assert_eq!(info.output, vec![json!("a"), json!(42)]);
    assert_eq!(info.streams.warning, vec!["w".to_string()]);
    assert_eq!(states(&info), vec![JobState::Queued, JobState::Running, JobState::Completed]);
    assert!(info.start.unwrap() >= info.submitted && info.end.unwrap() >= info.start.unwrap());
    assert_eq!((info.progress.done, info.progress.total), (1, 1));
    assert!(info.error.is_none());
}

#[test]
fn errors_failures_and_timeouts_map_to_states() {
    let jobs = JobManager::new(3).unwrap();
    jobs.start(JobSpec::new(&script("write_error('soft') return 1")).name("cwe")).unwrap();
    jobs.start(JobSpec::new(&script("error('hard')")).name("failed")).unwrap();
    jobs.start(JobSpec::new(&script("while true do end")).name("slow").timeout(Duration::from_millis(50))).unwrap();
    let cwe = jobs.wait("cwe", LONG).unwrap();
    assert_eq!(cwe.state, JobState::CompletedWithErrors);
    assert_eq!(cwe.result(), json!(1));
    let failed = jobs.wait("failed", LONG).unwrap();
    assert_eq!(failed.state, JobState::Failed);
    assert!(failed.error.as_deref().unwrap().contains("hard"), "{failed:?}");
    let slow = jobs.wait("slow", LONG).unwrap();
    assert_eq!(slow.state, JobState::Failed);
    assert!(slow.error.as_deref().unwrap().contains("timed out"), "{slow:?}");
    assert_eq!(states(&slow), vec![JobState::Queued, JobState::Running, JobState::Failed]);
}

#[test]
fn a_job_that_cannot_load_its_session_fails() {
    let jobs = JobManager::new(1).unwrap();
    let session = SessionState::new().module("broken", "error('nope')").unwrap();
    jobs.start(JobSpec::new(&script("return 1")).name("bad").session(session)).unwrap();
    let info = jobs.wait("bad", LONG).unwrap();
    assert_eq!(info.state, JobState::Failed);
    assert!(info.error.unwrap().contains("broken"));
}

#[test]
fn runs_over_inputs_report_progress_and_item_errors() {
    let jobs = JobManager::new(2).unwrap();
    let spec = JobSpec::new(&script("if _ == 3 then error('three') end return _ * k")).param("k", json!(10));
    let name = jobs.start(spec.clone().range(1, 5).throttle(2)).unwrap();
    let info = jobs.wait(&name, LONG).unwrap();
    assert!(info.parallel);
    assert_eq!(info.state, JobState::CompletedWithErrors);
    assert_eq!((info.progress.done, info.progress.total), (5, 5));
    assert_eq!(info.output, vec![json!(10), json!(20), json!(null), json!(40), json!(50)]);
    assert!(info.streams.error[0].starts_with("item 2: ") && info.streams.error[0].contains("three"));
    let name = jobs.start(JobSpec::new(&script("return _")).inputs(vec![json!("a"), json!("b")])).unwrap();
    let info = jobs.wait(&name, LONG).unwrap();
    assert_eq!((info.state, info.output), (JobState::Completed, vec![json!("a"), json!("b")]));
    let name = jobs.start(JobSpec::new(&script("return _")).range(3, 1)).unwrap();
    assert_eq!(jobs.wait(&name, LONG).unwrap().output, vec![json!(3), json!(2), json!(1)]);
}

#[test]
fn wait_times_out_with_an_error_that_says_so() {
    let jobs = JobManager::new(1).unwrap();
    jobs.start(JobSpec::new(&script("sleep(3600)")).name("sleeper")).unwrap();
    let t = Instant::now();
    let e = jobs.wait("sleeper", Duration::from_millis(100)).unwrap_err();
    let waited = t.elapsed();
    assert!(waited >= Duration::from_millis(100) && waited < Duration::from_secs(2), "{waited:?}");
    assert!(matches!(e, JobError::Timeout { .. }));
    assert!(e.to_string().contains("timed out") && e.to_string().contains("sleeper"), "{e}");
    let e = jobs.wait_all(Duration::from_millis(50)).unwrap_err();
    assert!(e.to_string().contains("1 job(s) still unfinished: sleeper"), "{e}");
    assert_eq!(jobs.wait("nope", LONG).unwrap_err(), JobError::NotFound("nope".into()));
}

#[test]
fn stop_interrupts_endless_loops_and_long_sleeps_promptly() {
    let jobs = JobManager::new(4).unwrap();
    jobs.start(JobSpec::new(&script("while true do end")).name("spin")).unwrap();
    jobs.start(JobSpec::new(&script("sleep(3600)")).name("sleep")).unwrap();
    jobs.start(JobSpec::new(&script("local n = 0 while true do n = n + 1 end")).name("each").range(1, 100)).unwrap();
    for name in ["spin", "sleep", "each"] {
        while jobs.get(name).unwrap().state != JobState::Running {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    std::thread::sleep(Duration::from_millis(30));
    for name in ["spin", "sleep", "each"] {
        let t = Instant::now();
        let info = jobs.stop(name).unwrap();
        assert!(t.elapsed() < Duration::from_secs(5), "{name}: {:?}", t.elapsed());
        assert_eq!(info.state, JobState::Stopped, "{name}");
        assert_eq!(states(&info), vec![JobState::Queued, JobState::Running, JobState::Stopped]);
    }
    assert_eq!(jobs.stop("spin").unwrap().state, JobState::Stopped, "stopping twice is harmless");
    // The pool's runspaces survive a stop.
    jobs.start(JobSpec::new(&script("return 7")).name("after")).unwrap();
    assert_eq!(jobs.wait("after", LONG).unwrap().result(), json!(7));
}

#[test]
fn remove_stops_a_running_job_first() {
    let jobs = JobManager::new(2).unwrap();
    jobs.start(JobSpec::new(&script("while true do end")).name("busy")).unwrap();
    while jobs.get("busy").unwrap().state != JobState::Running {
        std::thread::sleep(Duration::from_millis(2));
    }
    let t = Instant::now();
    let last = jobs.remove("busy").unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(last.state, JobState::Stopped);
    assert_eq!(jobs.get("busy").unwrap_err(), JobError::NotFound("busy".into()));
    assert!(jobs.list().is_empty());
    assert!(matches!(jobs.remove("busy"), Err(JobError::NotFound(_))));
}

#[test]
fn six_jobs_with_a_limit_of_five_leave_one_queued() {
    let jobs = JobManager::new(5).unwrap();
    let names: Vec<String> =
        (0..6).map(|i| jobs.start(JobSpec::new(&script("sleep(3600)")).name(format!("j{i}"))).unwrap()).collect();
    let deadline = Instant::now() + LONG;
    while jobs.running().len() < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(jobs.running().len(), 5);
    assert_eq!(jobs.get("j5").unwrap().state, JobState::Queued);
    assert_eq!(jobs.list().iter().filter(|j| j.state == JobState::Queued).count(), 1);
    // Each running job gets a runspace of its own, not a place in the pool's channel.
    let deadline = Instant::now() + LONG;
    while jobs.open_runspaces() < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(jobs.open_runspaces(), 5);
    // A freed slot goes to the queued job.
    jobs.stop("j0").unwrap();
    let deadline = Instant::now() + LONG;
    while jobs.get("j5").unwrap().state != JobState::Running && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(jobs.get("j5").unwrap().state, JobState::Running);
    // Stopping a queued job: it never runs.
    jobs.start(JobSpec::new(&script("return 1")).name("late")).unwrap();
    let info = jobs.stop("late").unwrap();
    assert_eq!(states(&info), vec![JobState::Queued, JobState::Stopped]);
    assert!(info.start.is_none());
    for name in &names[1..] {
        jobs.stop(name).unwrap();
    }
    assert_eq!(jobs.finished().len(), 7);
}

#[test]
fn observer_sees_events_in_order_before_waiters() {
    let events = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = events.clone();
    let jobs = JobManager::builder()
        .max_concurrent(2)
        .observer(move |e| {
            let text = match e {
                JobEvent::Started { name, .. } => format!("start {name}"),
                JobEvent::Item { name, progress, .. } => format!("item {name} {}/{}", progress.done, progress.total),
                JobEvent::Finished(info) => format!("end {} {}", info.name, info.state),
                _ => "other".into(),
            };
            seen.lock().unwrap().push(text);
        })
        .build()
        .unwrap();
    jobs.start(JobSpec::new(&script("return _")).name("p").range(1, 2).throttle(1)).unwrap();
    jobs.wait("p", LONG).unwrap();
    assert_eq!(*events.lock().unwrap(), vec!["start p", "item p 1/2", "item p 2/2", "end p Completed"]);
}

/// The original's Test-RunspaceJobManager, with file and process access
/// replaced by pure computation (capabilities are another issue's work).
#[test]
fn test_runspace_job_manager_scenario() {
    let jobs = JobManager::new(5).unwrap();
    let long = jobs
        .start(
            JobSpec::new(&script("sleep(Seconds) return 'Job completed after ' .. Seconds .. ' seconds'"))
                .param("Seconds", json!(0.3))
                .name("LongRunningJob"),
        )
        .unwrap();
    let procs = jobs
        .start(
            JobSpec::new(&script(
                "local out = {} for pid = 1, 400 do local cpu = (pid * 37) % 250 \
                 if cpu > 100 then table.insert(out, {Name = 'proc' .. pid, CPU = cpu}) end end return out",
            ))
            .name("ProcessJob"),
        )
        .unwrap();
    let files = jobs
        .start(
            JobSpec::new(&script(
                "local sum = 0 for i = 1, Count do sum = sum + i * 512 end return {Count = Count, Sum = sum}",
            ))
            .param("Count", json!(10000))
            .name("FileSystemJob"),
        )
        .unwrap();
    assert_eq!(jobs.list().len(), 3);
    assert_eq!(jobs.running().len(), 3, "all three start at once");
    jobs.wait(&procs, Duration::from_secs(30)).unwrap();
    let process_result = jobs.get(&procs).unwrap();
    assert_eq!(process_result.state, JobState::Completed);
    assert!(process_result.result().as_array().unwrap().len() > 100);
    jobs.wait_all(Duration::from_secs(60)).unwrap();
    let finished = jobs.finished();
    assert_eq!(finished.len(), 3);
    for job in &finished {
        assert_eq!(job.state, JobState::Completed, "{}", job.name);
        assert!(job.duration().is_some());
    }
    assert_eq!(jobs.get(&long).unwrap().result(), json!("Job completed after 0.3 seconds"));
    assert!(jobs.get(&long).unwrap().duration().unwrap() >= Duration::from_millis(300));
    assert_eq!(jobs.get(&files).unwrap().result()["Sum"], json!(512_i64 * 10000 * 10001 / 2));
}

#[test]
fn a_manager_that_does_not_keep_items_counts_them_and_caps_streams() {
    let seen = Arc::new(Mutex::new(0u64));
    let counter = seen.clone();
    let jobs = JobManager::builder()
        .keep_items(false)
        .observer(move |e| {
            if let JobEvent::Item { .. } = e {
                *counter.lock().unwrap() += 1;
            }
        })
        .build()
        .unwrap();
    let source = "write_warning('w') if _ == 1 then error('x') elseif _ == 2 then write_error('e') end return _";
    let name = jobs.start(JobSpec::new(&script(source)).range(1, 1500).throttle(2)).unwrap();
    let info = jobs.wait(&name, LONG).unwrap();
    assert_eq!(*seen.lock().unwrap(), 1500, "every item still reaches the observer");
    assert!(info.items.is_empty() && info.output.is_empty());
    assert_eq!(info.progress.done, 1500);
    assert_eq!(info.state, JobState::CompletedWithErrors);
    assert_eq!(info.error.as_deref(), Some("1 of 1500 items did not complete; 1 completed with errors"));
    assert_eq!(info.streams.warning.len(), 1000, "streams keep their first 1,000 records");
}
