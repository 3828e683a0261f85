//! `http.get`, `http.request`, `http.get_json`, `http.post_json`, behind the
//! `http` capability. HTTP/1.1 with TLS through `ureq` (rustls, Mozilla's
//! root certificates); gzip bodies are decoded.
//!
//! A request runs on a helper thread while the script's thread waits on the
//! invocation's stop switch. On a stop, the runspace's agent is shut down:
//! ureq then shuts every socket it holds, so the helper's blocked read or
//! write fails at once and the thread ends within milliseconds, mid-headers
//! or mid-body alike. (A TCP connect still in progress is the exception: it
//! ends at its own timeout, though the script has already moved on.)
//!
//! Status codes are data, not errors: `http.get` returns a 404 like a 200.
//! Only the JSON helpers, which promise a decoded body, fail on a non-2xx.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use mlua::{Lua, Table, Value as LuaValue};
use serde_json::Value;
use ureq::{Agent, RequestExt};

use super::gate::{self, fail, record};
use super::HostContext;
use crate::capability::Capability;
use crate::convert::{from_lua, to_lua};

/// Seconds a request may take, all included, unless `timeout` says otherwise.
const DEFAULT_TIMEOUT: f64 = 30.0;

/// Largest response body read unless `max_bytes` says otherwise.
const DEFAULT_MAX_BYTES: u64 = 64 << 20;

/// How long a stopped request's helper thread gets to notice its socket shut.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// One request, read from the script's arguments.
struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    timeout: Duration,
    max_bytes: u64,
}

/// What came back.
struct Response {
    status: u16,
    reason: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// The runspace's agent (its connection pool), made on first use and
/// replaced after a stop shut it down.
type AgentSlot = Rc<RefCell<Option<Agent>>>;

/// Installs the `http` table.
pub(crate) fn install(lua: &Lua, globals: &Table, ctx: &HostContext) -> mlua::Result<()> {
    let http = lua.create_table()?;
    let agent: AgentSlot = Rc::default();

    let (c, a) = (ctx.clone(), agent.clone());
    http.raw_set(
        "get",
        lua.create_function(move |lua, (url, opts): (String, Option<Table>)| {
            gate::require(&c, Capability::Http, "http.get()")?;
            let req = request("http.get", "GET", url, opts, &["headers", "timeout", "max_bytes"])?;
            response_table(lua, perform(&c, &a, "http.get", req)?)
        })?,
    )?;

    let (c, a) = (ctx.clone(), agent.clone());
    http.raw_set(
        "request",
        lua.create_function(move |lua, spec: Table| {
            gate::require(&c, Capability::Http, "http.request()")?;
            let method: Option<String> = spec.get("method")?;
            let url: String = spec
                .get::<Option<String>>("url")?
                .ok_or_else(|| fail("http.request", "the 'url' field is required"))?;
            let allowed = ["method", "url", "headers", "body", "json", "timeout", "max_bytes"];
            let method = method.unwrap_or_else(|| "GET".into()).to_ascii_uppercase();
            let req = request("http.request", &method, url, Some(spec), &allowed)?;
            response_table(lua, perform(&c, &a, "http.request", req)?)
        })?,
    )?;

    let (c, a) = (ctx.clone(), agent.clone());
    http.raw_set(
        "get_json",
        lua.create_function(move |lua, (url, opts): (String, Option<Table>)| {
            let what = "http.get_json";
            gate::require(&c, Capability::Http, "http.get_json()")?;
            let mut req = request(what, "GET", url, opts, &["headers", "timeout", "max_bytes"])?;
            req.headers.push(("accept".into(), "application/json".into()));
            decode_json(lua, what, &req.url.clone(), perform(&c, &a, what, req)?)
        })?,
    )?;

    let (c, a) = (ctx.clone(), agent);
    http.raw_set(
        "post_json",
        lua.create_function(move |lua, (url, value, opts): (String, LuaValue, Option<Table>)| {
            let what = "http.post_json";
            gate::require(&c, Capability::Http, "http.post_json()")?;
            let mut req = request(what, "POST", url, opts, &["headers", "timeout", "max_bytes"])?;
            req.body = Some(serde_json::to_vec(&from_lua(&value)?).map_err(|e| fail(what, e))?);
            req.headers.push(("content-type".into(), "application/json".into()));
            req.headers.push(("accept".into(), "application/json".into()));
            decode_json(lua, what, &req.url.clone(), perform(&c, &a, what, req)?)
        })?,
    )?;

    globals.raw_set("http", http)
}

/// Reads a request's options (`allowed` names the fields this function takes).
fn request(what: &str, method: &str, url: String, opts: Option<Table>, allowed: &[&str]) -> mlua::Result<Request> {
    let mut req = Request {
        method: method.to_string(),
        url,
        headers: Vec::new(),
        body: None,
        timeout: gate::seconds(what, DEFAULT_TIMEOUT)?,
        max_bytes: DEFAULT_MAX_BYTES,
    };
    let Some(opts) = opts else { return Ok(req) };
    for pair in opts.pairs::<String, LuaValue>() {
        let (key, value) = pair?;
        if !allowed.contains(&key.as_str()) {
            return Err(fail(what, format!("unknown option '{key}' (expected one of: {})", allowed.join(", "))));
        }
        match key.as_str() {
            "headers" => {
                let LuaValue::Table(t) = value else { return Err(fail(what, "'headers' must be a table")) };
                for pair in t.pairs::<String, LuaValue>() {
                    let (name, v) = pair?;
                    req.headers.push((name, crate::convert::display(&v)));
                }
            }
            "body" => req.body = Some(gate::bytes(what, &value)?),
            "json" => {
                req.body = Some(serde_json::to_vec(&from_lua(&value)?).map_err(|e| fail(what, e))?);
                req.headers.push(("content-type".into(), "application/json".into()));
            }
            "timeout" => match value {
                LuaValue::Number(n) => req.timeout = gate::seconds(what, n)?,
                LuaValue::Integer(n) => req.timeout = gate::seconds(what, n as f64)?,
                _ => return Err(fail(what, "'timeout' must be a number of seconds")),
            },
            "max_bytes" => match value {
                LuaValue::Number(n) if n >= 0.0 => req.max_bytes = n as u64,
                LuaValue::Integer(n) if n >= 0 => req.max_bytes = n as u64,
                _ => return Err(fail(what, "'max_bytes' must be a non-negative number")),
            },
            // "method" and "url" were read by the caller.
            _ => {}
        }
    }
    Ok(req)
}

/// Runs `req` on a helper thread, waiting on the invocation's stop switch.
fn perform(ctx: &HostContext, slot: &AgentSlot, what: &str, req: Request) -> mlua::Result<Response> {
    gate::check(&ctx.control)?;
    let agent = slot.borrow_mut().get_or_insert_with(new_agent).clone();
    let (tx, rx) = crossbeam_channel::bounded(1);
    let label = format!("{what} {}", req.url);
    // ureq's global timeout ends the request; this only guards against it not doing so.
    let until = Instant::now() + req.timeout + SHUTDOWN_GRACE;
    let worker = agent.clone();
    std::thread::Builder::new()
        .name("runspace-http".into())
        .spawn(move || {
            let _ = tx.send(send(&worker, req));
        })
        .map_err(|e| fail(what, format!("cannot start the request thread: {e}")))?;
    let stop = match gate::wait(&ctx.control, &rx, Some(until)) {
        Ok(Some(result)) => return result.map_err(|e| mlua::Error::runtime(format!("{label}: {e}"))),
        Ok(None) => None,
        Err(stop) => Some(stop),
    };
    // Stopped or overdue: shut the agent's sockets so the helper thread
    // ends now, and give it a moment to do so.
    slot.borrow_mut().take();
    agent.shutdown();
    let _ = rx.recv_timeout(SHUTDOWN_GRACE);
    Err(stop.unwrap_or_else(|| mlua::Error::runtime(format!("{label}: timed out"))))
}

fn new_agent() -> Agent {
    Agent::config_builder()
        .http_status_as_error(false)
        .user_agent(concat!("runspace/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// Sends one request and reads the whole response (on the helper thread).
fn send(agent: &Agent, req: Request) -> Result<Response, String> {
    let mut builder = ureq::http::Request::builder().method(req.method.as_str()).uri(req.url.as_str());
    for (name, value) in &req.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let response = match req.body {
        None => builder
            .body(())
            .map_err(|e| e.to_string())?
            .with_agent(agent)
            .configure()
            .timeout_global(Some(req.timeout))
            .run(),
        Some(body) => builder
            .body(body)
            .map_err(|e| e.to_string())?
            .with_agent(agent)
            .configure()
            .timeout_global(Some(req.timeout))
            .run(),
    };
    let mut response = response.map_err(|e| e.to_string())?;
    let status = response.status();
    let mut headers: Vec<(String, String)> = Vec::new();
    for (name, value) in response.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match headers.iter_mut().find(|(n, _)| n == name.as_str()) {
            // Repeated headers are joined as RFC 9110 allows.
            Some((_, v)) => {
                v.push_str(", ");
                v.push_str(&value);
            }
            None => headers.push((name.as_str().to_string(), value)),
        }
    }
    let body = response.body_mut().with_config().limit(req.max_bytes).read_to_vec().map_err(|e| e.to_string())?;
    Ok(Response { status: status.as_u16(), reason: status.canonical_reason().unwrap_or("").to_string(), headers, body })
}

/// `{status, ok, headers, body}`; header names are lower case.
fn response_table(lua: &Lua, r: Response) -> mlua::Result<Table> {
    let headers = lua.create_table()?;
    for (name, value) in r.headers {
        headers.raw_set(name, value)?;
    }
    record(
        lua,
        [
            ("status", LuaValue::Number(r.status as f64)),
            ("ok", LuaValue::Boolean((200..300).contains(&r.status))),
            ("headers", LuaValue::Table(headers)),
            ("body", LuaValue::String(lua.create_string(r.body)?)),
        ],
    )
}

/// The decoded body of a 2xx response (nil when empty); an error otherwise.
fn decode_json(lua: &Lua, what: &str, url: &str, r: Response) -> mlua::Result<LuaValue> {
    if !(200..300).contains(&r.status) {
        let snippet: String = String::from_utf8_lossy(&r.body).chars().take(200).collect();
        return Err(fail(what, format!("{url}: {} {}: {snippet}", r.status, r.reason)));
    }
    if r.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(LuaValue::Nil);
    }
    let v: Value = crate::json::parse(&r.body).map_err(|e| fail(what, format!("{url}: the body is not JSON: {e}")))?;
    to_lua(lua, &v)
}
