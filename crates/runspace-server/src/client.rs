//! Talking to a job server: finds it through the state directory, sends the
//! token, and turns every failure into a message that says what to do.

use std::time::Duration;

use runspace::units::format_size;
use serde_json::Value;
use ureq::Agent;

use crate::limits::MAX_REQUEST_BODY;

use crate::state::StatePaths;

/// The largest answer read: pages are bounded well below it, so a larger
/// one is an error to report, never something to drop silently.
const MAX_RESPONSE: u64 = 1 << 30;
/// How long an ordinary request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed client operation: the message, the exit code, and whether the
/// server is simply not running (so `rsp job start` may start one).
#[derive(Debug)]
pub struct ClientError {
    /// What went wrong.
    pub message: String,
    /// The exit code it deserves: 2 for a request the server refused as
    /// invalid, 1 otherwise.
    pub code: i32,
    /// No server runs (or answers) for the state directory.
    pub server_down: bool,
}

impl ClientError {
    /// A request that is invalid as given (exit code 2).
    pub fn usage(message: impl Into<String>) -> ClientError {
        ClientError { message: message.into(), code: 2, server_down: false }
    }

    /// Any other failure (exit code 1).
    pub fn other(message: impl Into<String>) -> ClientError {
        ClientError { message: message.into(), code: 1, server_down: false }
    }

    fn down(message: String) -> ClientError {
        ClientError { message, code: 1, server_down: true }
    }
}

/// A connection to one server.
pub struct Client {
    base: String,
    token: String,
    agent: Agent,
    dir: String,
}

/// A request body, refused here when the server would refuse it for its
/// size (it answers 413, but the client may still be writing the body then
/// and see only a broken pipe).
fn request_body(body: &Value) -> Result<Vec<u8>, ClientError> {
    let bytes = serde_json::to_vec(body).map_err(|e| ClientError::other(format!("cannot encode the request: {e}")))?;
    if bytes.len() as u64 > MAX_REQUEST_BODY {
        return Err(ClientError::usage(format!(
            "request body too large: {} (limit {}); split the inputs into several jobs",
            format_size(bytes.len() as u64),
            format_size(MAX_REQUEST_BODY)
        )));
    }
    Ok(bytes)
}

impl Client {
    /// Finds the server of `paths`: its lock must be held, its address and
    /// token readable.
    pub fn connect(paths: &StatePaths) -> Result<Client, ClientError> {
        let dir = paths.dir.display().to_string();
        if !paths.server_running() {
            return Err(ClientError::down(format!("no job server is running for {dir}")));
        }
        let (addr, _) = paths
            .address()
            .ok_or_else(|| ClientError::down(format!("the job server for {dir} has not written its address yet")))?;
        let token = paths.read_token().map_err(ClientError::other)?;
        let agent: Agent =
            Agent::config_builder().http_status_as_error(false).timeout_global(Some(REQUEST_TIMEOUT)).build().into();
        Ok(Client { base: format!("http://{addr}"), token, agent, dir })
    }

    /// `GET path`, answered as JSON.
    pub fn get(&self, path: &str) -> Result<Value, ClientError> {
        let r = self.agent.get(format!("{}{path}", self.base)).header("Authorization", self.bearer()).call();
        self.answer(r)
    }

    /// `POST path` with a JSON body, answered as JSON. A body over the
    /// server's limit is refused here, saying so, rather than cut off.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let body = request_body(body)?;
        let r = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", self.bearer())
            .header("Content-Type", "application/json")
            .send(&body[..]);
        self.answer(r)
    }

    /// A GET that may legitimately block for `wait` (a follow request).
    pub fn get_timeout(&self, path: &str, wait: Duration) -> Result<Value, ClientError> {
        let r = self
            .agent
            .get(format!("{}{path}", self.base))
            .config()
            .timeout_global(Some(wait + REQUEST_TIMEOUT))
            .build()
            .header("Authorization", self.bearer())
            .call();
        self.answer(r)
    }

    /// A POST that may legitimately block for `wait` (a wait request).
    pub fn post_timeout(&self, path: &str, body: &Value, wait: Duration) -> Result<Value, ClientError> {
        let body = request_body(body)?;
        let r = self
            .agent
            .post(format!("{}{path}", self.base))
            .config()
            .timeout_global(Some(wait + REQUEST_TIMEOUT))
            .build()
            .header("Authorization", self.bearer())
            .header("Content-Type", "application/json")
            .send(&body[..]);
        self.answer(r)
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> Result<Value, ClientError> {
        let r = self.agent.delete(format!("{}{path}", self.base)).header("Authorization", self.bearer()).call();
        self.answer(r)
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    fn answer(&self, r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Value, ClientError> {
        let mut response = match r {
            Ok(r) => r,
            Err(ureq::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(ClientError::down(format!(
                    "the job server for {} does not answer at {} (it may have died)",
                    self.dir, self.base
                )))
            }
            Err(e) => return Err(ClientError::other(format!("cannot reach the job server at {}: {e}", self.base))),
        };
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_string()
            .map_err(|e| ClientError::other(format!("cannot read the job server's answer ({status}): {e}")))?;
        let body: Value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        let message = || body["error"].as_str().map_or_else(|| body.to_string(), str::to_string);
        match status {
            200..=299 => Ok(body),
            401 => Err(ClientError::other(format!(
                "the job server refused our token ({}); is {} the token of the server at {}?",
                message(),
                self.dir,
                self.base
            ))),
            400 | 409 | 413 => Err(ClientError::usage(message())),
            _ => Err(ClientError::other(message())),
        }
    }
}
