//! Helpers for the dashboard tests: a logged-in HTTP session (over ureq),
//! and a real browser (Debian's `chromium`, driven through `chromedriver`
//! with the `fantoccini` WebDriver client; nothing downloads a browser).
//!
//! One chromedriver serves the whole test binary; each test gets its own
//! browser (a session with a fresh profile). The tests are plain `#[test]`
//! functions: a [`Browser`] owns a small tokio runtime and blocks on each
//! WebDriver call, so a test reads as the steps a user takes.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::key::Key;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

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
    // PDEATHSIG set: when the binary exits (however it exits), the kernel
    // kills this chromedriver, by its pid (the signal follows the death of
    // the thread that started it, so that thread never ends).
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
    // Ready when it listens; the first session is retried a little anyway.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Driver { url: format!("http://127.0.0.1:{port}"), _child: child })
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
    let mut capabilities = fantoccini::wd::Capabilities::new();
    capabilities.insert("browserName".into(), json!("chrome"));
    capabilities.insert("goog:chromeOptions".into(), options);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // chromedriver is on plain http://127.0.0.1: no TLS connector.
    let mut builder = ClientBuilder::new(HttpConnector::new());
    builder.capabilities(capabilities);
    let client = runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match builder.connect(&driver.url).await {
                Ok(client) => return client,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("no WebDriver session yet ({e}); retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no WebDriver session: {e}"),
            }
        }
    });
    let browser = Browser { client: Some(client), runtime, _profile: profile, _turn: turn };
    browser.size(width, height);
    Some(browser)
}

/// A browser window (a WebDriver session); closed on drop.
pub struct Browser {
    /// Taken on drop, to close the session.
    client: Option<Client>,
    /// Runs the client's calls (and its session task) while a test blocks on one.
    runtime: tokio::runtime::Runtime,
    _profile: tempfile::TempDir,
    _turn: MutexGuard<'static, ()>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ =
                self.runtime.block_on(async { tokio::time::timeout(Duration::from_secs(10), client.close()).await });
        }
    }
}

impl Browser {
    /// Runs one WebDriver call to its end; panics with the driver's message
    /// (naming `what`) on an error.
    fn run<T, F>(&self, what: &str, call: impl FnOnce(Client) -> F) -> T
    where
        F: std::future::Future<Output = Result<T, fantoccini::error::CmdError>>,
    {
        let client = self.client.clone().expect("an open session");
        self.runtime.block_on(call(client)).unwrap_or_else(|e| panic!("WebDriver {what}: {e}"))
    }

    /// Makes the page's viewport (not the window) `width` × `height`.
    pub fn size(&self, width: u32, height: u32) {
        self.run("set the window size", |c| async move { c.set_window_size(width, height).await });
        let inner = self.js("return [window.innerWidth, window.innerHeight]", json!([]));
        let (w, h) = (inner[0].as_u64().unwrap_or(0) as u32, inner[1].as_u64().unwrap_or(0) as u32);
        if (w, h) != (width, height) && w > 0 && h > 0 {
            let (outer_w, outer_h) = (2 * width - w.min(2 * width), 2 * height - h.min(2 * height));
            self.run("set the window size", |c| async move { c.set_window_size(outer_w, outer_h).await });
        }
    }

    pub fn goto(&self, url: &str) {
        self.run("go to a page", |c| async move { c.goto(url).await });
    }

    pub fn url(&self) -> String {
        self.run("read the URL", |c| async move { c.current_url().await }).to_string()
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns its value.
    pub fn js(&self, script: &str, args: Value) -> Value {
        let args = match args {
            Value::Array(args) => args,
            other => vec![other],
        };
        self.run("run a script", |c| async move { c.execute(script, args).await })
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
    fn find(&self, css: &str) -> fantoccini::elements::Element {
        let found = self.runtime.block_on(
            self.client
                .as_ref()
                .expect("an open session")
                .wait()
                .at_most(Duration::from_secs(10))
                .for_element(Locator::Css(css)),
        );
        found.unwrap_or_else(|e| panic!("no element {css} in {}: {e}", self.url()))
    }

    pub fn click(&self, css: &str) {
        let e = self.find(css);
        self.runtime.block_on(e.click()).unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.runtime
            .block_on(async {
                e.clear().await?;
                e.send_keys(text).await
            })
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Presses `keys` one after the other on whatever has the focus.
    pub fn keys(&self, keys: &[Key]) {
        let presses = keys.iter().fold(KeyActions::new("keyboard".into()), |presses, &key| {
            presses.then(KeyAction::Down { value: key.into() }).then(KeyAction::Up { value: key.into() })
        });
        self.run("press keys", |c| async move { c.perform_actions(presses).await });
    }

    /// The visible text of the first element `css` matches.
    pub fn text(&self, css: &str) -> String {
        self.js("const e = document.querySelector(arguments[0]); return e ? e.innerText : null;", json!([css]))
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Emulates the system's colour scheme (`light` or `dark`) through the
    /// DevTools protocol (a chromedriver command: WebDriver has none).
    pub fn color_scheme(&self, scheme: &str) {
        let params = json!({"media": "", "features": [{"name": "prefers-color-scheme", "value": scheme}]});
        let command = ChromeDevTools { cmd: "Emulation.setEmulatedMedia", params };
        self.run("emulate a colour scheme", |c| async move { c.issue_cmd(command).await });
    }

    /// Saves a PNG of the viewport.
    pub fn screenshot(&self, path: &Path) {
        let png = self.run("take a screenshot", |c| async move { c.screenshot().await });
        std::fs::write(path, png).unwrap();
    }
}

/// chromedriver's `POST /session/{id}/goog/cdp/execute`: one DevTools
/// protocol command, sent through fantoccini's extension point for
/// vendor commands.
#[derive(Debug)]
struct ChromeDevTools {
    cmd: &'static str,
    params: Value,
}

impl WebDriverCompatibleCommand for ChromeDevTools {
    fn endpoint(&self, base_url: &url::Url, session_id: Option<&str>) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/goog/cdp/execute", session_id.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (ureq::http::Method, Option<String>) {
        (ureq::http::Method::POST, Some(json!({"cmd": self.cmd, "params": self.params}).to_string()))
    }
}
