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
use super::{cursor, store_failure, Dashboard};
use crate::store::{Cursor, JobQuery, JobRow, JobsPage};

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
    let counts = match dash.read(move || store.state_counts()).await {
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

/// The list's filters, which every link of the page keeps.
struct Filter {
    state: Option<String>,
    search: Option<String>,
}

impl Filter {
    /// The list's URL with these filters (but the state `state`) and `extra`.
    fn link(&self, state: Option<&str>, extra: &str) -> String {
        let mut parts = Vec::new();
        if let Some(s) = state {
            parts.push(format!("state={}", html::url(s)));
        }
        if let Some(text) = &self.search {
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
    }

    /// The state tabs with their counts, and the search form.
    fn tabs_and_search(&self, counts: &[(String, u64)]) -> String {
        let mut out = String::from("<nav class=\"tabs\" aria-label=\"job states\">");
        let all: u64 = counts.iter().map(|(_, n)| n).sum();
        let tabs = std::iter::once(("All", None, all)).chain(STATES.iter().map(|s| (*s, Some(*s), count(counts, s))));
        for (label, key, n) in tabs {
            let current = if self.state.as_deref() == key { " aria-current=\"page\"" } else { "" };
            let _ = write!(
                out,
                "<a href=\"{}\"{current} data-tab=\"{}\">{} <span class=\"n\">{n}</span></a>",
                esc(&self.link(key, "")),
                key.unwrap_or("all"),
                esc(label)
            );
        }
        let hidden_state = self
            .state
            .as_deref()
            .map(|s| format!("<input type=\"hidden\" name=\"state\" value=\"{}\">", esc(s)))
            .unwrap_or_default();
        let _ = write!(
            out,
            "</nav><form class=\"search\" method=\"get\" action=\"/jobs\" role=\"search\">{hidden_state}\
             <label for=\"q\" class=\"visually-hidden\">Search by job or script name</label>\
             <input id=\"q\" name=\"q\" type=\"search\" placeholder=\"Search job or script name\" value=\"{}\">\
             <button type=\"submit\">Search</button></form>",
            esc(self.search.as_deref().unwrap_or("")),
        );
        out
    }

    /// Links to the newest, newer and older pages: keys, never offsets.
    fn pager(&self, page: &JobsPage) -> String {
        let state = self.state.as_deref();
        let mut out = String::from("<nav class=\"pager\" aria-label=\"pages\">");
        if page.more_above {
            let _ = write!(out, "<a href=\"{}\">« Newest</a>", esc(&self.link(state, "")));
            if let Some(first) = page.rows.first() {
                let newer = self.link(state, &format!("above={}", first.key));
                let _ = write!(out, "<a href=\"{}\" rel=\"prev\">‹ Newer</a>", esc(&newer));
            }
        }
        if let Some(last) = page.rows.last().filter(|_| page.more_below) {
            let older = self.link(state, &format!("below={}", last.key));
            let _ = write!(out, "<a href=\"{}\" rel=\"next\">Older ›</a>", esc(&older));
        }
        out.push_str("</nav>");
        out
    }
}

/// `GET /jobs?state=S&q=TEXT&below=K|above=K`: the job list.
pub(super) async fn jobs(
    State(dash): State<Arc<Dashboard>>,
    Extension(current): Extension<Current>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let filter = Filter {
        state: q.get("state").filter(|s| STATES.contains(&s.as_str())).cloned(),
        search: q.get("q").map(|s| html::cut(s.trim(), MAX_SEARCH)).filter(|s| !s.is_empty()),
    };
    let cursor = cursor(&q);
    let query = JobQuery { state: filter.state.clone(), search: filter.search.clone(), cursor, limit: PAGE };
    let store = dash.store.clone();
    let read =
        dash.read(move || Ok::<_, crate::store::StoreError>((store.job_rows(&query)?, store.state_counts()?))).await;
    let (page, counts) = match read {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => return store_failure(e),
        Err(response) => return response,
    };
    let snapshot = dash.live.latest();
    let mut body = String::from("<h1>Jobs</h1>");
    body.push_str(&filter.tabs_and_search(&counts));
    let _ = write!(
        body,
        "<p class=\"notice\" id=\"new-jobs\" hidden><a href=\"{}\">New jobs: show them</a></p>\
         <div class=\"scroll\"><table class=\"jobs\" id=\"jobs\">{TABLE_HEAD}",
        esc(&filter.link(filter.state.as_deref(), ""))
    );
    for job in &page.rows {
        let rate = snapshot.active.iter().find(|a| a.row.name == job.name).and_then(|a| a.rate);
        body.push_str(&row(job, rate, snapshot.at.max(html::now())));
    }
    body.push_str("</tbody></table></div>");
    if page.rows.is_empty() {
        body.push_str("<p class=\"empty\">No jobs match.</p>");
    }
    body.push_str(&filter.pager(&page));
    let mut frame = frame("Jobs", "jobs", "jobs", &current, &dash);
    if cursor != Cursor::First {
        // Only the first page learns of new jobs; the others still follow their rows.
        frame.page = "jobs-later";
    }
    page_response(StatusCode::OK, &html::page(&frame, &body))
}
