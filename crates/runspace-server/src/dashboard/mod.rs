//! The web dashboard, served by `rsp serve` at `/` beside the API:
//! server-rendered HTML, a little plain JavaScript and CSS compiled into
//! the binary, live updates over Server-Sent Events. Described in
//! docs/dashboard.md.
//!
//! - [`auth`]: the login form, session cookies, CSRF, security headers;
//! - [`live`]: the one task that watches the store, and its snapshots;
//! - [`events`]: the event streams the pages listen to;
//! - [`pages`], [`job`]: the overview, the job list, a job's page;
//! - [`actions`]: stop, remove, restart, rerun-failed (through the API's
//!   own handlers) and the downloads.

use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::{watch, Semaphore};

use crate::guessing::Attempts;
use crate::store::{JobStore, StoreError};

mod actions;
mod auth;
mod events;
mod html;
mod job;
mod live;
mod pages;

/// What the dashboard's handlers share.
pub(crate) struct Dashboard {
    store: Arc<dyn JobStore>,
    /// The API's router: actions go through the API's own handlers.
    api: Router,
    token: String,
    sessions: auth::Sessions,
    /// Wrong tokens, for the back-off (the API's count: one for both doors).
    logins: Arc<Attempts>,
    read_only: bool,
    live: Arc<live::Live>,
    /// Turns true when the server stops: the event streams end.
    stop: watch::Receiver<bool>,
    /// Store reads running at once (see [`Dashboard::read`]).
    reads: Semaphore,
}

impl Dashboard {
    /// A dashboard over `store`, acting through `api` (the API's router,
    /// which `token` opens). Starts the live picture's task, so it must be
    /// called inside the server's runtime.
    pub(crate) fn new(
        store: Arc<dyn JobStore>,
        api: Router,
        token: String,
        logins: Arc<Attempts>,
        read_only: bool,
        stop: watch::Receiver<bool>,
    ) -> Arc<Dashboard> {
        let live = live::Live::start(store.clone(), stop.clone());
        let sessions = auth::Sessions::default();
        let reads = Semaphore::new(STORE_READS);
        Arc::new(Dashboard { store, api, token, sessions, logins, read_only, live, stop, reads })
    }
}

/// The dashboard's routes. The login form and the static files are open;
/// everything else needs a session.
pub(crate) fn router(dash: Arc<Dashboard>) -> Router {
    let private = Router::new()
        .route("/", get(pages::overview))
        .route("/jobs", get(pages::jobs))
        .route("/jobs/{name}", get(job::page))
        .route("/jobs/{name}/streams/{stream}", get(actions::download_stream))
        .route("/jobs/{name}/results.jsonl", get(actions::download_output))
        .route("/jobs/{name}/script", get(actions::download_script))
        .route("/jobs/{name}/{action}", post(actions::act))
        .route("/events", get(events::summary))
        .route("/jobs/{name}/events", get(events::job))
        .route("/logout", post(auth::logout))
        .layer(middleware::from_fn_with_state(dash.clone(), auth::require_session));
    Router::new()
        .route("/login", get(auth::login_form).post(auth::login))
        .route("/static/app.js", get(script))
        .route("/static/app.css", get(style))
        .merge(private)
        .layer(middleware::from_fn(auth::security_headers))
        .with_state(dash)
}

async fn script() -> Response {
    asset(include_str!("assets/app.js"), "text/javascript; charset=utf-8")
}

async fn style() -> Response {
    asset(include_str!("assets/app.css"), "text/css; charset=utf-8")
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // Compiled in: a new binary may change them, so a browser revalidates.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Where a keyset page starts: `?below=KEY`, `?above=KEY`, or the start.
fn cursor(query: &std::collections::HashMap<String, String>) -> crate::store::Cursor {
    use crate::store::Cursor;
    let key = |k: &str| query.get(k).and_then(|v| v.parse::<i64>().ok());
    match (key("below"), key("above")) {
        (Some(k), _) => Cursor::Below(k),
        (None, Some(k)) => Cursor::Above(k),
        _ => Cursor::First,
    }
}

/// The most store reads the dashboard runs at once. Each runs on a thread
/// of tokio's blocking pool; without a bound, a burst of requests (three
/// hundred event streams opening, say) would start a thread each.
const STORE_READS: usize = 4;

impl Dashboard {
    /// Runs blocking store work off the async threads, at most
    /// [`STORE_READS`] at once (the rest wait their turn, holding no thread).
    async fn read<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, Response> {
        let _turn = self.reads.acquire().await.map_err(|e| failure(&format!("handler failed: {e}")))?;
        tokio::task::spawn_blocking(f).await.map_err(|e| failure(&format!("handler failed: {e}")))
    }

    /// [`Dashboard::read`] of something of job `name`: a job that is not
    /// there, a store error and a failed read are each their own answer.
    async fn read_job<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> Result<Option<T>, StoreError> + Send + 'static,
    ) -> Result<T, Response> {
        match self.read(f).await? {
            Ok(Some(found)) => Ok(found),
            Ok(None) => Err(no_job(name)),
            Err(e) => Err(store_failure(e)),
        }
    }
}

/// A plain-text error answer.
fn failure(message: &str) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, message.to_string()).into_response()
}

/// A store error as an answer.
fn store_failure(e: StoreError) -> Response {
    failure(&e.to_string())
}

/// The 404 page for a job that is not stored.
fn no_job(name: &str) -> Response {
    auth::page_response(
        StatusCode::NOT_FOUND,
        &html::bare(
            "No such job",
            &format!("<h1>No such job</h1><p>No job named <code>{}</code> is stored.</p><p><a href=\"/jobs\">All jobs</a></p>", html::esc(name)),
        ),
    )
}
