//! The web dashboard of `rsp serve`: its locks over plain HTTP (no session,
//! no CSRF token, read-only mode), and its pages in a real browser
//! (Debian's chromium through chromedriver): log in, watch a job reach the
//! end over Server-Sent Events, stop one from its page, search and filter.
//! `browser_screenshots` takes the screenshots of docs/dashboard.md when
//! `RSP_DASHBOARD_SCREENSHOTS` names a directory (and does nothing otherwise).

mod dashboard_common;
mod jobs_common;

use std::path::PathBuf;
use std::time::Duration;

use dashboard_common::{agent, answer, browser, Browser, WebSession};
use fantoccini::key::Key;
use jobs_common::Server;
use serde_json::{json, Value};

fn server(extra: &[&str]) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), extra);
    (dir, server)
}

/// Starts a job through the API; returns its name.
fn submit(server: &Server, body: Value) -> String {
    let (status, answer) = server.call("POST", "/v1/jobs", Some(&body));
    assert_eq!(status, 201, "{answer}");
    answer["name"].as_str().unwrap().to_string()
}

/// A job that runs until stopped (each item sleeps; a million of them).
fn endless(server: &Server, name: &str) -> String {
    submit(
        server,
        json!({"name": name, "script": "sleep(0.05) return _", "range": {"start": 1, "end": 1000000}, "throttle": 2}),
    )
}

#[test]
fn without_a_session_every_page_and_the_event_streams_are_refused() {
    let (_dir, server) = server(&[]);
    let name = submit(&server, json!({"name": "done", "script": "return 1"}));
    server.until(&name, |j| j["state"] == "Completed");
    let paths =
        ["/", "/jobs", "/jobs?state=Failed", "/jobs/done", "/jobs/done/streams/error", "/jobs/done/results.jsonl"];
    for path in paths {
        // A browser asking for a page is sent to the login form...
        let a = answer(agent().get(format!("{}{path}", server.base)).header("Accept", "text/html").call());
        assert_eq!((a.status, a.location.as_deref()), (303, Some("/login")), "{path}");
        // ...anything else is refused.
        let a = answer(agent().get(format!("{}{path}", server.base)).call());
        assert_eq!(a.status, 401, "{path}: {}", a.body);
    }
    for path in ["/events", "/jobs/done/events"] {
        let a = answer(agent().get(format!("{}{path}", server.base)).header("Accept", "text/event-stream").call());
        assert_eq!(a.status, 401, "{path}");
    }
    // The API's bearer token is no session, and a made-up cookie is none either.
    let bearer = format!("Bearer {}", server.token);
    let a = answer(agent().get(format!("{}/jobs", server.base)).header("Authorization", &bearer).call());
    assert_eq!(a.status, 401);
    let a = answer(agent().get(format!("{}/events", server.base)).header("Cookie", "rsp_session=0000").call());
    assert_eq!(a.status, 401);
    // Actions too, and the job is untouched.
    let a = answer(agent().post(format!("{}/jobs/done/remove", server.base)).send(""));
    assert_eq!(a.status, 401);
    assert_eq!(server.call("GET", "/v1/jobs/done", None).0, 200);
    // A wrong token at the form opens nothing; a token in the URL is not read.
    let a = answer(
        agent()
            .post(format!("{}/login", server.base))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send("token=0123"),
    );
    assert_eq!((a.status, a.set_cookie), (401, None));
    let a = answer(agent().get(format!("{}/login?token={}", server.base, server.token)).call());
    assert_eq!((a.status, a.set_cookie), (200, None));
    // The login form and the static files are open.
    assert_eq!(answer(agent().get(format!("{}/static/app.js", server.base)).call()).status, 200);
}

#[test]
fn the_session_cookie_is_http_only_and_same_site_strict_and_logout_ends_it() {
    let (_dir, server) = server(&[]);
    let a = answer(
        agent()
            .post(format!("{}/login", server.base))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(format!("token={}", server.token)),
    );
    let cookie = a.set_cookie.unwrap();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(!cookie.contains(&server.token), "the cookie is not the token");
    let web = WebSession::login(&server.base, &server.token);
    assert_eq!(web.get("/jobs").status, 200);
    // Logging out needs the CSRF token like any other change.
    assert_eq!(web.post("/logout", None, None).status, 403);
    assert_eq!(web.get("/jobs").status, 200);
    assert_eq!(web.post("/logout", Some(&web.csrf), None).status, 303);
    assert_eq!(web.get("/jobs").status, 401, "the session is gone");
}

#[test]
fn a_post_without_the_csrf_token_is_refused() {
    let (_dir, server) = server(&[]);
    let name = endless(&server, "busy");
    let web = WebSession::login(&server.base, &server.token);
    let stop = format!("/jobs/{name}/stop");
    assert_eq!(web.post(&stop, None, None).status, 403, "no token");
    assert_eq!(web.post(&stop, Some(&"0".repeat(64)), None).status, 403, "a wrong token");
    let origin = Some("http://evil.example");
    assert_eq!(web.post(&stop, Some(&web.csrf), origin).status, 403, "the right token from another site");
    let other = WebSession::login(&server.base, &server.token);
    assert_eq!(web.post(&stop, Some(&other.csrf), None).status, 403, "another session's token");
    assert_eq!(server.call("GET", &format!("/v1/jobs/{name}"), None).1["state"], "Running", "nothing was stopped");
    let a = web.post(&stop, Some(&web.csrf), Some(&server.base));
    assert!(a.status == 200 || a.status == 202, "{} {}", a.status, a.body);
    server.until(&name, |j| j["state"] == "Stopped");
}

#[test]
fn read_only_mode_hides_and_refuses_actions() {
    let (_dir, server) = server(&["--read-only-ui"]);
    let name = endless(&server, "watched");
    let web = WebSession::login(&server.base, &server.token);
    let page = web.get(&format!("/jobs/{name}")).body;
    assert!(page.contains("read-only") && !page.contains("data-action"), "no action is offered");
    for action in ["stop", "remove", "restart", "rerun-failed"] {
        let a = web.post(&format!("/jobs/{name}/{action}"), Some(&web.csrf), None);
        assert_eq!(a.status, 403, "{action}: {}", a.body);
    }
    // Not stopped: it goes on to Running (a loaded machine may still have it
    // Queued here; a stop would have made it Stopped for good).
    server.until(&name, |j| j["state"] == "Running");
    // The API itself is not read-only: the token holder may still act.
    let (status, _) = server.call("POST", &format!("/v1/jobs/{name}/stop"), None);
    assert!(status == 200 || status == 202, "{status}");
}

#[test]
fn names_and_values_from_jobs_are_shown_as_text() {
    let (_dir, server) = server(&[]);
    let hostile = "<img src=x onerror=alert(1)>";
    let body = json!({"name": "x1", "script": "return _", "script_name": hostile, "inputs": [hostile], "env": {"SECRET": "hunter2"}});
    let name = submit(&server, body);
    server.until(&name, |j| j["state"] == "Completed");
    let web = WebSession::login(&server.base, &server.token);
    for page in [web.get("/jobs").body, web.get("/jobs/x1").body] {
        assert!(!page.contains(hostile), "raw markup in the page");
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"), "shown as text");
    }
    let page = web.get("/jobs/x1").body;
    assert!(page.contains("SECRET") && !page.contains("hunter2"), "environment names only, never values");
    let csp = answer(agent().get(format!("{}/jobs/x1", server.base)).header("Cookie", &web.cookie).call());
    assert!(csp.content_type.starts_with("text/html"));
}

#[test]
fn the_list_is_walked_by_key_without_gaps_or_repeats() {
    let (_dir, server) = server(&["--max-jobs", "8"]);
    for i in 0..120 {
        submit(&server, json!({"name": format!("job-{i:03}"), "script": "return 1"}));
    }
    let web = WebSession::login(&server.base, &server.token);
    let names = |page: &str| -> Vec<String> {
        page.split("<tr data-job=\"").skip(1).map(|s| s[..s.find('"').unwrap()].to_string()).collect()
    };
    let next = |page: &str, rel: &str| -> Option<String> {
        let at = page.find(&format!("rel=\"{rel}\""))?;
        let start = page[..at].rfind("href=\"")? + 6;
        Some(page[start..at].split('"').next()?.replace("&amp;", "&"))
    };
    let mut seen = Vec::new();
    let mut path = "/jobs".to_string();
    let mut pages = Vec::new();
    loop {
        let page = web.get(&path).body;
        seen.extend(names(&page));
        pages.push(path.clone());
        match next(&page, "next") {
            Some(p) => path = p,
            None => break,
        }
    }
    assert_eq!(pages.len(), 3, "{pages:?}");
    let expected: Vec<String> = (0..120).rev().map(|i| format!("job-{i:03}")).collect();
    assert_eq!(seen, expected, "newest first, each once");
    assert!(pages.iter().all(|p| !p.contains("offset")), "{pages:?}");
    // Back up from the last page: the newer page is the middle one.
    let last = web.get(&pages[2]).body;
    let back = next(&last, "prev").expect("a newer page");
    assert_eq!(names(&web.get(&back).body), expected[50..100].to_vec());
    // Search by name and by script name, with a state tab.
    let found = names(&web.get("/jobs?q=JOB-11").body);
    assert_eq!(
        found,
        (110..120).rev().map(|i| format!("job-{i:03}")).collect::<Vec<_>>(),
        "case-insensitive name search"
    );
    assert_eq!(names(&web.get("/jobs?q=job-11&state=Failed").body), Vec::<String>::new());
}

// ---- in a real browser -------------------------------------------------------

/// Where screenshots go when they are wanted.
fn screenshots() -> Option<PathBuf> {
    std::env::var_os("RSP_DASHBOARD_SCREENSHOTS").map(PathBuf::from)
}

fn log_in(b: &Browser, server: &Server) {
    b.goto(&format!("{}/jobs", server.base));
    b.until("the login form", "return location.pathname === '/login'", Duration::from_secs(10));
    b.type_into("#token", &server.token);
    b.click(".login button[type=submit]");
    b.until(
        "the overview",
        "return location.pathname === '/' && document.querySelector('h1').innerText",
        Duration::from_secs(10),
    );
}

#[test]
fn browser_log_in_and_watch_a_2000_item_job_reach_the_end_over_sse() {
    let (_dir, server) = server(&[]);
    let Some(b) = browser(1280, 800) else { return };
    let done = submit(&server, json!({"name": "earlier", "script": "return _ * 2", "range": {"start": 1, "end": 10}}));
    server.until(&done, |j| j["state"] == "Completed");
    log_in(&b, &server);
    b.goto(&format!("{}/jobs", server.base));
    assert!(b.text("#jobs").contains("earlier"), "the job list shows the job");
    // Keyboard: the first Tab reaches the skip link.
    b.keys(&[Key::Tab]);
    assert_eq!(b.js("return document.activeElement.className", json!([])), "skip");

    let name = submit(
        &server,
        json!({"name": "big", "script": "sleep(0.008) return _", "range": {"start": 1, "end": 2000}, "throttle": 4}),
    );
    b.goto(&format!("{}/jobs/big", server.base));
    b.js("window.__sameLoad = 'yes'", json!([]));
    let first = b.text("#done");
    b.until("the SSE stream to open", "return window.rspDashboard.open", Duration::from_secs(10));
    b.until(
        "2000/2000 on the page",
        "return document.getElementById('done').innerText === '2000/2000' && window.__sameLoad === 'yes'",
        Duration::from_secs(60),
    );
    assert_ne!(first, "2000/2000", "the page was loaded before the job ended (else SSE proved nothing)");
    b.until(
        "the final state",
        "return document.querySelector('main .sub [data-state]').innerText === 'Completed'",
        Duration::from_secs(10),
    );
    assert!(b.js("return window.rspDashboard.events", json!([])).as_u64().unwrap() >= 2);
    assert_eq!(b.text("#refresh-results"), "Refresh: the job has ended", "the results table says it is behind");
    assert_eq!(server.call("GET", &format!("/v1/jobs/{name}"), None).1["progress"]["done"], 2000);

    // Hidden tab: the stream is closed; visible again: reopened.
    b.js(
        "Object.defineProperty(document, 'hidden', {value: true, configurable: true}); \
         document.dispatchEvent(new Event('visibilitychange'))",
        json!([]),
    );
    assert_eq!(b.js("return [window.rspDashboard.open, window.rspDashboard.paused]", json!([])), json!([false, true]));
    b.js(
        "Object.defineProperty(document, 'hidden', {value: false, configurable: true}); \
         document.dispatchEvent(new Event('visibilitychange'))",
        json!([]),
    );
    b.until("the stream to reopen", "return window.rspDashboard.open", Duration::from_secs(10));
}

#[test]
fn browser_stop_a_running_job_from_its_page() {
    let (_dir, server) = server(&[]);
    let Some(b) = browser(1280, 800) else { return };
    let name = endless(&server, "forever");
    log_in(&b, &server);
    b.goto(&format!("{}/jobs/{name}", server.base));
    b.until("the stream", "return window.rspDashboard.open", Duration::from_secs(10));
    b.click("button[data-action=stop]");
    b.until("the confirmation", "return document.getElementById('confirm').open", Duration::from_secs(5));
    b.click("#confirm-ok");
    b.until(
        "the Stopped state, live",
        "return document.querySelector('main .sub [data-state]').innerText === 'Stopped'",
        Duration::from_secs(20),
    );
    assert_eq!(server.call("GET", &format!("/v1/jobs/{name}"), None).1["state"], "Stopped");
    // The stop button is gone, restart is offered.
    b.until("the actions to follow the state", "return document.querySelector('form[action$=\"/stop\"]').hidden && !document.querySelector('form[action$=\"/restart\"]').hidden", Duration::from_secs(5));
}

#[test]
fn browser_search_and_a_state_tab_filter_the_list() {
    let (_dir, server) = server(&[]);
    let Some(b) = browser(390, 844) else { return };
    for (name, script_name, script) in [
        ("alpha-ok", "backup", "return 1"),
        ("alpha-bad", "backup", "error('no disk')"),
        ("beta-ok", "report", "return 2"),
    ] {
        submit(&server, json!({"name": name, "script": script, "script_name": script_name}));
        server.until(name, |j| j["state"] != "Queued" && j["state"] != "Running");
    }
    log_in(&b, &server);
    b.goto(&format!("{}/jobs", server.base));
    let rows = |b: &Browser| {
        b.js("return Array.from(document.querySelectorAll('#jobs tr[data-job]'), r => r.dataset.job)", json!([]))
    };
    assert_eq!(rows(&b), json!(["beta-ok", "alpha-bad", "alpha-ok"]));
    b.type_into("#q", "alpha");
    b.keys(&[Key::Enter]);
    b.until("the search", "return location.search.includes('q=alpha')", Duration::from_secs(10));
    assert_eq!(rows(&b), json!(["alpha-bad", "alpha-ok"]));
    b.click("a[data-tab=Failed]");
    b.until("the tab", "return location.search.includes('state=Failed')", Duration::from_secs(10));
    assert_eq!(rows(&b), json!(["alpha-bad"]), "the tab keeps the search");
    assert_eq!(b.text("a[data-tab=Failed] .n"), "1");
    // By script name.
    b.goto(&format!("{}/jobs?q=REPORT", server.base));
    assert_eq!(rows(&b), json!(["beta-ok"]));
}

#[test]
fn browser_screenshots() {
    let Some(dir) = screenshots() else { return };
    let (_dir, server) = server(&[]);
    let Some(b) = browser(1280, 800) else { return };
    submit(
        &server,
        json!({"name": "nightly-backup", "script": "return _", "script_name": "backup.luau", "range": {"start": 1, "end": 500}}),
    );
    submit(
        &server,
        json!({"name": "disk-audit", "script_name": "audit.luau", "range": {"start": 1, "end": 300},
               "script": "if _ % 7 == 0 then error('disk ' .. _ .. ' unreadable') end write_warning('slow disk ' .. _) return {disk = _, ok = true}"}),
    );
    for name in ["nightly-backup", "disk-audit"] {
        server.until(name, |j| j["state"] != "Queued" && j["state"] != "Running");
    }
    submit(
        &server,
        json!({"name": "host-inventory", "script_name": "inventory.luau", "throttle": 4, "range": {"start": 1, "end": 40000},
               "script": "sleep(0.002 + (_ % 5) * 0.001) return {host = 'web-' .. _, up = true}"}),
    );
    endless(&server, "log-rotate");
    log_in(&b, &server);
    b.goto(&format!("{}/jobs/host-inventory", server.base));
    // Let the chart gather some points.
    b.until(
        "a chart with points",
        "return document.querySelectorAll('#rate-chart polyline').length && window.rspDashboard.events > 12",
        Duration::from_secs(30),
    );
    b.screenshot(&dir.join("dashboard-job.png"));
    b.goto(&format!("{}/", server.base));
    b.until(
        "jobs in flight",
        "return document.querySelectorAll('#active tr[data-job]').length >= 2",
        Duration::from_secs(10),
    );
    b.until("a summary", "return window.rspDashboard.events > 2", Duration::from_secs(10));
    b.screenshot(&dir.join("dashboard-overview.png"));
    b.goto(&format!("{}/jobs", server.base));
    b.screenshot(&dir.join("dashboard-jobs.png"));
    b.goto(&format!("{}/jobs/disk-audit?status=Failed", server.base));
    b.js("document.getElementById('res-h').scrollIntoView()", json!([]));
    b.screenshot(&dir.join("dashboard-results.png"));
    b.color_scheme("dark");
    b.goto(&format!("{}/jobs/host-inventory", server.base));
    b.until("a few events", "return window.rspDashboard.events > 4", Duration::from_secs(10));
    b.screenshot(&dir.join("dashboard-job-dark.png"));
    b.color_scheme("light");
    b.goto(&format!("{}/jobs/log-rotate", server.base));
    b.click("button[data-action=stop]");
    b.until("the confirmation", "return document.getElementById('confirm').open", Duration::from_secs(5));
    b.screenshot(&dir.join("dashboard-confirm.png"));
    b.size(390, 844);
    b.goto(&format!("{}/jobs", server.base));
    b.screenshot(&dir.join("dashboard-jobs-phone.png"));
    b.goto(&format!("{}/jobs/host-inventory", server.base));
    b.until("a few events", "return window.rspDashboard.events > 2", Duration::from_secs(10));
    b.screenshot(&dir.join("dashboard-job-phone.png"));
}

#[test]
fn failed_items_are_counted_as_they_finish_and_filtered_by_status() {
    let (_dir, server) = server(&[]);
    let script = "if _ % 4 == 0 then error('bad ' .. _) end return _";
    let name = submit(&server, json!({"name": "mixed", "script": script, "range": {"start": 1, "end": 40}}));
    server.until(&name, |j| j["state"] != "Queued" && j["state"] != "Running");
    let web = WebSession::login(&server.base, &server.token);
    let list = web.get("/jobs").body;
    let row = &list[list.find("<tr data-job=\"mixed\"").unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.ends_with("<td class=\"bad\">10</td>"), "ten failures: {row}");
    let failed = web.get("/jobs/mixed?status=Failed").body;
    assert_eq!(failed.matches("s-Failed\" data-state>Failed<").count(), 10, "only the failed items");
    assert!(failed.contains("bad 4") && !failed.contains("s-Completed\" data-state>Completed<"));
    // The download has every record, a line each.
    let all = web.get("/jobs/mixed/results.jsonl").body;
    assert_eq!(all.lines().count(), 40);
    assert!(all.lines().all(|l| serde_json::from_str::<Value>(l).is_ok()));
}

#[test]
fn actions_go_through_the_api_from_the_script_and_from_a_plain_form() {
    let (_dir, server) = server(&[]);
    let name = submit(&server, json!({"name": "again", "script": "return 1"}));
    server.until(&name, |j| j["state"] == "Completed");
    let web = WebSession::login(&server.base, &server.token);
    // The script gets the API's answer.
    let a = web.post("/jobs/again/restart", Some(&web.csrf), None);
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(serde_json::from_str::<Value>(&a.body).unwrap()["name"], "again-2");
    // A plain form is sent on to the new job's page.
    let a = web.post_form("/jobs/again/restart");
    assert_eq!((a.status, a.location.as_deref()), (303, Some("/jobs/again-3")));
    // The API's refusals come through as they are.
    let a = web.post("/jobs/nothing-here/stop", Some(&web.csrf), None);
    assert_eq!(a.status, 404, "{}", a.body);
    let a = web.post("/jobs/again/explode", Some(&web.csrf), None);
    assert_eq!(a.status, 404);
    // Remove, then the job is gone from the API and its page.
    let a = web.post_form("/jobs/again/remove");
    assert_eq!((a.status, a.location.as_deref()), (303, Some("/jobs")));
    assert_eq!(server.call("GET", "/v1/jobs/again", None).0, 404);
    assert_eq!(web.get("/jobs/again").status, 404);
}

#[test]
fn open_event_streams_do_not_hold_up_a_shutdown() {
    use std::io::{Read, Write};
    let (_dir, mut server) = server(&[]);
    let web = WebSession::login(&server.base, &server.token);
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut streams = Vec::new();
    for path in ["/events", "/jobs/none/events"] {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: {}\r\nAccept: text/event-stream\r\n\r\n", web.cookie)
            .unwrap();
        let mut head = [0u8; 512];
        let n = s.read(&mut head).unwrap();
        assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"), "{path}");
        streams.push(s);
    }
    let started = std::time::Instant::now();
    assert_eq!(server.terminate(Duration::from_secs(15)), Some(0));
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    for mut s in streams {
        // The stream ends (EOF), it is not left hanging.
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
    }
}

#[test]
fn browser_markup_arriving_over_sse_is_shown_as_text() {
    let (_dir, server) = server(&[]);
    let Some(b) = browser(1280, 800) else { return };
    log_in(&b, &server);
    // The job fails after the page has loaded: its error arrives only
    // through the event stream, and is markup that would run if inserted as HTML.
    let hostile = "<img src=x id=pwned onerror=\"document.title='pwned'\"><b id=bold>loud</b>";
    let script = format!("sleep(1.5) error({})", serde_json::to_string(hostile).unwrap());
    let name = submit(&server, json!({"name": "sly", "script": script}));
    b.goto(&format!("{}/jobs/{name}", server.base));
    b.until("the stream", "return window.rspDashboard.open", Duration::from_secs(10));
    assert_eq!(b.text("main .sub [data-state]"), "Running", "the page was loaded before the error existed");
    b.until(
        "the error, live",
        "return !document.getElementById('job-error').hidden && document.getElementById('job-error').textContent",
        Duration::from_secs(20),
    );
    assert!(b.text("#job-error").contains("<img src=x id=pwned"), "shown as text: {}", b.text("#job-error"));
    assert_eq!(
        b.js("return [!!document.getElementById('pwned'), !!document.getElementById('bold')]", json!([])),
        json!([false, false])
    );
    assert_ne!(b.js("return document.title", json!([])), "pwned");
}
