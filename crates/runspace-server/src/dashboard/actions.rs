//! What the pages do besides showing: the actions (stop, remove, restart,
//! rerun-failed), carried out by the API's own handlers so the two never
//! disagree, and the downloads, streamed in pages so a huge log never sits
//! in memory or in a page.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use futures_util::{stream, StreamExt};
use serde_json::Value;
use tower::ServiceExt;

use super::auth::{check_csrf, Current};
use super::html::url;
use super::Dashboard;
use crate::store::{Cursor, From};

/// Records read from the store per step of a download.
const DOWNLOAD_PAGE: u64 = 1000;
/// The streams a job has.
const STREAMS: [&str; 6] = ["error", "warning", "verbose", "debug", "information", "progress"];

/// The value of `key` in a form body (`a=1&csrf=…`); values here are hex,
/// so no decoding is needed beyond the split.
pub(super) fn form_field<'a>(body: &'a [u8], key: &str) -> Option<&'a str> {
    std::str::from_utf8(body)
        .ok()?
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// `POST /jobs/{name}/{action}` with the CSRF token: the action, through
/// the API. A script (`Accept: application/json`) gets the API's answer;
/// a plain form is sent on to the page that shows the outcome.
pub(super) async fn act(
    State(dash): State<Arc<Dashboard>>,
    Extension(current): Extension<Current>,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = check_csrf(&current, &headers, form_field(&body, "csrf")) {
        return refused.into_response();
    }
    if dash.read_only {
        return (StatusCode::FORBIDDEN, "refused: this dashboard is read-only (rsp serve --read-only-ui)")
            .into_response();
    }
    let job = format!("/v1/jobs/{}", url(&name));
    let (method, path) = match action.as_str() {
        "stop" => (Method::POST, format!("{job}/stop")),
        "remove" => (Method::DELETE, job),
        "restart" => (Method::POST, format!("{job}/restart")),
        "rerun-failed" => (Method::POST, format!("{job}/rerun-failed")),
        _ => return (StatusCode::NOT_FOUND, format!("no such action: {action}")).into_response(),
    };
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {}", dash.token))
        .body(Body::empty());
    let request = match request {
        Ok(r) => r,
        Err(e) => return super::failure(&e.to_string()),
    };
    let answer = match dash.api.clone().oneshot(request).await {
        Ok(answer) => answer,
        Err(never) => match never {},
    };
    let wants_json =
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("application/json"));
    if wants_json || !answer.status().is_success() {
        return answer;
    }
    // A plain form: show the outcome.
    let (_, body) = answer.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let to = match (action.as_str(), value["name"].as_str()) {
        ("remove", _) => "/jobs".to_string(),
        ("restart" | "rerun-failed", Some(new)) => format!("/jobs/{}", url(new)),
        _ => format!("/jobs/{}", url(&name)),
    };
    Redirect::to(&to).into_response()
}

/// A download's answer: the body is `chunks`, pulled at the client's pace
/// (a page of the store is read only when the last one has been sent, so
/// a slow client holds a task and one page, never a thread).
fn download(
    filename: &str,
    kind: &'static str,
    chunks: impl futures_util::Stream<Item = Bytes> + Send + 'static,
) -> Response {
    let chunks = chunks.filter(|c| std::future::ready(!c.is_empty()));
    let body = Body::from_stream(chunks.map(Ok::<_, std::convert::Infallible>));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    let disposition = format!(
        "attachment; filename=\"{}\"",
        filename.replace(|c: char| !c.is_ascii_alphanumeric() && !"-_.".contains(c), "_")
    );
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// One stream record as a line of text: a string as it is, anything else as JSON.
fn line(record: &Value) -> String {
    match record {
        Value::String(s) => format!("{s}\n"),
        other => format!("{other}\n"),
    }
}

/// `GET /jobs/{name}/streams/{stream}`: the whole stream as text, a record a line.
pub(super) async fn download_stream(
    State(dash): State<Arc<Dashboard>>,
    Path((name, stream)): Path<(String, String)>,
) -> Response {
    let Some(stream) = STREAMS.iter().find(|s| **s == stream).copied() else {
        return (StatusCode::NOT_FOUND, format!("no such stream: {stream}")).into_response();
    };
    let (store, job) = (dash.store.clone(), name.clone());
    let first = match dash.read_job(&name, move || store.stream(&job, stream, From::Offset(0), DOWNLOAD_PAGE)).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    // Each step sends the page it holds and reads the next (through the
    // dashboard's bounded store reads); an empty page or the end stops it.
    let job = name.clone();
    let chunks = stream::unfold(Some(first), move |page| {
        let (dash, job) = (dash.clone(), job.clone());
        async move {
            let page = page?;
            let text: String = page.records.iter().map(line).collect();
            let next = page.offset + page.records.len() as u64;
            let following = if page.records.is_empty() || next >= page.total {
                None
            } else {
                let store = dash.store.clone();
                match dash.read(move || store.stream(&job, stream, From::Offset(next), DOWNLOAD_PAGE)).await {
                    Ok(Ok(Some(p))) => Some(p),
                    _ => None,
                }
            };
            Some((Bytes::from(text), following))
        }
    });
    download(&format!("{name}-{stream}.log"), "text/plain; charset=utf-8", chunks)
}

/// `GET /jobs/{name}/script`: the job's script as submitted (its page
/// shows only the start of a long one).
pub(super) async fn download_script(State(dash): State<Arc<Dashboard>>, Path(name): Path<String>) -> Response {
    let (store, job) = (dash.store.clone(), name.clone());
    let stored = match dash.read_job(&name, move || store.stored_request(&job)).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let script = stored.request["script"].as_str().unwrap_or_default().to_string();
    download(&format!("{name}.luau"), "text/plain; charset=utf-8", stream::once(async { Bytes::from(script) }))
}

/// `GET /jobs/{name}/results.jsonl`: every output record, a JSON document a
/// line, walked by key.
pub(super) async fn download_output(State(dash): State<Arc<Dashboard>>, Path(name): Path<String>) -> Response {
    let (store, job) = (dash.store.clone(), name.clone());
    let first = match dash.read_job(&name, move || store.item_rows(&job, None, Cursor::First, DOWNLOAD_PAGE)).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let job = name.clone();
    let chunks = stream::unfold(Some(first), move |page| {
        let (dash, job) = (dash.clone(), job.clone());
        async move {
            let page = page?;
            let text: String = page.records.iter().map(|(_, r)| format!("{r}\n")).collect();
            let following = match page.records.last() {
                Some(&(last, _)) if page.more_above => {
                    let store = dash.store.clone();
                    match dash.read(move || store.item_rows(&job, None, Cursor::Above(last), DOWNLOAD_PAGE)).await {
                        Ok(Ok(Some(p))) => Some(p),
                        _ => None,
                    }
                }
                _ => None,
            };
            Some((Bytes::from(text), following))
        }
    });
    download(&format!("{name}-results.jsonl"), "application/x-ndjson", chunks)
}
