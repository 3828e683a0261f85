//! Helpers for the dashboard tests: a logged-in HTTP session, and a real
//! browser (Debian's `chromium`, driven through `chromedriver` over the W3C
//! WebDriver protocol).
//!
//! The WebDriver client is the dozen JSON-over-HTTP calls these tests use,
//! sent with ureq (already a dev-dependency): no WebDriver crate, nothing
//! that downloads a browser. One chromedriver serves the whole test binary;
//! each test gets its own browser (a session with a fresh profile).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The WebDriver name of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A plain HTTP client that keeps the session cookie by hand (ureq's own
/// cookie jar is a feature not enabled here).
pub struct WebSession {
    pub base: String,
    pub cookie: String,
    pub csrf: String,
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// An answer: status, headers we look at, body.
pub struct Answer {
    pub status: u16,
    pub location: Option<String>,
    pub set_cookie: Option<String>,
    pub content_type: String,
    pub body: String,
}

pub fn answer(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut r = r.expect("request failed");
    let header = |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok()).map(String::from);
    let (location, set_cookie) = (header("location"), header("set-cookie"));
    let content_type = header("content-type").unwrap_or_default();
    let status = r.status().as_u16();
    // An event stream never ends: read only what has come.
    let body = if content_type.starts_with("text/event-stream") {
        String::new()
    } else {
        r.body_mut().read_to_string().unwrap_or_default()
    };
    Answer { status, location, set_cookie, content_type, body }
}

impl WebSession {
    /// Logs in with `token` at the form, as a browser does.
    pub fn login(base: &str, token: &str) -> WebSession {
        let a = answer(
            agent()
                .post(format!("{base}/login"))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .send(format!("token={token}")),
        );
        assert_eq!(a.status, 303, "login: {}", a.body);
        let cookie = a.set_cookie.expect("a session cookie").split(';').next().unwrap().to_string();
        let mut session = WebSession { base: base.to_string(), cookie, csrf: String::new() };
        let page = session.get("/").body;
        let marker = "name=\"csrf-token\" content=\"";
        let start = page.find(marker).expect("the page carries the CSRF token") + marker.len();
        session.csrf = page[start..start + 64].to_string();
        session
    }

    pub fn get(&self, path: &str) -> Answer {
        answer(agent().get(format!("{}{path}", self.base)).header("Cookie", &self.cookie).call())
    }

    /// A POST as the page's script sends it; `csrf` is the token to send (or none).
    pub fn post(&self, path: &str, csrf: Option<&str>, origin: Option<&str>) -> Answer {
        let mut r = agent()
            .post(format!("{}{path}", self.base))
            .header("Cookie", &self.cookie)
            .header("Accept", "application/json")
            .header("Content-Type", "application/x-www-form-urlencoded");
        if let Some(origin) = origin {
            r = r.header("Origin", origin);
        }
        let body = csrf.map(|t| format!("csrf={t}")).unwrap_or_default();
        answer(r.send(body))
    }
}

impl WebSession {
    /// A POST as a plain HTML form sends it (no script: no Accept header).
    pub fn post_form(&self, path: &str) -> Answer {
        let r = agent()
            .post(format!("{}{path}", self.base))
            .header("Cookie", &self.cookie)
            .header("Content-Type", "application/x-www-form-urlencoded");
        answer(r.send(format!("csrf={}", self.csrf)))
    }
}

// ---- the browser ----------------------------------------------------------

/// The one chromedriver of this test binary, if there is one.
struct Driver {
    url: String,
    _child: Child,
}

static DRIVER: OnceLock<Option<Driver>> = OnceLock::new();
/// Browsers run one at a time: the machines have two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_driver() -> Option<Driver> {
    let program = find_program("chromedriver")?;
    let port = free_port();
    // Started from a thread that lives as long as the test binary, with
    // PDEATHSIG set: when the binary exits, chromedriver is killed (the
    // signal follows the death of the thread that started it).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(program);
        command.args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()]);
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let _ = tx.send(command.spawn());
        loop {
            std::thread::park();
        }
    });
    let child = rx.recv().ok()?.ok()?;
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(mut r) = agent().get(format!("{url}/status")).call() {
            let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap_or_default()).unwrap_or_default();
            if v["value"]["ready"] == json!(true) {
                return Some(Driver { url, _child: child });
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("chromedriver did not become ready within 20 s");
}

/// A browser for one test, or `None` (said loudly) when this machine has
/// no chromedriver: .ci/run installs Debian's chromium and chromium-driver.
/// `RSP_REQUIRE_BROWSER=1` turns the skip into a failure.
pub fn browser(width: u32, height: u32) -> Option<Browser> {
    let driver = DRIVER.get_or_init(start_driver).as_ref();
    let Some(driver) = driver else {
        assert!(
            std::env::var_os("RSP_REQUIRE_BROWSER").is_none(),
            "RSP_REQUIRE_BROWSER is set but chromedriver is not installed"
        );
        eprintln!(
            "\n*** SKIPPED: chromedriver is not installed, so this browser test did not run. \
             Install Debian's chromium and chromium-driver (see .ci/run). ***\n"
        );
        return None;
    };
    let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let profile = tempfile::tempdir().unwrap();
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        &format!("--user-data-dir={}", profile.path().display()),
        &format!("--window-size={width},{height}"),
    ];
    let mut options = json!({"args": args});
    if let Some(chromium) = find_program("chromium") {
        options["binary"] = json!(chromium);
    }
    let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}});
    let v = wd(&driver.url, "POST", "/session", Some(&caps));
    let id = v["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {v}")).to_string();
    let browser = Browser { base: format!("{}/session/{id}", driver.url), _profile: profile, _turn: turn };
    browser.size(width, height);
    Some(browser)
}

/// One WebDriver call; panics with the driver's message on an error.
fn wd(base: &str, method: &str, path: &str, body: Option<&Value>) -> Value {
    let url = format!("{base}{path}");
    let r = match method {
        "GET" => agent().get(&url).call(),
        "DELETE" => agent().delete(&url).call(),
        _ => agent().post(&url).send_json(body.cloned().unwrap_or(json!({}))),
    };
    let mut r = r.unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
    let status = r.status().as_u16();
    let text = r.body_mut().with_config().limit(64 << 20).read_to_string().unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    assert!(status < 300, "WebDriver {method} {path}: {status} {}", v["value"]);
    v["value"].clone()
}

/// A browser window (a WebDriver session); closed on drop.
pub struct Browser {
    base: String,
    _profile: tempfile::TempDir,
    _turn: MutexGuard<'static, ()>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = agent().delete(&self.base).call();
    }
}

impl Browser {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        wd(&self.base, method, path, body.as_ref())
    }

    /// Makes the page's viewport (not the window) `width` × `height`.
    pub fn size(&self, width: u32, height: u32) {
        self.call("POST", "/window/rect", Some(json!({"width": width, "height": height})));
        let inner = self.js("return [window.innerWidth, window.innerHeight]", json!([]));
        let (w, h) = (inner[0].as_u64().unwrap_or(0) as u32, inner[1].as_u64().unwrap_or(0) as u32);
        if (w, h) != (width, height) && w > 0 && h > 0 {
            let rect = json!({"width": 2 * width - w.min(2 * width), "height": 2 * height - h.min(2 * height)});
            self.call("POST", "/window/rect", Some(rect));
        }
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({"url": url})));
    }

    pub fn url(&self) -> String {
        self.call("GET", "/url", None).as_str().unwrap_or_default().to_string()
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns its value.
    pub fn js(&self, script: &str, args: Value) -> Value {
        self.call("POST", "/execute/sync", Some(json!({"script": script, "args": args})))
    }

    /// Waits (up to `limit`) until `script` returns something truthy; returns it.
    pub fn until(&self, what: &str, script: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.js(script, json!([]));
            if !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0)) {
                return v;
            }
            assert!(Instant::now() < deadline, "waited {limit:?} for {what}; the page: {}", self.text("body"));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The element `css` matches, waiting up to 10 s for it.
    pub fn find(&self, css: &str) -> Value {
        let body = json!({"using": "css selector", "value": css});
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = agent().post(format!("{}/element", self.base)).send_json(&body);
            if let Ok(mut r) = r {
                if r.status().as_u16() == 200 {
                    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap_or_default()).unwrap();
                    return v["value"].clone();
                }
            }
            assert!(Instant::now() < deadline, "no element {css} in {}", self.url());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn id(element: &Value) -> String {
        element[ELEMENT].as_str().unwrap_or_else(|| panic!("not an element: {element}")).to_string()
    }

    pub fn click(&self, css: &str) {
        let e = Browser::id(&self.find(css));
        self.call("POST", &format!("/element/{e}/click"), Some(json!({})));
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let e = Browser::id(&self.find(css));
        self.call("POST", &format!("/element/{e}/clear"), Some(json!({})));
        self.call("POST", &format!("/element/{e}/value"), Some(json!({"text": text})));
    }

    /// Presses keys (WebDriver key codes: "\u{E004}" is Tab) on whatever has the focus.
    pub fn keys(&self, keys: &str) {
        let actions: Vec<Value> = keys
            .chars()
            .flat_map(|k| {
                [json!({"type": "keyDown", "value": k.to_string()}), json!({"type": "keyUp", "value": k.to_string()})]
            })
            .collect();
        self.call(
            "POST",
            "/actions",
            Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})),
        );
    }

    /// The visible text of the first element `css` matches.
    pub fn text(&self, css: &str) -> String {
        self.js("const e = document.querySelector(arguments[0]); return e ? e.innerText : null;", json!([css]))
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Emulates the system's colour scheme (`light` or `dark`) through the DevTools protocol.
    pub fn color_scheme(&self, scheme: &str) {
        let params = json!({"media": "", "features": [{"name": "prefers-color-scheme", "value": scheme}]});
        self.call("POST", "/goog/cdp/execute", Some(json!({"cmd": "Emulation.setEmulatedMedia", "params": params})));
    }

    /// Saves a PNG of the viewport.
    pub fn screenshot(&self, path: &Path) {
        let png = self.call("GET", "/screenshot", None);
        let bytes = decode_base64(png.as_str().unwrap());
        std::fs::write(path, bytes).unwrap();
    }
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
