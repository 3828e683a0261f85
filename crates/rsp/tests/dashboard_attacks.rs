//! Attacks on the dashboard's promises, over plain HTTP: a planted session
//! cookie, guessing the token at the form, another session's CSRF token,
//! markup and SSE framing smuggled in through a job's names and values,
//! huge values that must not make a huge page, many open event streams, and
//! a slowloris on the event stream.

mod dashboard_common;
mod jobs_common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use dashboard_common::{agent, answer, Answer, WebSession};
use jobs_common::Server;
use serde_json::{json, Value};

fn server(extra: &[&str]) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), extra);
    (dir, server)
}

fn submit(server: &Server, body: Value) -> String {
    let (status, answer) = server.call("POST", "/v1/jobs", Some(&body));
    assert_eq!(status, 201, "{answer}");
    answer["name"].as_str().unwrap().to_string()
}

fn finished(server: &Server, name: &str) {
    server.until(name, |j| j["state"] != "Queued" && j["state"] != "Running");
}

/// A login at the form with `token`, sending `cookie` if given.
fn login(base: &str, token: &str, cookie: Option<&str>) -> Answer {
    let mut r = agent().post(format!("{base}/login")).header("Content-Type", "application/x-www-form-urlencoded");
    if let Some(cookie) = cookie {
        r = r.header("Cookie", cookie);
    }
    answer(r.send(format!("token={token}")))
}

/// The session id a login answer sets.
fn session_id(a: &Answer) -> String {
    let cookie = a.set_cookie.as_deref().expect("a session cookie");
    cookie.split(';').next().unwrap().trim_start_matches("rsp_session=").to_string()
}

fn get_with_cookie(base: &str, path: &str, cookie: &str) -> Answer {
    answer(agent().get(format!("{base}{path}")).header("Cookie", cookie).call())
}

#[test]
fn a_session_cookie_chosen_by_an_attacker_never_becomes_a_session() {
    let (_dir, server) = server(&[]);
    let planted = "a".repeat(64);
    // The victim logs in while carrying the planted cookie (set by a
    // sibling subdomain, say): the server makes its own id.
    let a = login(&server.base, &server.token, Some(&format!("rsp_session={planted}")));
    assert_eq!(a.status, 303);
    let issued = session_id(&a);
    assert_ne!(issued, planted);
    assert_eq!(issued.len(), 64, "256 random bits");
    assert_eq!(get_with_cookie(&server.base, "/jobs", &format!("rsp_session={planted}")).status, 401);
    assert_eq!(get_with_cookie(&server.base, "/jobs", &format!("rsp_session={issued}")).status, 200);
    // Logging in again with a live session gives a new id, never the old one.
    let again = session_id(&login(&server.base, &server.token, Some(&format!("rsp_session={issued}"))));
    assert_ne!(again, issued);
    // Near misses of a live id open nothing.
    let mut near = issued.clone();
    near.replace_range(63.., if issued.ends_with('0') { "1" } else { "0" });
    for cookie in [
        format!("rsp_session={near}"),
        format!("rsp_session={}", &issued[..63]),
        format!("rsp_session={issued}0"),
        format!("rsp_session={}", issued.to_uppercase()),
        format!("rsp_session= {issued}x"),
        format!("RSP_SESSION={issued}"),
        "rsp_session=".to_string(),
        format!("rsp_session={}", "0".repeat(100_000)),
    ] {
        let a = get_with_cookie(&server.base, "/jobs", &cookie);
        assert!(a.status == 401 || a.status == 431, "{}: {}", &cookie[..cookie.len().min(80)], a.status);
    }
}

#[test]
fn guessing_the_token_at_the_form_is_slowed_down_for_the_whole_server() {
    let (_dir, server) = server(&[]);
    // Forty guesses at once: the first few are checked, the rest wait, and
    // none slips through while the first failures are being counted.
    let base = server.base.as_str();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let guesses: Vec<_> =
            (0..40).map(|i| s.spawn(move || login(base, &format!("{i:064x}"), None).status)).collect();
        guesses.into_iter().map(|g| g.join().unwrap()).collect()
    });
    let checked = statuses.iter().filter(|&&s| s == 401).count();
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!((checked, refused), (5, 35), "{statuses:?}");
    // While the back-off runs even the right token is refused (it is not
    // looked at: no answer tells a guess apart).
    let a = login(&server.base, &server.token, None);
    assert_eq!((a.status, a.set_cookie.is_some()), (429, false), "{}", a.body);
    assert!(a.body.contains("try again in"), "{}", a.body);
    let retry: u64 = answer(
        agent()
            .post(format!("{}/login", server.base))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send("token=x"),
    )
    .body
    .split("try again in ")
    .nth(1)
    .and_then(|t| t.split(' ').next())
    .and_then(|n| n.parse().ok())
    .expect("the wait is said");
    assert!((1..=60).contains(&retry), "{retry}");
    // After it, the right token opens a session and the count starts over.
    std::thread::sleep(Duration::from_secs(retry) + Duration::from_millis(200));
    assert_eq!(login(&server.base, &server.token, None).status, 303);
    assert_eq!(login(&server.base, "wrong", None).status, 401);
    assert_eq!(login(&server.base, &server.token, None).status, 303);
}

#[test]
fn a_csrf_token_is_bound_to_its_session() {
    let (_dir, server) = server(&[]);
    let name = submit(
        &server,
        json!({"name": "busy", "script": "sleep(0.05) return _", "range": {"start": 1, "end": 1000000}, "throttle": 2}),
    );
    let web = WebSession::login(&server.base, &server.token);
    let other = WebSession::login(&server.base, &server.token);
    assert_ne!(web.csrf, other.csrf);
    // Another session's token, as a form field and as the header.
    assert_eq!(web.post(&format!("/jobs/{name}/stop"), Some(&other.csrf), None).status, 403);
    let a = answer(
        agent()
            .post(format!("{}/jobs/{name}/stop", server.base))
            .header("Cookie", &web.cookie)
            .header("X-CSRF-Token", &other.csrf)
            .send(""),
    );
    assert_eq!(a.status, 403);
    // A header and a field that disagree: the header is the one checked.
    let a = answer(
        agent()
            .post(format!("{}/jobs/{name}/stop", server.base))
            .header("Cookie", &web.cookie)
            .header("X-CSRF-Token", &other.csrf)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(format!("csrf={}", web.csrf)),
    );
    assert_eq!(a.status, 403);
    // A logged-out session's token does not carry over to a new session.
    let old = other.csrf.clone();
    assert_eq!(other.post("/logout", Some(&old), None).status, 303);
    assert_eq!(web.post(&format!("/jobs/{name}/stop"), Some(&old), None).status, 403);
    assert_eq!(server.call("GET", &format!("/v1/jobs/{name}"), None).1["state"], "Running", "nothing was stopped");
}

/// Markup, quotes, a script end tag and SSE framing in one string.
const HOSTILE: &str = "</script><img src=x onerror=alert(1)>\"'`\n\nevent: job\ndata: {\"state\":\"Owned\"}\n\n";

#[test]
fn hostile_text_from_a_job_stays_text_in_every_page_download_and_event() {
    let (_dir, server) = server(&[]);
    let script = "write_warning(_) if _ == '!' then error(_) end return {text = _}";
    let inputs = json!([HOSTILE, "!"]);
    submit(&server, json!({"name": "x1", "script": script, "script_name": HOSTILE, "inputs": inputs}));
    finished(&server, "x1");
    let serial = format!("error({})", serde_json::to_string(HOSTILE).unwrap());
    submit(&server, json!({"name": "x2", "script": serial, "script_name": HOSTILE}));
    finished(&server, "x2");
    let web = WebSession::login(&server.base, &server.token);
    let markup = ["<img src=x", "onerror=alert(1)>", "data: {\"state\":\"Owned\"}"];
    let q = "%3C%2Fscript%3E%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E";
    for path in [
        "/".to_string(),
        "/jobs".into(),
        format!("/jobs?q={q}"),
        format!("/jobs?state={q}"),
        "/jobs/x1".into(),
        format!("/jobs/x1?status={q}"),
        format!("/jobs/x1?below={q}"),
        "/jobs/x2".into(),
        format!("/jobs/{q}"),
    ] {
        let a = web.get(&path);
        assert!(a.status == 200 || a.status == 404, "{path}: {}", a.status);
        assert!(a.content_type.starts_with("text/html"), "{path}");
        for m in markup {
            assert!(!a.body.contains(m), "{path}: raw {m} in the page");
        }
    }
    assert!(web.get("/jobs/x1").body.contains("&lt;img src=x onerror=alert(1)&gt;"), "shown, as text");
    // Downloads are never HTML, and the browser may not guess otherwise.
    for path in ["/jobs/x1/results.jsonl", "/jobs/x1/streams/warning", "/jobs/x2/streams/error"] {
        let a = answer(agent().get(format!("{}{path}", server.base)).header("Cookie", &web.cookie).call());
        assert_eq!(a.status, 200, "{path}");
        assert!(!a.content_type.contains("html"), "{path}: {}", a.content_type);
        assert!(a.body.contains("onerror"), "{path}: the record is there");
    }
    // The event stream: the error travels as one JSON string, its line
    // breaks escaped, so it cannot end the event or start another.
    let events = read_events(&server, &web.cookie, "/jobs/x2/events", 1);
    assert_eq!(events.len(), 1, "{events:?}");
    let (kind, data) = &events[0];
    assert_eq!(kind, "job");
    let payload: Value = serde_json::from_str(data).unwrap();
    assert_eq!(payload["state"], "Failed");
    assert!(payload["error"].as_str().unwrap().contains(HOSTILE.trim_end()), "{payload}");
    // The page's script puts data into the page as text only.
    let script = answer(agent().get(format!("{}/static/app.js", server.base)).call()).body;
    for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"] {
        assert!(!script.contains(sink), "app.js uses {sink}");
    }
}

/// Opens an event stream with a raw socket and reads `count` events
/// (name, data) within 10 s.
fn read_events(server: &Server, cookie: &str, path: &str, count: usize) -> Vec<(String, String)> {
    let addr = server.base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nAccept: text/event-stream\r\n\r\n").unwrap();
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 65536];
    loop {
        let events = parse_events(&text);
        if events.len() >= count || Instant::now() > deadline {
            return events;
        }
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            return events;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

/// The complete events in a chunked SSE answer (the chunk sizes are
/// lines of hex digits alone, which no event line is).
fn parse_events(text: &str) -> Vec<(String, String)> {
    let Some((_, body)) = text.split_once("\r\n\r\n") else { return Vec::new() };
    let lines: Vec<&str> = body.split('\n').map(|l| l.trim_end_matches('\r')).collect();
    let mut events = Vec::new();
    let (mut kind, mut data) = (String::new(), Vec::new());
    for line in lines {
        if line.is_empty() {
            if !data.is_empty() {
                events.push((std::mem::take(&mut kind), data.join("\n")));
                data.clear();
            }
        } else if let Some(k) = line.strip_prefix("event:") {
            kind = k.trim().to_string();
        } else if let Some(d) = line.strip_prefix("data:") {
            data.push(d.trim_start().to_string());
        }
    }
    events
}

#[test]
fn huge_values_make_no_huge_page() {
    let (_dir, server) = server(&[]);
    // Results of 10 MB, stream lines of 1 MB, many errors per item (within the
    // 16 MB an item may write), and a
    // 5 MB script: all of it markup that grows when escaped.
    let script = format!(
        "--{}\nlocal big = string.rep('<', 10 * 1024 * 1024)\n\
         for i = 1, 4 do write_warning(string.rep('<', 1024 * 1024)) end\n\
         for i = 1, 200 do write_error(string.rep('\"', 2000)) end\n\
         return big",
        "<".repeat(5 << 20)
    );
    submit(&server, json!({"name": "big", "script": &script, "range": {"start": 1, "end": 3}}));
    // (The API's view of this job carries its stream tails, megabytes: the
    // list is read instead.)
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, list) = server.call("GET", "/v1/jobs", None);
        let state = list["jobs"].as_array().and_then(|j| j.first()).map(|j| j["state"].clone()).unwrap_or_default();
        if state == "CompletedWithErrors" {
            break;
        }
        assert!(Instant::now() < deadline && state != "Failed", "{list}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let web = WebSession::login(&server.base, &server.token);
    let mut page = agent().get(format!("{}/jobs/big", server.base)).header("Cookie", &web.cookie).call().unwrap();
    assert_eq!(page.status(), 200);
    let body = page.body_mut().with_config().limit(1 << 30).read_to_string().unwrap();
    let size = body.len();
    eprintln!("the job's page: {size} bytes");
    assert!(size < 256 << 10, "the job's page is {size} bytes");
    assert!(body.contains("Download all"), "the whole is a download away");
    assert!(body.contains("Download the whole script"), "the script is cut");
    assert!(body.contains("and 197 more (in the download)"), "three errors an item are shown");
    // The whole is there, for whoever downloads it.
    let mut all =
        agent().get(format!("{}/jobs/big/results.jsonl", server.base)).header("Cookie", &web.cookie).call().unwrap();
    let results = all.body_mut().with_config().limit(1 << 30).read_to_string().unwrap();
    assert!(results.len() > 30 << 20, "{}", &results[..results.len().min(2000)]);
    let mut whole =
        agent().get(format!("{}/jobs/big/script", server.base)).header("Cookie", &web.cookie).call().unwrap();
    assert!(whole.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    assert_eq!(whole.body_mut().with_config().limit(1 << 30).read_to_string().unwrap(), script);
}

/// Threads of process `pid` (Linux).
fn threads(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("Threads:")).unwrap().trim().parse().unwrap()
}

#[test]
fn many_open_event_streams_cost_no_thread_each_and_the_server_keeps_answering() {
    let (_dir, server) = server(&[]);
    submit(
        &server,
        json!({"name": "busy", "script": "sleep(0.01) return _", "range": {"start": 1, "end": 1000000}, "throttle": 2}),
    );
    submit(&server, json!({"name": "done", "script": "return 1"}));
    finished(&server, "done");
    let web = WebSession::login(&server.base, &server.token);
    let addr = server.base.trim_start_matches("http://").to_string();
    let before = threads(server.pid());
    let mut streams = Vec::new();
    // The overview's stream, a running job's, a finished job's (read from
    // the store when it opens) and a job that does not exist.
    let paths = ["/events", "/jobs/busy/events", "/jobs/done/events", "/jobs/none/events"];
    for i in 0..300 {
        let path = paths[i % paths.len()];
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: {}\r\nAccept: text/event-stream\r\n\r\n", web.cookie)
            .unwrap();
        streams.push(s);
    }
    for s in &mut streams {
        let mut head = [0u8; 64];
        let n = s.read(&mut head).unwrap();
        assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head[..n]));
    }
    let after = threads(server.pid());
    eprintln!("threads: {before} before, {after} with 300 open streams");
    assert!(after <= before + 16, "threads grew from {before} to {after}");
    // The server still answers, at once.
    let started = Instant::now();
    assert_eq!(web.get("/jobs/busy").status, 200);
    assert_eq!(server.call("GET", "/v1/jobs/busy", None).0, 200);
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    // And the streams are live: one more event arrives on the last one.
    let last = streams.last_mut().unwrap();
    let mut more = [0u8; 4096];
    assert!(last.read(&mut more).unwrap() > 0);
}

#[test]
fn downloads_read_slowly_cost_no_thread_each_and_lose_nothing() {
    let (_dir, server) = server(&[]);
    // 20,000 records of 1 kB: far more than sockets and buffers hold.
    submit(
        &server,
        json!({"name": "wide", "script": "return string.rep('x', 1000)", "range": {"start": 1, "end": 20000}}),
    );
    server.until("wide", |j| j["state"] == "Completed");
    let web = WebSession::login(&server.base, &server.token);
    let addr = server.base.trim_start_matches("http://").to_string();
    let before = threads(server.pid());
    // Sixty downloads that read nothing after the head.
    let mut stalled = Vec::new();
    for _ in 0..60 {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET /jobs/wide/results.jsonl HTTP/1.1\r\nHost: {addr}\r\nCookie: {}\r\n\r\n", web.cookie).unwrap();
        let mut head = [0u8; 16];
        s.read_exact(&mut head).unwrap();
        assert!(head.starts_with(b"HTTP/1.1 200"));
        stalled.push(s);
    }
    std::thread::sleep(Duration::from_secs(1));
    let after = threads(server.pid());
    eprintln!("threads: {before} before, {after} with 60 stalled downloads");
    assert!(after <= before + 16, "threads grew from {before} to {after}");
    // Meanwhile a download read to the end has every record.
    let mut whole =
        agent().get(format!("{}/jobs/wide/results.jsonl", server.base)).header("Cookie", &web.cookie).call().unwrap();
    let text = whole.body_mut().with_config().limit(1 << 30).read_to_string().unwrap();
    assert_eq!(text.lines().count(), 20000);
    assert!(text.lines().all(|l| l.contains(&"x".repeat(1000))));
    // A stream of several download pages comes whole and in order.
    submit(&server, json!({"name": "chatty", "script": "for i = 1, 2500 do write_warning('w' .. i) end"}));
    server.until("chatty", |j| j["state"] == "Completed");
    let log = web.get("/jobs/chatty/streams/warning").body;
    let expected: Vec<String> = (1..=2500).map(|i| format!("w{i}")).collect();
    assert_eq!(log.lines().collect::<Vec<_>>(), expected);
}

#[test]
fn a_slowloris_on_the_event_stream_is_cut_off() {
    let (_dir, server) = server(&[]);
    let web = WebSession::login(&server.base, &server.token);
    let addr = server.base.trim_start_matches("http://").to_string();
    // Headers sent a byte every 200 ms, never finished: the connection is
    // closed once the header deadline (10 s) passes, however lively it is.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let request = format!("GET /events HTTP/1.1\r\nHost: {addr}\r\nCookie: {}\r\nX-Slow: ", web.cookie);
    s.write_all(request.as_bytes()).unwrap();
    let started = Instant::now();
    let closed = loop {
        if started.elapsed() > Duration::from_secs(30) {
            break false;
        }
        if s.write_all(b"a").is_err() {
            break true;
        }
        let mut buf = [0u8; 1024];
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => {} // a 408, say; the close follows
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break true,
        }
        // Meanwhile others are served.
        if started.elapsed() > Duration::from_secs(2) && started.elapsed() < Duration::from_secs(3) {
            assert_eq!(web.get("/jobs").status, 200);
        }
    };
    let took = started.elapsed();
    eprintln!("the slow connection was closed after {took:?}");
    assert!(closed, "still open after {took:?}");
    assert!(took >= Duration::from_secs(5), "closed too early ({took:?}): not the header deadline?");
}
