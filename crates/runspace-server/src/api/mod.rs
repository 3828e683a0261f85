//! The HTTP JSON API (documented in docs/jobs-openapi.yaml). Every route
//! needs `Authorization: Bearer TOKEN`. Handlers that block (the job
//! manager, SQLite) run on tokio's blocking pool.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use runspace::{auto_job_name, check_job_name, Error, JobError, JobManager};
use serde_json::json;

use crate::limits::{self, MAX_REQUEST_BODY};
use crate::store::{From, JobEnd, JobStore, NewJob, StoreError};
use request::{build_spec, request_record, Submit};

mod context;
mod errors;
mod request;
mod verbs;

/// The longest a client may take to send a request body.
const BODY_READ: Duration = Duration::from_secs(30);
/// The longest a stop or remove request waits for the job to stop.
const STOP_ANSWER: Duration = Duration::from_secs(5);
/// The longest a wait request may block.
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// What every handler shares.
pub(crate) struct App {
    pub(crate) manager: JobManager,
    pub(crate) store: Arc<dyn JobStore>,
    pub(crate) token: String,
    /// Notified by `POST /v1/shutdown`: the server then stops as on SIGTERM.
    pub(crate) shutdown: tokio::sync::Notify,
    /// How long running jobs may finish when the server stops.
    pub(crate) grace: Duration,
    /// Wrong tokens, for the back-off (shared with the dashboard's login form).
    pub(crate) guesses: Arc<crate::guessing::Attempts>,
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
        .route("/v1/jobs/{name}/streams/{stream}", get(stream))
        .route("/v1/jobs/{name}/wait", post(wait))
        .route("/v1/jobs/{name}/stop", post(stop))
        .route("/v1/wait", post(wait_all))
        .merge(verbs::routes())
        .fallback(errors::no_route)
        .layer(middleware::from_fn_with_state(app.clone(), auth))
        .layer(middleware::from_fn(errors::json_errors))
        .with_state(app)
}

/// Reads a request's body: at most [`MAX_REQUEST_BODY`] bytes (413
/// otherwise), within [`BODY_READ`] (408 otherwise), so a slow client
/// cannot hold a handler.
pub(super) async fn read_body(request: Request) -> Result<Bytes, ApiError> {
    let too_large = || {
        let limit = runspace::units::format_size(MAX_REQUEST_BODY);
        ApiError(StatusCode::PAYLOAD_TOO_LARGE, format!("request body too large (limit {limit})"))
    };
    let announced = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_REQUEST_BODY) {
        // Said up front: no need to read (or wait for) any of it.
        return Err(too_large());
    }
    let limit = usize::try_from(MAX_REQUEST_BODY).unwrap_or(usize::MAX);
    match tokio::time::timeout(BODY_READ, axum::body::to_bytes(request.into_body(), limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(too_large()),
        Err(_) => Err(ApiError(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {} s", BODY_READ.as_secs()),
        )),
    }
}

async fn auth(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let given = given.trim();
    if given.is_empty() {
        // Not a guess: nothing counts against the back-off.
        return ApiError(StatusCode::UNAUTHORIZED, "missing token: send 'Authorization: Bearer TOKEN'".into())
            .into_response();
    }
    match app.guesses.attempt(|| constant_time_eq(given.as_bytes(), app.token.as_bytes())) {
        Ok(true) => next.run(request).await,
        Ok(false) => {
            ApiError(StatusCode::UNAUTHORIZED, "bad token: send 'Authorization: Bearer TOKEN'".into()).into_response()
        }
        Err(wait) => {
            let secs = crate::guessing::retry_after(wait);
            let message = format!("too many wrong tokens: try again in {secs} s");
            let mut response = ApiError(StatusCode::TOO_MANY_REQUESTS, message).into_response();
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
            response
        }
    }
}

/// Compares without an early exit, so timing does not leak the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Runs blocking work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| internal(format!("handler failed: {e}")))
}

/// The server answers; `ok` (and the status, 503 when not) says whether
/// its store is writing: a monitor polling this sees a full disk.
async fn health(State(app): State<Arc<App>>) -> ApiResult {
    let (running, store) = blocking(move || (app.manager.running().len(), app.store.health())).await?;
    let ok = store.failing.is_none();
    let body = json!({
        "ok": ok,
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "running": running,
        "store": {"ok": ok, "error": store.failing, "failed_jobs": store.failed_jobs},
    });
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    Ok((status, Json(body)).into_response())
}

async fn submit(State(app): State<Arc<App>>, request: Request) -> ApiResult {
    let body = read_body(request).await?;
    let req = parse_submit(&body)?;
    blocking(move || create(&app, &req, None)).await?
}

/// A job request. Its fields are read by serde (so an error names the
/// field); its inputs are read again the way inputs are read everywhere, so
/// integers beyond ±2^53 arrive as strings of their digits, not rounded.
fn parse_submit(body: &[u8]) -> Result<Submit, ApiError> {
    let mut req: Submit = serde_json::from_slice(body).map_err(|e| bad(format!("invalid request body: {e}")))?;
    if req.inputs.is_some() {
        let exact = runspace::json::parse(body).map_err(|e| bad(format!("invalid request body: {e}")))?;
        if let Some(serde_json::Value::Array(inputs)) = exact.get("inputs") {
            req.inputs = Some(inputs.clone());
        }
    }
    Ok(req)
}

/// Stores and starts the job `req` describes; `origin` is the job it
/// restarts or reruns, if any. Answers `201 {name, state, progress}`.
fn create(app: &App, req: &Submit, origin: Option<&str>) -> ApiResult {
    let (spec, total) = build_spec(req)?;
    let parallel = req.parallel();
    let request = serde_json::to_string(&request_record(req, origin)).map_err(|e| internal(e.to_string()))?;
    let inputs = req.inputs_json();
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
        Err(JobError::Engine(Error::Pool(why))) => {
            // The job could not start (no thread for it): it ends Failed
            // with the reason, and holds no slot.
            let end = JobEnd {
                name: name.clone(),
                state: "Failed".into(),
                at: SystemTime::now(),
                error: Some(format!("the job could not start: {why}")),
                done: 0,
            };
            app.store.finished(end).map_err(|e| internal(e.to_string()))?;
            let body = json!({"name": name, "state": "Failed", "progress": {"done": 0, "total": total}});
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

fn page(q: &HashMap<String, String>) -> Result<(u64, u64), ApiError> {
    let num = |key: &str, default: u64| -> Result<u64, ApiError> {
        q.get(key).map_or(Ok(default), |v| v.parse().map_err(|_| bad(format!("{key}: '{v}' is not a whole number"))))
    };
    let (offset, limit) = (num("offset", 0)?, num("limit", 100)?);
    limits::check_page(offset, limit).map_err(|e| bad(e.to_string()))?;
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

/// The streams a job has.
const STREAMS: [&str; 6] = ["error", "warning", "verbose", "debug", "information", "progress"];

/// A page of one stream: `?offset=&limit=` from the start, or `?tail=N`
/// for its last N records.
async fn stream(
    State(app): State<Arc<App>>,
    Path((name, stream)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    if !STREAMS.contains(&stream.as_str()) {
        return Err(bad(format!("stream: '{stream}' is not one of {}", STREAMS.join(", "))));
    }
    let (from, limit) = match q.get("tail") {
        Some(n) if q.contains_key("offset") => return Err(bad(format!("give tail ({n}) or offset, not both"))),
        Some(n) => {
            let n: u64 = n.parse().map_err(|_| bad(format!("tail: '{n}' is not a whole number")))?;
            limits::check_page(0, n).map_err(|e| bad(e.to_string().replacen("limit", "tail", 1)))?;
            (From::Tail, n)
        }
        None => {
            let (offset, limit) = page(&q)?;
            (From::Offset(offset), limit)
        }
    };
    let found = blocking(move || app.store.stream(&name, &stream, from, limit).map(|p| p.ok_or(name)))
        .await?
        .map_err(|e| internal(e.to_string()))?;
    let page = found.map_err(|name| not_found(&name))?;
    Ok(Json(json!({"total": page.total, "offset": page.offset, "records": page.records})).into_response())
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

/// Asks the manager to stop a job and waits at most [`STOP_ANSWER`]: a job
/// busy in a long call into C cannot be interrupted, and a client must not
/// hang on it. True when it has stopped (or is not held: it ended earlier).
async fn stop_within(app: &Arc<App>, name: &str) -> Result<bool, ApiError> {
    let (app, name) = (app.clone(), name.to_string());
    let stop = tokio::task::spawn_blocking(move || app.manager.stop(&name));
    match tokio::time::timeout(STOP_ANSWER, stop).await {
        Ok(Ok(Ok(_) | Err(JobError::NotFound(_)))) => Ok(true),
        // Still stopping: it ends as soon as its current call returns.
        Ok(Ok(Err(JobError::Timeout { .. }))) | Err(_) => Ok(false),
        Ok(Ok(Err(e))) => Err(internal(e.to_string())),
        Ok(Err(e)) => Err(internal(format!("handler failed: {e}"))),
    }
}

/// 200 and the job once stopped; 202 and the job with `"stopping": true`
/// when it has not stopped within [`STOP_ANSWER`].
async fn stop(State(app): State<Arc<App>>, Path(name): Path<String>) -> ApiResult {
    let stopped = stop_within(&app, &name).await?;
    let mut job = blocking(move || app.store.get(&name).map(|j| j.ok_or(name)))
        .await?
        .map_err(|e| internal(e.to_string()))?
        .map_err(|name| not_found(&name))?;
    if stopped {
        return Ok(Json(job).into_response());
    }
    job["stopping"] = json!(true);
    Ok((StatusCode::ACCEPTED, Json(job)).into_response())
}

/// 204 once stopped and deleted; 202 with `{"removed", "stopping": true}`
/// when it is deleted from the store but its thread has not stopped yet
/// (its end is then not stored, and it is forgotten once it ends).
async fn remove(State(app): State<Arc<App>>, Path(name): Path<String>) -> ApiResult {
    let stopped = stop_within(&app, &name).await?;
    blocking(move || {
        let held = stopped && app.manager.remove(&name).is_ok();
        let stored = app.store.delete(&name).map_err(|e| internal(e.to_string()))?;
        if !held && !stored {
            return Err(not_found(&name));
        }
        if stopped {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        Ok((StatusCode::ACCEPTED, Json(json!({"removed": name, "stopping": true}))).into_response())
    })
    .await?
}
