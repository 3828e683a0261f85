//! pueue's everyday verbs over the API: restart a job, rerun the items
//! that did not complete, follow a job's output as it comes, clean finished
//! jobs away, and stop the server.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use runspace::{JobError, JobState};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{bad, blocking, create, internal, not_found, page, read_body, ApiError, ApiResult, App, Submit, MAX_WAIT};

/// The most items `rerun-failed` resubmits at once (their inputs are held
/// in memory while the new job is built).
pub(crate) const MAX_RERUN: usize = 1_000_000;
/// How often a follow request looks for new records.
const FOLLOW_POLL: Duration = Duration::from_millis(50);
/// The most records in one follow answer.
const FOLLOW_PAGE: u64 = 1000;

/// The verbs' routes (the clean route is `DELETE /v1/jobs`, beside the list).
pub(super) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/jobs/{name}/restart", post(restart))
        .route("/v1/jobs/{name}/rerun-failed", post(rerun_failed))
        .route("/v1/jobs/{name}/follow", get(follow))
        .route("/v1/shutdown", post(shutdown))
}

/// The optional body of restart and rerun-failed.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Again {
    /// The new job's name (default: the original's, `-2`, `-3`…).
    name: Option<String>,
}

fn again(body: &Bytes) -> Result<Again, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Again::default());
    }
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid request body: {e}")))
}

/// The request `name` was submitted with, as a new submission, and the
/// root of its chain of restarts (its origin).
fn replay(app: &App, name: &str) -> Result<(Submit, String), ApiError> {
    let stored = app.store.stored_request(name).map_err(|e| internal(e.to_string()))?.ok_or_else(|| not_found(name))?;
    let mut request = stored.request;
    let Some(fields) = request.as_object_mut() else {
        return Err(internal(format!("the stored request of '{name}' is unreadable")));
    };
    let origin = fields.remove("origin").and_then(|o| o.as_str().map(String::from)).unwrap_or_else(|| name.into());
    let had_inputs = fields.remove("inputs").is_some_and(|n| !n.is_null());
    fields.retain(|_, v| !v.is_null());
    match stored.inputs {
        Some(inputs) => {
            fields.insert("inputs".into(), Value::Array(inputs));
        }
        None if had_inputs => {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!("the inputs of '{name}' were not kept (it was submitted to an older server); submit it again"),
            ))
        }
        None => {}
    }
    let submit = serde_json::from_value(request)
        .map_err(|e| internal(format!("the stored request of '{name}' is unreadable: {e}")))?;
    Ok((submit, origin))
}

/// The first free name `ORIGIN-N`, N from 2, cut to fit the 100-character limit.
fn next_name(app: &App, origin: &str) -> Result<String, ApiError> {
    for n in 2..10_000u32 {
        let suffix = format!("-{n}");
        let keep = origin.char_indices().nth(100 - suffix.len()).map_or(origin.len(), |(i, _)| i);
        let candidate = format!("{}{suffix}", &origin[..keep]);
        if app.store.get(&candidate).map_err(|e| internal(e.to_string()))?.is_none() {
            return Ok(candidate);
        }
    }
    Err(ApiError(StatusCode::CONFLICT, format!("no free name left for another run of '{origin}'; give one")))
}

/// Starts `submit` under the given or next free name, answering `201` with
/// the original's name added.
fn start_again(app: &App, mut submit: Submit, origin: &str, given: Option<String>, from: &str) -> ApiResult {
    submit.name = match given {
        Some(name) => Some(name),
        None => Some(next_name(app, origin)?),
    };
    create(app, &submit, Some(origin))?;
    let name = submit.name.unwrap_or_default();
    let (state, progress) = match app.manager.get(&name) {
        Ok(job) => (job.state.to_string(), json!({"done": job.progress.done, "total": job.progress.total})),
        Err(_) => ("Queued".to_string(), Value::Null),
    };
    let body = json!({"name": name, "from": from, "state": state, "progress": progress});
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn restart(State(app): State<Arc<App>>, Path(name): Path<String>, request: Request) -> ApiResult {
    let again = again(&read_body(request).await?)?;
    blocking(move || {
        let (submit, origin) = replay(&app, &name)?;
        start_again(&app, submit, &origin, again.name, &name)
    })
    .await?
}

fn finished_state(job: &Value) -> Option<JobState> {
    job["state"].as_str()?.parse::<JobState>().ok().filter(|s| s.is_finished())
}

async fn rerun_failed(State(app): State<Arc<App>>, Path(name): Path<String>, request: Request) -> ApiResult {
    let again = again(&read_body(request).await?)?;
    blocking(move || {
        let job = app.store.get(&name).map_err(|e| internal(e.to_string()))?.ok_or_else(|| not_found(&name))?;
        let Some(state) = finished_state(&job) else {
            return Err(ApiError(StatusCode::CONFLICT, format!("job '{name}' has not finished; wait for it first")));
        };
        let nothing = || Ok(Json(json!({"name": null, "from": name, "rerun": 0})).into_response());
        if job["kind"] != json!("parallel") {
            if matches!(state, JobState::Completed | JobState::CompletedWithErrors) {
                return nothing();
            }
            let (submit, origin) = replay(&app, &name)?;
            return start_again(&app, submit, &origin, again.name, &name);
        }
        let total = job["progress"]["total"].as_u64().unwrap_or(0);
        let (count, indices) =
            app.store.unfinished_items(&name, total, MAX_RERUN).map_err(|e| internal(e.to_string()))?;
        if count == 0 {
            return nothing();
        }
        if count > MAX_RERUN as u64 {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!("{count} items of '{name}' did not complete, more than {MAX_RERUN}; restart it instead"),
            ));
        }
        let (mut submit, origin) = replay(&app, &name)?;
        submit.inputs = Some(pick(&submit, &indices, &name)?);
        submit.range = None;
        start_again(&app, submit, &origin, again.name, &name)
    })
    .await?
}

/// The inputs at `indices` of a job's explicit inputs or range.
fn pick(submit: &Submit, indices: &[u64], name: &str) -> Result<Vec<Value>, ApiError> {
    if let Some(inputs) = &submit.inputs {
        return Ok(indices.iter().filter_map(|&i| inputs.get(i as usize).cloned()).collect());
    }
    let Some(range) = &submit.range else {
        return Err(internal(format!("the stored request of '{name}' has neither inputs nor a range")));
    };
    let step: i64 = if range.start <= range.end { 1 } else { -1 };
    Ok(indices.iter().map(|&i| Value::from(range.start + step * i as i64)).collect())
}

/// `DELETE /v1/jobs?state=A,B`: removes every finished job (of those states).
pub(super) async fn clean(State(app): State<Arc<App>>, Query(q): Query<HashMap<String, String>>) -> ApiResult {
    let states: Vec<JobState> = match q.get("state") {
        None => ["Completed", "CompletedWithErrors", "Failed", "Stopped", "Interrupted"]
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect(),
        Some(list) => list.split(',').map(|s| s.trim().parse::<JobState>().map_err(bad)).collect::<Result<_, _>>()?,
    };
    if let Some(busy) = states.iter().find(|s| !s.is_finished()) {
        return Err(bad(format!("state: clean removes finished jobs only, not {busy} ones (stop or remove them)")));
    }
    blocking(move || {
        let mut names = Vec::new();
        for state in &states {
            let state = state.to_string();
            let (total, _) = app.store.list(Some(&state), 0, 1).map_err(|e| internal(e.to_string()))?;
            let mut offset = 0;
            while offset < total {
                let (_, jobs) = app
                    .store
                    .list(Some(&state), offset, crate::limits::MAX_PAGE)
                    .map_err(|e| internal(e.to_string()))?;
                if jobs.is_empty() {
                    break;
                }
                offset += jobs.len() as u64;
                names.extend(jobs.iter().filter_map(|j| j["name"].as_str().map(String::from)));
            }
        }
        for chunk in names.chunks(1000) {
            app.store.delete_finished(chunk).map_err(|e| internal(e.to_string()))?;
        }
        for name in &names {
            // Finished jobs stay in memory a little while; drop them too.
            match app.manager.remove(name) {
                Ok(_) | Err(JobError::NotFound(_)) => {}
                Err(e) => return Err(internal(e.to_string())),
            }
        }
        Ok(Json(json!({"removed": names.len(), "names": names})).into_response())
    })
    .await?
}

/// `GET /v1/jobs/{name}/follow?offset=N&timeout=D`: the records from
/// `offset` as soon as there are any, or when the job ends, or (empty) when
/// the timeout passes. `finished` is true once the job has ended and every
/// record has been handed out; the job then comes with it.
async fn follow(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let (offset, _) = page(&q)?;
    let timeout = match q.get("timeout") {
        None => Duration::from_secs(30),
        Some(t) => runspace::units::parse_duration(t).map_err(|e| bad(format!("timeout: {e}")))?.min(MAX_WAIT),
    };
    let deadline = Instant::now() + timeout;
    loop {
        let app2 = app.clone();
        let name2 = name.clone();
        let found = blocking(move || -> Result<_, ApiError> {
            // The state first: a job seen finished has all its records stored.
            let Some(job) = app2.store.get(&name2).map_err(|e| internal(e.to_string()))? else { return Ok(None) };
            let (total, records) = app2
                .store
                .output(&name2, offset, FOLLOW_PAGE)
                .map_err(|e| internal(e.to_string()))?
                .unwrap_or_default();
            Ok(Some((job, total, records)))
        })
        .await??;
        let Some((job, total, records)) = found else { return Err(not_found(&name)) };
        let next = offset + records.len() as u64;
        let finished = finished_state(&job).is_some() && next >= total;
        if !records.is_empty() || finished || Instant::now() >= deadline {
            let job = if finished { job } else { Value::Null };
            return Ok(Json(
                json!({"records": records, "next_offset": next, "total": total, "finished": finished, "job": job}),
            )
            .into_response());
        }
        tokio::time::sleep(FOLLOW_POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// `POST /v1/shutdown`: stops the server as SIGTERM does (running jobs get
/// the grace period); answers at once.
async fn shutdown(State(app): State<Arc<App>>) -> ApiResult {
    app.shutdown.notify_one();
    let body = json!({"stopping": true, "pid": std::process::id(), "grace_s": app.grace.as_secs_f64()});
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}
