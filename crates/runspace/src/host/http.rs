//! `http.get`, `http.request`, `http.get_json`, `http.post_json`, behind the
//! `http` capability. HTTP/1.1 with TLS through `reqwest` (rustls, Mozilla's
//! root certificates); gzip bodies are decoded, up to 10 redirects followed.
//!
//! Why reqwest: items are Luau threads on one event loop per runspace, so
//! a request must be a future that yields the item's thread, not a
//! blocking call on a helper thread (what ureq offered). reqwest is the
//! maintained async client built on hyper and tokio that already does what
//! the host promised with ureq: redirects, gzip, proxies from the
//! environment, rustls with webpki roots, HTTP/1.1 only (no `http2`
//! feature), and it streams the body so `max_bytes` is enforced as it
//! arrives. hyper-util's client with hyper-rustls would do the same with
//! redirects, proxies and decompression written here by hand.
//!
//! A stop or the item's deadline drops the request future: hyper closes
//! the connection at once, mid-connect, mid-headers or mid-body alike.
//!
//! Status codes are data, not errors: `http.get` returns a 404 like a 200.
//! Only the JSON helpers, which promise a decoded body, fail on a non-2xx.

use std::cell::RefCell;
use std::error::Error as _;
use std::rc::Rc;
use std::time::Duration;

use mlua::{Lua, Table, Value as LuaValue};
use serde_json::Value;

use super::gate::{self, fail, record};
use super::HostContext;
use crate::capability::Capability;
use crate::control::Switch;
use crate::convert::{from_lua, to_lua};

/// Seconds a request may take, all included, unless `timeout` says otherwise.
const DEFAULT_TIMEOUT: f64 = 30.0;

/// Largest response body read unless `max_bytes` says otherwise.
const DEFAULT_MAX_BYTES: u64 = 64 << 20;

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

/// The runspace's client (its connection pool), made on first use.
type ClientSlot = Rc<RefCell<Option<reqwest::Client>>>;

/// Installs the `http` table.
pub(crate) fn install(lua: &Lua, globals: &Table, ctx: &HostContext) -> mlua::Result<()> {
    let http = lua.create_table()?;
    let client: ClientSlot = Rc::default();

    let (c, a) = (ctx.clone(), client.clone());
    http.raw_set(
        "get",
        super::waiting_function(lua, move |lua, (url, opts): (String, Option<Table>)| {
            let started = start(&lua, &c, &a, "http.get()", || {
                request("http.get", "GET", url, opts, &["headers", "timeout", "max_bytes"])
            });
            async move {
                let (client, switch, req) = started?;
                response_table(&lua, perform(client, &switch, "http.get", req).await?)
            }
        })?,
    )?;

    let (c, a) = (ctx.clone(), client.clone());
    http.raw_set(
        "request",
        super::waiting_function(lua, move |lua, spec: Table| {
            let started = start(&lua, &c, &a, "http.request()", || {
                let method: Option<String> = spec.get("method")?;
                let url: String = spec
                    .get::<Option<String>>("url")?
                    .ok_or_else(|| fail("http.request", "the 'url' field is required"))?;
                let allowed = ["method", "url", "headers", "body", "json", "timeout", "max_bytes"];
                let method = method.unwrap_or_else(|| "GET".into()).to_ascii_uppercase();
                request("http.request", &method, url, Some(spec), &allowed)
            });
            async move {
                let (client, switch, req) = started?;
                response_table(&lua, perform(client, &switch, "http.request", req).await?)
            }
        })?,
    )?;

    let (c, a) = (ctx.clone(), client.clone());
    http.raw_set(
        "get_json",
        super::waiting_function(lua, move |lua, (url, opts): (String, Option<Table>)| {
            let what = "http.get_json";
            let started = start(&lua, &c, &a, "http.get_json()", || {
                let mut req = request(what, "GET", url, opts, &["headers", "timeout", "max_bytes"])?;
                req.headers.push(("accept".into(), "application/json".into()));
                Ok(req)
            });
            async move {
                let (client, switch, req) = started?;
                let url = req.url.clone();
                decode_json(&lua, what, &url, perform(client, &switch, what, req).await?)
            }
        })?,
    )?;

    let (c, a) = (ctx.clone(), client);
    http.raw_set(
        "post_json",
        super::waiting_function(lua, move |lua, (url, value, opts): (String, LuaValue, Option<Table>)| {
            let what = "http.post_json";
            let started = start(&lua, &c, &a, "http.post_json()", || {
                let mut req = request(what, "POST", url, opts, &["headers", "timeout", "max_bytes"])?;
                req.body = Some(serde_json::to_vec(&from_lua(&value)?).map_err(|e| fail(what, e))?);
                req.headers.push(("content-type".into(), "application/json".into()));
                req.headers.push(("accept".into(), "application/json".into()));
                Ok(req)
            });
            async move {
                let (client, switch, req) = started?;
                let url = req.url.clone();
                decode_json(&lua, what, &url, perform(client, &switch, what, req).await?)
            }
        })?,
    )?;

    globals.raw_set("http", http)
}

/// What a request needs before it yields: the grant checked, the options
/// read (while the script's tables are at hand), the client, the caller's switch.
fn start(
    lua: &Lua,
    ctx: &HostContext,
    slot: &ClientSlot,
    name: &str,
    read: impl FnOnce() -> mlua::Result<Request>,
) -> mlua::Result<(reqwest::Client, std::sync::Arc<Switch>, Request)> {
    gate::require(ctx, Capability::Http, name)?;
    ctx.waits_here(lua, name.trim_end_matches("()"))?;
    let req = read()?;
    gate::check(ctx)?;
    let client = match &*slot.borrow() {
        Some(client) => client.clone(),
        None => new_client().map_err(|e| fail(name.trim_end_matches("()"), describe(&e)))?,
    };
    slot.borrow_mut().get_or_insert_with(|| client.clone());
    Ok((client, ctx.switch(), req))
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

/// Sends `req` and reads its response within its timeout, unless the item
/// is stopped or times out first (then the request is dropped, closing its
/// connection).
async fn perform(client: reqwest::Client, switch: &Switch, what: &str, req: Request) -> mlua::Result<Response> {
    let label = format!("{what} {}", req.url);
    let timeout = req.timeout;
    match gate::guard(switch, tokio::time::timeout(timeout, send(&client, req))).await? {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => Err(mlua::Error::runtime(format!("{label}: {e}"))),
        Err(_elapsed) => {
            Err(mlua::Error::runtime(format!("{label}: timed out after {}", humantime::format_duration(timeout))))
        }
    }
}

fn new_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("runspace/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::limited(10))
        .build()
}

/// An error with its causes ("error sending request: connection refused").
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// Sends one request and reads the whole response, at most `max_bytes` of body.
async fn send(client: &reqwest::Client, req: Request) -> Result<Response, String> {
    let method = reqwest::Method::from_bytes(req.method.as_bytes()).map_err(|e| e.to_string())?;
    let mut builder = client.request(method, req.url.as_str());
    for (name, value) in &req.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    if let Some(body) = req.body {
        builder = builder.body(body);
    }
    let mut response = builder.send().await.map_err(|e| describe(&e))?;
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
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
        if (body.len() + chunk.len()) as u64 > req.max_bytes {
            return Err(format!("the body is over the limit of {} bytes (max_bytes)", req.max_bytes));
        }
        body.extend_from_slice(&chunk);
    }
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
