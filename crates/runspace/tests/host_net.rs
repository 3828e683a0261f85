//! `net` and `http` against servers the tests start on 127.0.0.1: grants,
//! refusals, the functions, and stops that must not wait for the network.

mod host_common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use host_common::{err, lit, ok, refused, session};
use runspace::{RunspacePool, Script, Status};
use serde_json::json;

/// A tiny HTTP/1.1 server on 127.0.0.1: one thread per connection,
/// `Connection: close` answers. `/hang` never answers; it reports on the
/// channel when the client's side of the connection closes.
struct Server {
    base: String,
    hung_up: mpsc::Receiver<Instant>,
}

fn server() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, hung_up) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || handle(stream, tx));
        }
    });
    Server { base, hung_up }
}

fn handle(mut stream: TcpStream, hung_up: mpsc::Sender<Instant>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut headers = Vec::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        let (name, value) = line.trim_end().split_once(':').unwrap_or((line.trim_end(), ""));
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().unwrap_or(0);
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()).unwrap_or_default();
    let (status, content_type, body) = match (method, path) {
        ("GET", "/hello") => ("200 OK", "text/plain", b"hello".to_vec()),
        ("GET", "/json") => ("200 OK", "application/json", br#"{"a": 1, "b": [1, 2], "s": "x"}"#.to_vec()),
        ("GET", "/headers") => ("200 OK", "text/plain", header("x-token").into_bytes()),
        ("POST" | "PUT", "/echo") => ("201 Created", "application/octet-stream", body),
        ("GET", "/missing") => ("404 Not Found", "text/plain", b"no such thing".to_vec()),
        (_, "/hang") => {
            // Never answer; wait for the client to give up.
            let mut sink = [0u8; 64];
            while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
            let _ = hung_up.send(Instant::now());
            return;
        }
        _ => ("405 Method Not Allowed", "text/plain", method.as_bytes().to_vec()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nX-Method: {method}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body);
}

#[test]
fn net_and_http_are_refused_without_their_grants() {
    refused(&[], "return net.probe('127.0.0.1', 1)", "net");
    refused(&["http"], "return net.resolve('localhost')", "net");
    refused(&[], "return http.get('http://127.0.0.1:1/')", "http");
    refused(&["net"], "return http.request{url = 'http://127.0.0.1:1/'}", "http");
    refused(&["net"], "return http.get_json('http://127.0.0.1:1/')", "http");
    refused(&["net"], "return http.post_json('http://127.0.0.1:1/', {})", "http");
}

#[test]
fn probe_reports_scan_states_and_resolve_finds_loopback() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap().port();
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let code = format!(
        "local a = net.probe('127.0.0.1', {open}) local b = net.probe('localhost', {closed}, {{timeout = 0.5}})
         return a.state, a.reason, a.open, a.rtt_ms >= 0, b.state, b.reason, b.attempts"
    );
    assert_eq!(ok(&["net"], &code), json!(["open", "syn-ack", true, true, "closed", "conn-refused", 1]));
    let addrs = ok(&["net"], "return net.resolve('localhost')");
    assert!(addrs.as_array().unwrap().iter().any(|a| a == "127.0.0.1" || a == "::1"), "{addrs}");
    assert_eq!(ok(&["net"], "return net.resolve('127.0.0.1')"), json!(["127.0.0.1"]));
    let e = err(&["net"], "return net.probe('127.0.0.1', 80, {wait = 1})");
    assert!(e.contains("unknown field `wait`"), "{e}");
}

#[test]
fn http_get_request_and_json_helpers() {
    let s = server();
    let b = lit(&s.base);
    let code = format!(
        "local r = http.get({b} .. '/hello')
         return r.status, r.ok, r.body, r.headers['content-type'], r.headers['x-method']"
    );
    assert_eq!(ok(&["http"], &code), json!([200, true, "hello", "text/plain", "GET"]));

    let code = format!("return http.get({b} .. '/headers', {{headers = {{['X-Token'] = 'abc'}}}}).body");
    assert_eq!(ok(&["http"], &code), json!("abc"));

    let code = format!(
        "local r = http.request{{method = 'put', url = {b} .. '/echo', body = 'payload', timeout = 5}}
         return r.status, r.body, r.headers['x-method']"
    );
    assert_eq!(ok(&["http"], &code), json!([201, "payload", "PUT"]));

    let code = format!("local r = http.get({b} .. '/missing') return r.status, r.ok, r.body");
    assert_eq!(ok(&["http"], &code), json!([404, false, "no such thing"]));

    let code = format!("local v = http.get_json({b} .. '/json') return v.a, v.b[2], v.s");
    assert_eq!(ok(&["http"], &code), json!([1, 2, "x"]));
    let code = format!("return http.post_json({b} .. '/echo', {{n = 1, list = {{1, 2}}}})");
    assert_eq!(ok(&["http"], &code), json!({"n": 1, "list": [1, 2]}));

    let e = err(&["http"], &format!("return http.get_json({b} .. '/missing')"));
    assert!(e.contains("404") && e.contains("no such thing"), "{e}");
    let e = err(&["http"], &format!("return http.get_json({b} .. '/hello')"));
    assert!(e.contains("not JSON"), "{e}");
    let e = err(&["http"], &format!("return http.get({b} .. '/hello', {{max_bytes = 2}})"));
    assert!(e.contains("limit"), "{e}");
    let e = err(&["http"], &format!("return http.get({b} .. '/hello', {{tiemout = 1}})"));
    assert!(e.contains("unknown option 'tiemout'"), "{e}");

    // A refused connection is an error naming the URL.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let e = err(&["http"], &format!("return http.get('http://127.0.0.1:{port}/')"));
    assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
}

#[test]
fn http_timeout_option_ends_a_request_nobody_answers() {
    let s = server();
    let started = Instant::now();
    let e = err(&["http"], &format!("return http.get({} .. '/hang', {{timeout = 0.3}})", lit(&s.base)));
    assert!(e.contains("timeout") || e.contains("timed out"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

#[test]
fn stop_during_a_long_http_request_returns_promptly_and_closes_the_socket() {
    let s = server();
    let pool = RunspacePool::builder().max(1).session(session(&["http"])).open().unwrap();
    let script = Script::new(&format!("return http.get({} .. '/hang', {{timeout = 3600}})", lit(&s.base))).unwrap();
    let handle = pool.invocation(&script).begin().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!handle.is_completed(), "the request should still be waiting");
    let stopped_at = Instant::now();
    handle.stop();
    let r = handle.end();
    assert_eq!(r.status(), Status::Stopped, "{:?}", r.error());
    assert!(stopped_at.elapsed() < Duration::from_secs(8), "end() took {:?}", stopped_at.elapsed());
    // The server sees the connection close: the request was aborted, not abandoned.
    let closed = s.hung_up.recv_timeout(Duration::from_secs(5)).expect("the client socket was not closed");
    assert!(closed.duration_since(stopped_at) < Duration::from_secs(3));

    // The runspace is still usable for HTTP after its agent was shut down.
    let hello = Script::new(&format!("return http.get({} .. '/hello').body", lit(&s.base))).unwrap();
    let r = pool.invocation(&hello).invoke().unwrap();
    assert_eq!(r.result(), json!("hello"), "{:?}", r.error());
}

#[test]
fn item_timeout_during_http_is_timed_out() {
    let s = server();
    let pool = RunspacePool::builder().max(1).session(session(&["http"])).open().unwrap();
    let script = Script::new(&format!("return http.get({} .. '/hang')", lit(&s.base))).unwrap();
    let started = Instant::now();
    let r = pool.invocation(&script).timeout(Duration::from_millis(300)).invoke().unwrap();
    assert_eq!(r.status(), Status::TimedOut, "{:?}", r.error());
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

/// A listener on 127.0.0.1 whose accept queue is full: the kernel drops
/// further SYNs, so a connect to it waits without an answer (like a
/// firewalled port) while staying on loopback.
fn unanswered_port() -> (std::os::fd::OwnedFd, TcpStream, u16) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor owned here; `addr` is a valid sockaddr_in.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len), 0);
        assert_eq!(libc::listen(fd, 0), 0);
        let mut len = len;
        assert_eq!(libc::getsockname(fd, &mut addr as *mut _ as *mut libc::sockaddr, &mut len), 0);
        let port = u16::from_be(addr.sin_port);
        // Fills the one-place queue; nobody ever accepts it.
        let filler = TcpStream::connect(("127.0.0.1", port)).unwrap();
        (owned, filler, port)
    }
}

#[test]
fn probe_of_an_unanswered_port_wakes_on_stop_and_timeout() {
    let (_listener, _filler, port) = unanswered_port();
    let pool = RunspacePool::builder().max(1).session(session(&["net"])).open().unwrap();
    let script = Script::new(&format!("return net.probe('127.0.0.1', {port}, {{timeout = 3600}})")).unwrap();

    let started = Instant::now();
    let r = pool.invocation(&script).timeout(Duration::from_millis(300)).invoke().unwrap();
    assert_eq!(r.status(), Status::TimedOut, "{:?} {:?}", r.error(), r.output());
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());

    let handle = pool.invocation(&script).begin().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!handle.is_completed(), "the probe should still be waiting");
    let stopped_at = Instant::now();
    handle.stop();
    let r = handle.end();
    assert_eq!(r.status(), Status::Stopped, "{:?}", r.error());
    assert!(stopped_at.elapsed() < Duration::from_secs(3), "end() took {:?}", stopped_at.elapsed());

    // Its own timeout: `filtered`, `no-response`, no rtt.
    let code =
        format!("local r = net.probe('127.0.0.1', {port}, {{timeout = 0.2}}) return r.state, r.reason, r.rtt_ms");
    assert_eq!(ok(&["net"], &code), json!(["filtered", "no-response", null]));
}

/// Set inside the namespace where the resolver never gets an answer.
const SILENT_DNS: &str = "RUNSPACE_TEST_SILENT_DNS";

/// Runs test `name` of this binary again inside new network and mount
/// namespaces whose resolv.conf names a server that never answers (its
/// packets leave through a veth whose other end is down; nothing leaves the
/// namespace). `None` when the namespaces cannot be made (not root).
fn rerun_with_silent_dns(name: &str) -> Option<std::process::Output> {
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 10.53.0.2\noptions timeout:30 attempts:1\n").unwrap();
    let setup = format!(
        "ip link set lo up && ip link add rspdns0 type veth peer name rspdns1 && \
         ip addr add 10.53.0.1/24 dev rspdns0 && ip link set rspdns0 up && \
         ip neigh add 10.53.0.2 lladdr 02:00:00:00:00:02 dev rspdns0 nud permanent && \
         mount --bind {} /etc/resolv.conf || exit 77\nexec \"$0\" \"$@\"",
        resolv.display()
    );
    let out = std::process::Command::new("unshare")
        .args(["-mn", "sh", "-c", &setup])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env(SILENT_DNS, "1")
        .output()
        .ok()?;
    (out.status.code() != Some(77) && !String::from_utf8_lossy(&out.stderr).contains("unshare failed")).then_some(out)
}

#[test]
fn resolve_wakes_on_stop_and_timeout() {
    if std::env::var_os(SILENT_DNS).is_none() {
        match rerun_with_silent_dns("resolve_wakes_on_stop_and_timeout") {
            None => eprintln!("SKIP: cannot make a network namespace with a silent resolver"),
            Some(out) => assert!(
                out.status.success(),
                "inside the namespace:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
        return;
    }
    let pool = RunspacePool::builder().max(1).session(session(&["net"])).open().unwrap();
    let script = Script::new("return net.resolve('never-answers.invalid')").unwrap();

    let started = Instant::now();
    let r = pool.invocation(&script).timeout(Duration::from_millis(300)).invoke().unwrap();
    assert_eq!(r.status(), Status::TimedOut, "{:?} {:?}", r.error(), r.output());
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());

    let handle = pool.invocation(&script).begin().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!handle.is_completed(), "the lookup should still be waiting");
    let stopped_at = Instant::now();
    handle.stop();
    let r = handle.end();
    assert_eq!(r.status(), Status::Stopped, "{:?}", r.error());
    assert!(stopped_at.elapsed() < Duration::from_secs(3), "end() took {:?}", stopped_at.elapsed());

    // Its own timeout is an error the script can catch; probing a name waits the same way.
    let e = err(&["net"], "return net.resolve('never-answers.invalid', {timeout = 0.3})");
    assert!(e.contains("did not resolve in time"), "{e}");
    let probe = Script::new("return net.probe('never-answers.invalid', 80)").unwrap();
    let r = pool.invocation(&probe).timeout(Duration::from_millis(300)).invoke().unwrap();
    assert_eq!(r.status(), Status::TimedOut, "{:?}", r.error());
}
