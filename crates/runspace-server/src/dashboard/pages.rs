//! The overview (counts, the last hour's throughput, jobs in flight,
//! workers) and the job list (tabs by state with counts, search, pages
//! walked by key).

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;

use super::auth::{page_response, Current};
use super::html::{self, esc, Frame};
use super::live::Snapshot;
use super::{blocking, store_failure, Dashboard};
use crate::store::{Cursor, JobQuery, JobRow};

/// Jobs in one page of the list.
const PAGE: u64 = 50;
/// The states a job can be in, in the order of the list's tabs.
pub(super) const STATES: [&str; 7] =
    ["Running", "Queued", "Completed", "CompletedWithErrors", "Failed", "Stopped", "Interrupted"];
/// The longest search text taken.
const MAX_SEARCH: usize = 200;

fn frame<'a>(title: &'a str, nav: &'a str, page: &'a str, current: &'a Current, dash: &Dashboard) -> Frame<'a> {
    Frame { title, nav, csrf: &current.csrf, read_only: dash.read_only, page, events: Some("/events".into()) }
}

fn count(counts: &[(String, u64)], state: &str) -> u64 {
    counts.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n)
}

/// `GET /`: the overview.
pub(super) async fn overview(State(dash): State<Arc<Dashboard>>, Extension(current): Extension<Current>) -> Response {
    // The counts are read now: the live picture counts only while someone watches.
    let store = dash.store.clone();
    let counts = match blocking(move || store.state_counts()).await {
        Ok(Ok(counts)) => counts,
        Ok(Err(e)) => return store_failure(e),
        Err(response) => return response,
    };
    let mut snapshot = dash.live.latest();
    if snapshot.at == 0.0 {
        // The first tick has not run yet (the server just started).
        snapshot = Arc::new(Snapshot { at: html::now(), per_minute: vec![0; 60], ..Snapshot::default() });
    }
    let counts = &counts;
    let finished: u64 = STATES[2..].iter().map(|s| count(counts, s)).sum();
    let failed = count(counts, "Failed");
    let mut body = String::from("<h1>Overview</h1><section class=\"cards\" aria-label=\"job counts\">");
    for (label, key, n) in [
        ("Running", "Running", count(counts, "Running")),
        ("Queued", "Queued", count(counts, "Queued")),
        ("Finished", "finished", finished),
        ("Failed", "Failed", failed),
    ] {
        let href = if key == "finished" { "/jobs".to_string() } else { format!("/jobs?state={key}") };
        let _ = write!(body, "<a class=\"card\" href=\"{href}\"><span class=\"n\" data-card=\"{key}\">{n}</span><span>{label}</span></a>");
    }
    let hour: u64 = snapshot.per_minute.iter().sum();
    let _ = write!(
        body,
        "</section><section aria-labelledby=\"tp\"><h2 id=\"tp\">Throughput, last hour</h2>\
         <p class=\"sub\"><span id=\"hour-total\">{hour}</span> items in the last hour · now <span id=\"rate-now\">{}</span> \
         · counted while this server runs</p>\
         <div class=\"chart\" id=\"throughput\" role=\"img\" aria-label=\"items finished per minute over the last hour\" \
         data-values=\"{}\"></div></section>",
        html::rate(Some(snapshot.rate)),
        esc(&serde_json::to_string(&snapshot.per_minute).unwrap_or_default()),
    );
    body.push_str("<section aria-labelledby=\"act\"><h2 id=\"act\">In flight</h2><div class=\"scroll\"><table class=\"jobs\" id=\"active\">");
    body.push_str(TABLE_HEAD);
    for job in &snapshot.active {
        body.push_str(&row(&job.row, job.rate, snapshot.at));
    }
    let empty = if snapshot.active.is_empty() { "" } else { " hidden" };
    let _ = write!(
        body,
        "</tbody></table></div><p class=\"empty\" id=\"active-empty\"{empty}>Nothing running or queued.</p></section>"
    );
    body.push_str(&workers_table(&snapshot));
    let frame = frame("Overview", "overview", "overview", &current, &dash);
    page_response(StatusCode::OK, &html::page(&frame, &body))
}

fn workers_table(snapshot: &Snapshot) -> String {
    let mut out = String::from(
        "<section aria-labelledby=\"wk\"><h2 id=\"wk\">Workers</h2><div class=\"scroll\"><table id=\"workers\">\
         <thead><tr><th scope=\"col\">Worker</th><th scope=\"col\">Heartbeat age</th><th scope=\"col\">Slots</th>\
         <th scope=\"col\">Items done</th></tr></thead><tbody>",
    );
    for w in &snapshot.workers {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&w.id),
            html::duration(Some((snapshot.at - w.heartbeat).max(0.0))),
            w.slots,
            w.items_done
        );
    }
    let empty = if snapshot.workers.is_empty() { "" } else { " hidden" };
    let _ = write!(
        out,
        "</tbody></table></div><p class=\"empty\" id=\"workers-empty\"{empty}>No workers: this server runs its jobs itself. \
         Workers appear here when servers and workers share a PostgreSQL store.</p></section>"
    );
    out
}

/// The job table's head (the body follows).
pub(super) const TABLE_HEAD: &str = "<thead><tr><th scope=\"col\">Name</th><th scope=\"col\">State</th>\
    <th scope=\"col\">Progress</th><th scope=\"col\">Items/s</th><th scope=\"col\" class=\"wide\">Started</th>\
    <th scope=\"col\">Duration</th><th scope=\"col\">Failures</th></tr></thead><tbody>";

/// One job as a row of a job table; `rate` is its live rate, if running.
pub(super) fn row(job: &JobRow, rate: Option<f64>, now: f64) -> String {
    let duration = job.started.map(|s| (job.ended.unwrap_or(now) - s).max(0.0));
    let rate = rate.or_else(|| {
        // Finished: its average.
        let d = duration.filter(|d| *d > 0.0 && job.ended.is_some())?;
        Some(job.done as f64 / d)
    });
    let failures = if job.parallel { job.failed.to_string() } else { "—".into() };
    let failed_class = if job.failed > 0 { " class=\"bad\"" } else { "" };
    format!(
        "<tr data-job=\"{name}\"><th scope=\"row\"><a href=\"/jobs/{href}\">{name}</a>\
         <span class=\"script\">{script}</span></th><td>{state}</td><td class=\"progress\">{progress}</td>\
         <td data-rate>{rate}</td><td class=\"wide\">{started}</td><td data-duration>{duration}</td>\
         <td{failed_class}>{failures}</td></tr>",
        name = esc(&job.name),
        href = html::url(&job.name),
        script = esc(&job.script_name),
        state = html::state_badge(&job.state),
        progress = html::progress(job.done, job.total),
        rate = html::rate(rate),
        started = html::time(job.started),
        duration = html::duration(duration),
    )
}

/// `GET /jobs?state=S&q=TEXT&below=K|above=K`: the job list.
pub(super) async fn jobs(
    State(dash): State<Arc<Dashboard>>,
    Extension(current): Extension<Current>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let state = q.get("state").filter(|s| STATES.contains(&s.as_str())).cloned();
    let search = q.get("q").map(|s| html::cut(s.trim(), MAX_SEARCH)).filter(|s| !s.is_empty());
    let key = |k: &str| q.get(k).and_then(|v| v.parse::<i64>().ok());
    let cursor = match (key("below"), key("above")) {
        (Some(k), _) => Cursor::Below(k),
        (None, Some(k)) => Cursor::Above(k),
        _ => Cursor::First,
    };
    let query = JobQuery { state: state.clone(), search: search.clone(), cursor, limit: PAGE };
    let store = dash.store.clone();
    let read =
        blocking(move || Ok::<_, crate::store::StoreError>((store.job_rows(&query)?, store.state_counts()?))).await;
    let (page, counts) = match read {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => return store_failure(e),
        Err(response) => return response,
    };
    let snapshot = dash.live.latest();
    let mut body = String::from("<h1>Jobs</h1>");
    // Links keep the other filters.
    let link = |state: Option<&str>, extra: &str| {
        let mut parts = Vec::new();
        if let Some(s) = state {
            parts.push(format!("state={}", html::url(s)));
        }
        if let Some(text) = &search {
            parts.push(format!("q={}", html::url(text)));
        }
        if !extra.is_empty() {
            parts.push(extra.to_string());
        }
        if parts.is_empty() {
            "/jobs".to_string()
        } else {
            format!("/jobs?{}", parts.join("&"))
        }
    };
    body.push_str("<nav class=\"tabs\" aria-label=\"job states\">");
    let all: u64 = counts.iter().map(|(_, n)| n).sum();
    let tab = |label: &str, key: Option<&str>, n: u64| {
        let current = if state.as_deref() == key { " aria-current=\"page\"" } else { "" };
        format!(
            "<a href=\"{}\"{current} data-tab=\"{}\">{} <span class=\"n\">{n}</span></a>",
            esc(&link(key, "")),
            key.unwrap_or("all"),
            esc(label)
        )
    };
    body.push_str(&tab("All", None, all));
    for s in STATES {
        body.push_str(&tab(s, Some(s), count(&counts, s)));
    }
    let _ = write!(
        body,
        "</nav><form class=\"search\" method=\"get\" action=\"/jobs\" role=\"search\">{}\
         <label for=\"q\" class=\"visually-hidden\">Search by job or script name</label>\
         <input id=\"q\" name=\"q\" type=\"search\" placeholder=\"Search job or script name\" value=\"{}\">\
         <button type=\"submit\">Search</button></form>",
        state
            .as_deref()
            .map(|s| format!("<input type=\"hidden\" name=\"state\" value=\"{}\">", esc(s)))
            .unwrap_or_default(),
        esc(search.as_deref().unwrap_or("")),
    );
    let _ = write!(
        body,
        "<p class=\"notice\" id=\"new-jobs\" hidden><a href=\"{}\">New jobs: show them</a></p>",
        esc(&link(state.as_deref(), ""))
    );
    body.push_str("<div class=\"scroll\"><table class=\"jobs\" id=\"jobs\">");
    body.push_str(TABLE_HEAD);
    for job in &page.rows {
        let rate = snapshot.active.iter().find(|a| a.row.name == job.name).and_then(|a| a.rate);
        body.push_str(&row(job, rate, snapshot.at.max(html::now())));
    }
    body.push_str("</tbody></table></div>");
    if page.rows.is_empty() {
        body.push_str("<p class=\"empty\">No jobs match.</p>");
    }
    body.push_str("<nav class=\"pager\" aria-label=\"pages\">");
    if page.more_above {
        let _ = write!(body, "<a href=\"{}\">« Newest</a>", esc(&link(state.as_deref(), "")));
        if let Some(first) = page.rows.first() {
            let _ = write!(
                body,
                "<a href=\"{}\" rel=\"prev\">‹ Newer</a>",
                esc(&link(state.as_deref(), &format!("above={}", first.key)))
            );
        }
    }
    if page.more_below {
        if let Some(last) = page.rows.last() {
            let _ = write!(
                body,
                "<a href=\"{}\" rel=\"next\">Older ›</a>",
                esc(&link(state.as_deref(), &format!("below={}", last.key)))
            );
        }
    }
    body.push_str("</nav>");
    let first_page = matches!(cursor, Cursor::First);
    let title = "Jobs";
    let mut frame = frame(title, "jobs", "jobs", &current, &dash);
    if !first_page {
        // Only the first page learns of new jobs; the others still follow their rows.
        frame.page = "jobs-later";
    }
    page_response(StatusCode::OK, &html::page(&frame, &body))
}
