//! The event streams (Server-Sent Events) the pages listen to. Each reads
//! the latest [`live::Snapshot`](super::live::Snapshot) when it changes
//! and sends what its page shows; a stream ends when the server stops.
//! The pages close their stream while their tab is hidden.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::live::{Active, Snapshot};
use super::Dashboard;

/// How often an idle stream sends a comment (so proxies keep it open).
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How often a summary is sent even when nothing changed.
const REPEAT: Duration = Duration::from_secs(5);

/// Waits for the next snapshot; `None` once the server stops.
async fn next(rx: &mut watch::Receiver<Arc<Snapshot>>, stop: &mut watch::Receiver<bool>) -> Option<Arc<Snapshot>> {
    if *stop.borrow() {
        return None;
    }
    tokio::select! {
        changed = rx.changed() => changed.ok().map(|()| rx.borrow_and_update().clone()),
        _ = stop.changed() => None,
    }
}

fn sse(events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    let mut response = Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response();
    // Tell buffering proxies to pass events through as they come.
    response.headers_mut().insert("x-accel-buffering", axum::http::HeaderValue::from_static("no"));
    response
}

/// `GET /events`: the overview's and the list's stream: a `summary` event
/// when the picture changed, and every [`REPEAT`] anyway (run times go on).
pub(super) async fn summary(State(dash): State<Arc<Dashboard>>) -> Response {
    let state = (dash.live.subscribe(), dash.stop.clone(), String::new(), 0.0);
    sse(stream::unfold(state, |(mut rx, mut stop, mut last, mut sent_at)| async move {
        loop {
            let snapshot = next(&mut rx, &mut stop).await?;
            let mut summary = snapshot.summary();
            summary["at"] = Value::Null;
            let text = summary.to_string();
            if text == last && snapshot.at - sent_at < REPEAT.as_secs_f64() {
                continue;
            }
            summary["at"] = json!(snapshot.at);
            let event = Event::default().event("summary").data(summary.to_string());
            (last, sent_at) = (text, snapshot.at);
            return Some((Ok(event), (rx, stop, last, sent_at)));
        }
    }))
}

/// What a job stream last sent.
struct Watching {
    dash: Arc<Dashboard>,
    name: String,
    rx: watch::Receiver<Arc<Snapshot>>,
    stop: watch::Receiver<bool>,
    /// `(state, done)` last sent; `None` before the first event.
    sent: Option<(String, u64)>,
}

/// `GET /jobs/{name}/events`: a `job` event whenever the job's state or
/// progress changes (at most one a tick), the first at once.
pub(super) async fn job(State(dash): State<Arc<Dashboard>>, Path(name): Path<String>) -> Response {
    let watching = Watching { rx: dash.live.subscribe(), stop: dash.stop.clone(), dash, name, sent: None };
    sse(stream::unfold(watching, |mut w| async move {
        loop {
            let snapshot = next(&mut w.rx, &mut w.stop).await?;
            let job = match snapshot.job(&w.name) {
                Some(job) => Some(job),
                // Not in flight: read it from the store once, at the start
                // (a finished job) or when it left the picture unseen.
                None if w.sent.as_ref().is_none_or(|(state, _)| matches!(state.as_str(), "Queued" | "Running")) => {
                    let (store, name) = (w.dash.store.clone(), w.name.clone());
                    match w.dash.read(move || store.job_row(&name)).await {
                        Ok(Ok(row)) => row.map(|row| Active { row, rate: None }),
                        _ => None,
                    }
                }
                None => continue,
            };
            let payload = match &job {
                Some(job) => job_event(job, snapshot.at),
                None => json!({"name": w.name, "state": "Removed"}),
            };
            let key = job.as_ref().map_or(("Removed".to_string(), 0), |j| (j.row.state.clone(), j.row.done));
            if w.sent.as_ref() == Some(&key) {
                continue;
            }
            w.sent = Some(key);
            let event = Event::default().event("job").data(payload.to_string());
            return Some((Ok(event), w));
        }
    }))
}

/// One job's event: state, progress, rate, ETA, run time and the newest chart point.
fn job_event(job: &Active, at: f64) -> Value {
    let row = &job.row;
    let duration = row.started.map(|s| (row.ended.unwrap_or(at) - s).max(0.0));
    json!({
        "name": row.name,
        "state": row.state,
        "done": row.done,
        "total": row.total,
        "rate": job.rate,
        "eta_s": job.eta(),
        "duration_s": duration,
        "error": row.error,
        "at": at,
    })
}
