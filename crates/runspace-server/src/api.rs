//! The HTTP JSON API (documented in docs/jobs-openapi.yaml). Every route
//! needs `Authorization: Bearer TOKEN`. Handlers that block (the job
//! manager, SQLite) run on tokio's blocking pool.

mod context;
mod errors;
mod verbs;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use runspace::{auto_job_name, check_job_name, Error, Grants, JobError, JobManager, JobSpec, Script, SessionState};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::store::{JobStore, NewJob, StoreError};

/// The longest a wait request may block.
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// The most records in one page.
const MAX_PAGE: u64 = 10_000;
/// The most runspaces one job may ask for (a bound before any thread starts).
const MAX_THROTTLE: usize = 1024;
/// The largest request body accepted (a `413` beyond it).
pub const MAX_BODY: usize = 8 << 20;

/// What every handler shares.
pub(crate) struct App {
    pub(crate) manager: JobManager,
    pub(crate) store: Arc<dyn JobStore>,
    pub(crate) token: String,
    /// Notified by `POST /v1/shutdown`: the server then stops as on SIGTERM.
    pub(crate) shutdown: tokio::sync::Notify,
    /// How long running jobs may finish when the server stops.
    pub(crate) grace: Duration,
}

/// An error answer: a status and `{"error": message}`.
pub(crate) struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1, "status": self.0.as_u16()}))).into_response()
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

fn internal(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, message.into())
}

fn not_found(name: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, JobError::NotFound(name.to_string()).to_string())
}

type ApiResult = Result<Response, ApiError>;

/// The router, with the token check in front of every route.
pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/jobs", post(submit).get(list).delete(verbs::clean))
        .route("/v1/jobs/{name}", get(get_job).delete(remove))
        .route("/v1/jobs/{name}/output", get(output))
        .route("/v1/jobs/{name}/wait", post(wait))
        .route("/v1/jobs/{name}/stop", post(stop))
        .route("/v1/wait", post(wait_all))
        .merge(verbs::routes())
        .fallback(errors::no_route)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(app.clone(), auth))
        .layer(middleware::from_fn(errors::json_errors))
        .with_state(app)
}

async fn auth(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(given.trim().as_bytes(), app.token.as_bytes()) {
        let why = if given.is_empty() { "missing token" } else { "bad token" };
        return ApiError(StatusCode::UNAUTHORIZED, format!("{why}: send 'Authorization: Bearer TOKEN'"))
            .into_response();
    }
    next.run(request).await
}

/// Compares without an early exit, so timing does not leak the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Runs blocking work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| internal(format!("handler failed: {e}")))
}

async fn health(State(app): State<Arc<App>>) -> ApiResult {
    let running = blocking(move || app.manager.running().len()).await?;
    Ok(Json(json!({"ok": true, "version": env!("CARGO_PKG_VERSION"), "pid": std::process::id(), "running": running}))
        .into_response())
}

/// The body of `POST /v1/jobs`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Submit {
    name: Option<String>,
    script: String,
    script_name: Option<String>,
    #[serde(default)]
    params: Map<String, Value>,
    #[serde(default)]
    variables: Map<String, Value>,
    #[serde(default)]
    modules: Vec<ModuleSource>,
    #[serde(default)]
    allow: Vec<String>,
    memory_limit: Option<usize>,
    timeout_ms: Option<u64>,
    inputs: Option<Vec<Value>>,
    range: Option<RangeSpec>,
    throttle: Option<usize>,
    /// The submitter's working directory (absolute); default `/`.
    cwd: Option<String>,
    /// The environment the job's programs and `env` see; default none.
    env: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModuleSource {
    name: String,
    source: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeSpec {
    start: i64,
    end: i64,
}

/// Builds the job from a request: compiles the script and modules, so a
/// syntax error is a 400 that names the line.
fn build_spec(req: &Submit) -> Result<(JobSpec, u64), ApiError> {
    let script_name = req.script_name.as_deref().unwrap_or("script");
    let script = Script::named(script_name, &req.script).map_err(engine_error)?;
    let mut spec = JobSpec::new(&script);
    for (k, v) in &req.params {
        spec = spec.param(k, v.clone());
    }
    let custom = !req.variables.is_empty() || !req.modules.is_empty() || !req.allow.is_empty();
    if custom || req.memory_limit.is_some() {
        let mut session = SessionState::new();
        for (k, v) in &req.variables {
            session = session.variable(k, v.clone()).map_err(engine_error)?;
        }
        for m in &req.modules {
            session = session.module(&m.name, &m.source).map_err(engine_error)?;
        }
        let mut grants = Grants::default();
        for cap in &req.allow {
            grants.grant_spec(cap).map_err(|e| bad(format!("allow: {e}")))?;
        }
        session = context::apply(session.grants_from(grants), req)?;
        if let Some(limit) = req.memory_limit {
            session = session.memory_limit(limit);
        }
        spec = spec.session(session);
    }
    if let Some(ms) = req.timeout_ms {
        spec = spec.timeout(Duration::from_millis(ms));
    }
    if let Some(t) = req.throttle {
        if t > MAX_THROTTLE {
            return Err(bad(format!("throttle: at most {MAX_THROTTLE} runspaces")));
        }
        spec = spec.throttle(t);
    }
    match (&req.inputs, &req.range) {
        (Some(_), Some(_)) => return Err(bad("give inputs or range, not both")),
        (Some(inputs), None) => spec = spec.inputs(inputs.clone()),
        (None, Some(r)) if r.start.abs_diff(r.end) >= 10_000_000 => {
            return Err(bad("range: more than 10,000,000 items; split it into several jobs"))
        }
        (None, Some(r)) => spec = spec.range(r.start, r.end),
        (None, None) => {}
    }
    let total = spec.total();
    Ok((spec, total))
}

fn engine_error(e: Error) -> ApiError {
    let kind = if matches!(e, Error::Syntax { .. }) { "syntax error" } else { "invalid job" };
    ApiError(StatusCode::BAD_REQUEST, format!("{kind}: {e}").replacen("syntax error: syntax error", "syntax error", 1))
}

async fn submit(State(app): State<Arc<App>>, body: Bytes) -> ApiResult {
    let req: Submit = serde_json::from_slice(&body).map_err(|e| bad(format!("invalid request body: {e}")))?;
    blocking(move || create(&app, &req, None)).await?
}

/// Stores and starts the job `req` describes; `origin` is the job it
/// restarts or reruns, if any. Answers `201 {name, state, progress}`.
fn create(app: &App, req: &Submit, origin: Option<&str>) -> ApiResult {
    let (spec, total) = build_spec(req)?;
    let parallel = req.inputs.is_some() || req.range.is_some();
    let request = serde_json::to_string(&request_record(req, origin)).map_err(|e| internal(e.to_string()))?;
    let inputs = req.inputs.as_ref().map(|i| Value::Array(i.clone()).to_string());
    let given = req.name.clone();
    if let Some(name) = &given {
        check_job_name(name).map_err(|e| bad(e.to_string()))?;
    }
    // Store first, then start: the row exists before any event about it.
    let mut attempts = 0;
    let name = loop {
        let name = given.clone().unwrap_or_else(auto_job_name);
        let job = NewJob {
            name: name.clone(),
            parallel,
            request: request.clone(),
            total,
            at: SystemTime::now(),
            inputs: inputs.clone(),
        };
        match app.store.insert(job) {
            Ok(()) => break name,
            Err(StoreError::Duplicate(_)) if given.is_none() && attempts < 5 => attempts += 1,
            Err(StoreError::Duplicate(_)) => {
                return Err(ApiError(StatusCode::CONFLICT, JobError::Duplicate(name).to_string()))
            }
            Err(e) => return Err(internal(e.to_string())),
        }
    };
    match app.manager.start(spec.name(name.clone())) {
        Ok(_) => {
            let state = app.manager.get(&name).map(|j| j.state.to_string()).unwrap_or_else(|_| "Queued".into());
            let body = json!({"name": name, "state": state, "progress": {"done": 0, "total": total}});
            Ok((StatusCode::CREATED, Json(body)).into_response())
        }
        Err(e) => {
            let _ = app.store.delete(&name);
            let status = match e {
                JobError::Duplicate(_) => StatusCode::CONFLICT,
                JobError::Closed => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            Err(ApiError(status, e.to_string()))
        }
    }
}

/// What is kept of a request: everything but bulky inputs, which are
/// counted here and kept apart ([`NewJob::inputs`]) for restarts. `env`
/// may hold secrets: the request is never served back by the API.
fn request_record(req: &Submit, origin: Option<&str>) -> Value {
    json!({
        "cwd": req.cwd,
        "env": req.env,
        "origin": origin,
        "script": req.script,
        "script_name": req.script_name.as_deref().unwrap_or("script"),
        "params": req.params,
        "variables": req.variables,
        "modules": req.modules.iter().map(|m| json!({"name": m.name, "source": m.source})).collect::<Vec<_>>(),
        "allow": req.allow,
        "memory_limit": req.memory_limit,
        "timeout_ms": req.timeout_ms,
        "throttle": req.throttle,
        "range": req.range.as_ref().map(|r| json!({"start": r.start, "end": r.end})),
        "inputs": req.inputs.as_ref().map(|i| i.len()),
    })
}

fn page(q: &HashMap<String, String>) -> Result<(u64, u64), ApiError> {
    let num = |key: &str, default: u64| -> Result<u64, ApiError> {
        q.get(key).map_or(Ok(default), |v| v.parse().map_err(|_| bad(format!("{key}: '{v}' is not a whole number"))))
    };
    let (offset, limit) = (num("offset", 0)?, num("limit", 100)?);
    if offset > i64::MAX as u64 {
        return Err(bad(format!("offset: at most {}", i64::MAX)));
    }
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(bad(format!("limit: from 1 to {MAX_PAGE}")));
    }
    Ok((offset, limit))
}

async fn list(State(app): State<Arc<App>>, Query(q): Query<HashMap<String, String>>) -> ApiResult {
    let (offset, limit) = page(&q)?;
    let state = match q.get("state") {
        Some(s) => Some(s.parse::<runspace::JobState>().map_err(bad)?.to_string()),
        None => None,
    };
    let (total, jobs) = blocking(move || app.store.list(state.as_deref(), offset, limit))
        .await?
        .map_err(|e| internal(e.to_string()))?;
    Ok(Json(json!({"total": total, "offset": offset, "limit": limit, "jobs": jobs})).into_response())
}

async fn get_job(State(app): State<Arc<App>>, Path(name): Path<String>) -> ApiResult {
    let job =
        blocking(move || app.store.get(&name).map(|j| j.ok_or(name))).await?.map_err(|e| internal(e.to_string()))?;
    job.map(|j| Json(j).into_response()).map_err(|name| not_found(&name))
}

async fn output(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let (offset, limit) = page(&q)?;
    let found = blocking(move || app.store.output(&name, offset, limit).map(|o| o.ok_or(name)))
        .await?
        .map_err(|e| internal(e.to_string()))?;
    let (total, records) = found.map_err(|name| not_found(&name))?;
    Ok(Json(json!({"total": total, "offset": offset, "limit": limit, "records": records})).into_response())
}

fn timeout_param(q: &HashMap<String, String>) -> Result<Duration, ApiError> {
    match q.get("timeout") {
        None => Ok(Duration::from_secs(30)),
        Some(t) => {
            runspace::units::parse_duration(t).map(|d| d.min(MAX_WAIT)).map_err(|e| bad(format!("timeout: {e}")))
        }
    }
}

async fn wait(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let timeout = timeout_param(&q)?;
    blocking(move || {
        let finished = match app.manager.wait(&name, timeout) {
            Ok(_) => true,
            Err(JobError::Timeout { .. }) => false,
            // Not held in memory: finished earlier (or by a previous server).
            Err(JobError::NotFound(_)) => true,
            Err(e) => return Err(internal(e.to_string())),
        };
        let job = app.store.get(&name).map_err(|e| internal(e.to_string()))?.ok_or_else(|| not_found(&name))?;
        let finished = finished && !matches!(job["state"].as_str(), Some("Queued" | "Running"));
        Ok(Json(json!({"finished": finished, "job": job})).into_response())
    })
    .await?
}

async fn wait_all(State(app): State<Arc<App>>, Query(q): Query<HashMap<String, String>>) -> ApiResult {
    let timeout = timeout_param(&q)?;
    blocking(move || {
        let _ = app.manager.wait_all(timeout);
        let pending: Vec<String> =
            app.manager.list().into_iter().filter(|j| !j.state.is_finished()).map(|j| j.name).collect();
        Ok(Json(json!({"finished": pending.is_empty(), "pending": pending})).into_response())
    })
    .await?
}

async fn stop(State(app): State<Arc<App>>, Path(name): Path<String>) -> ApiResult {
    blocking(move || {
        match app.manager.stop(&name) {
            Ok(_) | Err(JobError::NotFound(_)) => {}
            Err(e) => return Err(internal(e.to_string())),
        }
        let job = app.store.get(&name).map_err(|e| internal(e.to_string()))?.ok_or_else(|| not_found(&name))?;
        Ok(Json(job).into_response())
    })
    .await?
}

async fn remove(State(app): State<Arc<App>>, Path(name): Path<String>) -> ApiResult {
    blocking(move || {
        let held = match app.manager.remove(&name) {
            Ok(_) => true,
            Err(JobError::NotFound(_)) => false,
            Err(e) => return Err(internal(e.to_string())),
        };
        let stored = app.store.delete(&name).map_err(|e| internal(e.to_string()))?;
        if !held && !stored {
            return Err(not_found(&name));
        }
        Ok(StatusCode::NO_CONTENT.into_response())
    })
    .await?
}
