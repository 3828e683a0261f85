//! Helpers for the job server tests: a server process on port 0 in a temp
//! state directory, killed when the test ends, and an HTTP client with timeouts.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const RSP: &str = env!("CARGO_BIN_EXE_rsp");

/// A running `rsp serve`, killed (SIGKILL) on drop unless already gone.
pub struct Server {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub base: String,
    pub token: String,
}

impl Server {
    pub fn start(dir: &Path, extra: &[&str]) -> Server {
        let log = std::fs::File::create(dir.join("test-server.log")).unwrap();
        let child = Command::new(RSP)
            .args(["serve", "--port", "0", "--state-dir"])
            .arg(dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let pid = child.id();
        // Owned by the Server at once, so a failed start still kills it.
        let mut server =
            Server { child: Some(child), dir: dir.to_path_buf(), base: String::new(), token: String::new() };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let info: Option<Value> =
                std::fs::read_to_string(dir.join("server.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
            if let Some(info) = info.filter(|i| i["pid"].as_u64() == Some(u64::from(pid))) {
                server.token = std::fs::read_to_string(dir.join("token")).unwrap().trim().to_string();
                server.base = format!("http://{}", info["addr"].as_str().unwrap());
                return server;
            }
            assert!(Instant::now() < deadline, "server did not start: {}", log_of(dir));
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Takes over a server started by the test itself (under a wrapper,
    /// say) and waits until it has written its address.
    pub fn adopt(child: Child, dir: &Path) -> Server {
        let mut server =
            Server { child: Some(child), dir: dir.to_path_buf(), base: String::new(), token: String::new() };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let info: Option<Value> =
                std::fs::read_to_string(dir.join("server.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
            if let Some(info) = info {
                server.token = std::fs::read_to_string(dir.join("token")).unwrap().trim().to_string();
                server.base = format!("http://{}", info["addr"].as_str().unwrap());
                return server;
            }
            assert!(Instant::now() < deadline, "server did not start: {}", log_of(dir));
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits (up to `limit`) for the exit code.
    pub fn terminate(&mut self, limit: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        call(&self.base, Some(&self.token), method, path, body)
    }

    /// Polls `GET /v1/jobs/NAME` until `ok` holds (at most 15 s).
    pub fn until(&self, name: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (_, job) = self.call("GET", &format!("/v1/jobs/{name}"), None);
            if ok(&job) {
                return job;
            }
            assert!(Instant::now() < deadline, "condition not reached for {name}: {job}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("test-server.log")).unwrap_or_default()
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// One request; returns the status and the JSON body (null when empty).
pub fn call(base: &str, token: Option<&str>, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let agent = agent();
    let url = format!("{base}{path}");
    let auth = token.map(|t| format!("Bearer {t}"));
    let result = match method {
        "GET" => {
            let mut r = agent.get(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        "DELETE" => {
            let mut r = agent.delete(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        _ => {
            let mut r = agent.post(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.send_json(body.cloned().unwrap_or(Value::Object(Default::default())))
        }
    };
    let mut response = result.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() })
}

/// Runs `rsp ARGS` (set up by `setup`) to its end, killing it after 30 s:
/// a command here must never hang, even one that wrongly starts serving.
pub fn rsp_with(args: &[&str], setup: impl FnOnce(&mut Command)) -> std::process::Output {
    let mut command = Command::new(RSP);
    command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    setup(&mut command);
    let child = command.spawn().unwrap();
    let pid = child.id() as i32;
    // Read its output while it runs (a large output must not fill the pipe).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("rsp {args:?} did not finish within 30 s");
        }
    }
}

/// Kills (SIGKILL) the server whose pid `DIR/server.json` names.
pub struct KillServerOf(pub PathBuf);

impl Drop for KillServerOf {
    fn drop(&mut self) {
        let info: Option<Value> =
            std::fs::read_to_string(self.0.join("server.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
        if let Some(pid) = info.and_then(|i| i["pid"].as_i64()) {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}
