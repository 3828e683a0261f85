//! A job's page: live progress, rate, ETA and a chart of items/s; the
//! actions; per-item results walked by key and filterable by status; the
//! tail of each stream with a link to the whole; the request, read-only.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use serde_json::Value;

use super::auth::{page_response, Current};
use super::html::{self, cut, esc, url, Frame};
use super::{cursor, Dashboard};
use crate::store::{From, ItemsPage, JobRow, Page, StoreError, StoredRequest};

/// Item records in one page.
const ITEMS: u64 = 50;
/// Stream records shown in a tail (the download has them all).
const TAIL: u64 = 100;
/// The most characters of one value shown in a cell.
const CELL: usize = 300;
/// The most characters of one stream record shown.
const LINE: usize = 500;
/// The most bytes of the script (escaped) shown: a request may carry
/// 32 MiB, the rest is a download away.
const SCRIPT: usize = 64 * 1024;
/// The most bytes (escaped) of one stream's tail: the records shown are
/// the newest that fit (one at least).
const TAIL_BYTES: usize = 32 * 1024;
/// The most errors shown for one item.
const ERRORS: usize = 3;
/// The most module names listed.
const MODULES: usize = 50;
/// A job's streams, in the order shown.
const STREAMS: [&str; 6] = ["error", "warning", "information", "verbose", "debug", "progress"];
/// An item's statuses, as the filter offers them.
const STATUSES: [&str; 5] = ["Completed", "CompletedWithErrors", "Failed", "TimedOut", "Stopped"];

/// Everything the page shows, read in one blocking call.
struct Found {
    row: JobRow,
    items: ItemsPage,
    /// The tail of each stream that has records (a page is bounded in bytes too).
    tails: Vec<(&'static str, Page)>,
    request: Option<StoredRequest>,
}

/// `GET /jobs/{name}?status=S&below=K|above=K`.
pub(super) async fn page(
    State(dash): State<Arc<Dashboard>>,
    Extension(current): Extension<Current>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let status = q.get("status").filter(|s| STATUSES.contains(&s.as_str())).cloned();
    let cursor = cursor(&q);
    let (store, job, filter) = (dash.store.clone(), name.clone(), status.clone());
    let read = dash
        .read_job(&name, move || -> Result<Option<Found>, StoreError> {
            let Some(row) = store.job_row(&job)? else { return Ok(None) };
            let items = store.item_rows(&job, filter.as_deref(), cursor, ITEMS)?.unwrap_or_default();
            let mut tails = Vec::new();
            for stream in STREAMS {
                if let Some(page) = store.stream(&job, stream, From::Tail, TAIL)?.filter(|p| p.total > 0) {
                    tails.push((stream, page));
                }
            }
            let request = store.stored_request(&job)?;
            Ok(Some(Found { row, items, tails, request }))
        })
        .await;
    let found = match read {
        Ok(found) => found,
        Err(response) => return response,
    };
    let snapshot = dash.live.latest();
    let live = snapshot.job(&name);
    let rate = live.as_ref().and_then(|a| a.rate);
    let eta = live.as_ref().and_then(|a| a.eta());
    let row = live.map(|a| a.row).filter(|r| r.done >= found.row.done).unwrap_or(found.row);
    let mut body = String::new();
    head(&mut body, &row, rate, eta, snapshot.at.max(html::now()));
    if !dash.read_only {
        actions(&mut body, &row, &current.csrf);
    }
    let series = dash.live.series(&name);
    let _ = write!(
        body,
        "<section aria-labelledby=\"chart-h\"><h2 id=\"chart-h\">Items per second</h2>\
         <div class=\"chart\" id=\"rate-chart\" role=\"img\" aria-label=\"items per second over time\" data-points=\"{}\"></div>\
         <p class=\"sub\">Measured by this server while it watched the job.</p></section>",
        esc(&serde_json::to_string(&series).unwrap_or_default())
    );
    results(&mut body, &row, &found.items, status.as_deref());
    streams(&mut body, &row.name, &found.tails);
    request(&mut body, &row.name, found.request.as_ref());
    let frame = Frame {
        title: &name,
        nav: "jobs",
        csrf: &current.csrf,
        read_only: dash.read_only,
        page: "job",
        events: Some(format!("/jobs/{}/events", url(&name))),
    };
    page_response(StatusCode::OK, &html::page(&frame, &body))
}

fn head(body: &mut String, row: &JobRow, rate: Option<f64>, eta: Option<f64>, now: f64) {
    let duration = row.started.map(|s| (row.ended.unwrap_or(now) - s).max(0.0));
    let kind = if row.parallel { "run over inputs" } else { "single run" };
    let _ = write!(
        body,
        "<h1 class=\"job-name\">{name}</h1><p class=\"sub\">{state} {kind} of <code>{script}</code></p>\
         <section class=\"job-progress\" aria-label=\"progress\" data-job=\"{name}\">\
         <progress id=\"bar\" value=\"{done}\" max=\"{max}\"></progress>\
         <dl class=\"stats\"><div><dt>Done</dt><dd id=\"done\">{done}/{total}</dd></div>\
         <div><dt>Rate</dt><dd id=\"rate\">{rate}</dd></div><div><dt>ETA</dt><dd id=\"eta\">{eta}</dd></div>\
         <div><dt>Started</dt><dd>{started}</dd></div><div><dt>Duration</dt><dd id=\"duration\">{duration}</dd></div>\
         <div><dt>Failures</dt><dd>{failed}</dd></div></dl>",
        name = esc(&row.name),
        state = html::state_badge(&row.state),
        script = esc(&row.script_name),
        done = row.done,
        total = row.total,
        max = row.total.max(1),
        rate = html::rate(rate),
        eta = if matches!(row.state.as_str(), "Running") { html::duration(eta) } else { "—".into() },
        started = html::time(row.started),
        duration = html::duration(duration),
        failed = row.failed,
    );
    let error = row.error.as_deref().map(|e| esc(&cut(e, 2000))).unwrap_or_default();
    let hidden = if row.error.is_some() { "" } else { " hidden" };
    let _ = write!(body, "<p class=\"error\" id=\"job-error\"{hidden}>{error}</p></section>");
}

/// The action forms. Each posts with the CSRF token; the script asks
/// for confirmation first, and shows or hides them as the state changes.
fn actions(body: &mut String, row: &JobRow, csrf: &str) {
    let active = matches!(row.state.as_str(), "Queued" | "Running");
    let form = |action: &str, label: &str, when: &str, question: &str, class: &str| {
        let hidden = if (when == "active") == active || when == "any" { "" } else { " hidden" };
        format!(
            "<form method=\"post\" action=\"/jobs/{}/{action}\" data-when=\"{when}\" data-confirm=\"{}\"{hidden}>\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\" class=\"{class}\" \
             data-action=\"{action}\">{label}</button></form>",
            url(&row.name),
            esc(question),
            esc(csrf),
        )
    };
    let name = &row.name;
    body.push_str("<section class=\"actions\" aria-label=\"actions\">");
    body.push_str(&form("stop", "Stop", "active", &format!("Stop job {name}?"), "danger"));
    body.push_str(&form("restart", "Restart", "finished", &format!("Run job {name} again, as a new job?"), ""));
    if row.parallel || row.state == "Failed" {
        body.push_str(&form(
            "rerun-failed",
            "Re-run failed",
            "finished",
            &format!("Run the items of {name} that did not complete again, as a new job?"),
            "",
        ));
    }
    body.push_str(&form("remove", "Remove", "any", &format!("Remove job {name} and all its records?"), "danger"));
    body.push_str(
        "<p class=\"action-result\" id=\"action-result\" role=\"status\" aria-live=\"polite\"></p></section>",
    );
}

/// A JSON value as short text: strings as they are, the rest as JSON.
fn show(value: &Value, max: usize) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => esc(&cut(s, max)),
        other => esc(&cut(&other.to_string(), max)),
    }
}

fn results(body: &mut String, row: &JobRow, items: &ItemsPage, status: Option<&str>) {
    let base = format!("/jobs/{}", url(&row.name));
    let _ = write!(
        body,
        "<section aria-labelledby=\"res-h\"><h2 id=\"res-h\">Results</h2>\
         <p class=\"sub\"><a href=\"{base}/results.jsonl\" download>Download all results (JSON Lines)</a> \
         · <a href=\"{base}\" id=\"refresh-results\">Refresh</a></p>"
    );
    let with = |status: Option<&str>, extra: &str| {
        let mut parts = Vec::new();
        if let Some(s) = status {
            parts.push(format!("status={s}"));
        }
        if !extra.is_empty() {
            parts.push(extra.to_string());
        }
        if parts.is_empty() {
            base.clone()
        } else {
            format!("{base}?{}", parts.join("&"))
        }
    };
    if row.parallel {
        body.push_str("<nav class=\"tabs small\" aria-label=\"item status\">");
        for s in std::iter::once(None).chain(STATUSES.iter().map(|s| Some(*s))) {
            let current = if status == s { " aria-current=\"page\"" } else { "" };
            let _ = write!(body, "<a href=\"{}\"{current}>{}</a>", esc(&with(s, "")), s.unwrap_or("All"));
        }
        body.push_str(
            "</nav><div class=\"scroll\"><table class=\"items\"><thead><tr><th scope=\"col\">#</th>\
             <th scope=\"col\">Status</th><th scope=\"col\">Input</th><th scope=\"col\">Result</th>\
             <th scope=\"col\">Errors</th><th scope=\"col\">Duration</th></tr></thead><tbody>",
        );
        for (_, record) in &items.records {
            let errors = record["errors"].as_array().map(|e| {
                let mut shown: Vec<String> = e.iter().take(ERRORS).map(|v| show(v, CELL)).collect();
                if e.len() > ERRORS {
                    shown.push(format!("and {} more (in the download)", e.len() - ERRORS));
                }
                shown.join("<br>")
            });
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td class=\"bad\">{}</td><td>{}</td></tr>",
                record["index"].as_u64().map(|i| i.to_string()).unwrap_or_default(),
                html::state_badge(record["status"].as_str().unwrap_or("?")),
                show(&record["input"], CELL),
                show(&record["result"], CELL),
                errors.unwrap_or_default(),
                html::duration(record["duration_ms"].as_f64().map(|ms| ms / 1000.0)),
            );
        }
    } else {
        body.push_str("<div class=\"scroll\"><table class=\"items\"><thead><tr><th scope=\"col\">#</th><th scope=\"col\">Output value</th></tr></thead><tbody>");
        for (seq, record) in &items.records {
            let _ = write!(body, "<tr><td>{seq}</td><td><code>{}</code></td></tr>", show(&record["value"], CELL));
        }
    }
    body.push_str("</tbody></table></div>");
    if items.records.is_empty() {
        body.push_str("<p class=\"empty\">No results yet.</p>");
    }
    body.push_str("<nav class=\"pager\" aria-label=\"result pages\">");
    if items.more_below {
        let _ = write!(body, "<a href=\"{}\">« First</a>", esc(&with(status, "")));
        if let Some((first, _)) = items.records.first() {
            let _ = write!(
                body,
                "<a href=\"{}\" rel=\"prev\">‹ Earlier</a>",
                esc(&with(status, &format!("below={first}")))
            );
        }
    }
    if items.more_above {
        if let Some((last, _)) = items.records.last() {
            let _ =
                write!(body, "<a href=\"{}\" rel=\"next\">Later ›</a>", esc(&with(status, &format!("above={last}"))));
        }
    }
    body.push_str("</nav></section>");
}

fn streams(body: &mut String, name: &str, tails: &[(&str, Page)]) {
    body.push_str("<section aria-labelledby=\"str-h\"><h2 id=\"str-h\">Streams</h2>");
    for (stream, page) in tails {
        // The newest lines that fit in the budget, oldest first.
        let mut lines = Vec::new();
        let mut bytes = 0;
        for record in page.records.iter().rev() {
            let line = show(record, LINE);
            if !lines.is_empty() && bytes + line.len() > TAIL_BYTES {
                break;
            }
            bytes += line.len() + 1;
            lines.push(line);
        }
        lines.reverse();
        let _ = write!(
            body,
            "<details{open}><summary>{stream} <span class=\"n\">{count}</span></summary>\
             <p class=\"sub\">The last {shown} of {count} records · \
             <a href=\"/jobs/{href}/streams/{stream}\" download>Download all</a></p><pre class=\"tail\">",
            open = if *stream == "error" { " open" } else { "" },
            count = page.total,
            shown = lines.len(),
            href = url(name),
        );
        for line in lines {
            body.push_str(&line);
            body.push('\n');
        }
        body.push_str("</pre></details>");
    }
    if tails.is_empty() {
        body.push_str("<p class=\"empty\">No stream records (they are stored when the job ends).</p>");
    }
    body.push_str("</section>");
}

fn request(body: &mut String, name: &str, stored: Option<&StoredRequest>) {
    body.push_str("<section aria-labelledby=\"req-h\"><h2 id=\"req-h\">Request</h2>");
    let Some(stored) = stored else {
        body.push_str("<p class=\"empty\">Not stored.</p></section>");
        return;
    };
    let r = &stored.request;
    let script = r["script"].as_str().unwrap_or("");
    let (shown, whole) = html::esc_within(script, SCRIPT);
    let _ = write!(body, "<details open><summary>Script <code>{}</code></summary>", show(&r["script_name"], CELL));
    if !whole {
        let _ = write!(
            body,
            "<p class=\"sub\">The start of a script of {} bytes · \
             <a href=\"/jobs/{}/script\" download>Download the whole script</a></p>",
            script.len(),
            url(name)
        );
    }
    let _ = write!(body, "<pre class=\"script\"><code>{shown}</code></pre></details>");
    body.push_str("<dl class=\"request\">");
    let mut field = |label: &str, value: String| {
        if !value.is_empty() {
            let _ = write!(body, "<div><dt>{label}</dt><dd>{value}</dd></div>");
        }
    };
    let json = |v: &Value| match v {
        Value::Null => String::new(),
        Value::Object(m) if m.is_empty() => String::new(),
        Value::Array(a) if a.is_empty() => String::new(),
        v => format!("<code>{}</code>", esc(&cut(&v.to_string(), 4000))),
    };
    field("Parameters", json(&r["params"]));
    field("Variables", json(&r["variables"]));
    let all_modules = r["modules"].as_array().map_or(&[][..], |m| m.as_slice());
    let mut modules: Vec<String> =
        all_modules.iter().take(MODULES).filter_map(|m| m["name"].as_str().map(|n| esc(&cut(n, CELL)))).collect();
    if all_modules.len() > MODULES {
        modules.push(format!("and {} more", all_modules.len() - MODULES));
    }
    field("Modules", modules.join(", "));
    field("Grants", json(&r["allow"]));
    field("Inputs", r["inputs"].as_u64().map(|n| format!("{n} explicit inputs")).unwrap_or_default());
    field("Range", r["range"].as_object().map(|o| format!("{}..{}", o["start"], o["end"])).unwrap_or_default());
    field("Throttle", r["throttle"].as_u64().map(|n| n.to_string()).unwrap_or_default());
    field("Timeout", r["timeout_ms"].as_u64().map(|ms| html::duration(Some(ms as f64 / 1000.0))).unwrap_or_default());
    field("Memory limit", r["memory_limit"].as_u64().map(runspace::units::format_size).unwrap_or_default());
    field("Working directory", r["cwd"].as_str().map(|c| format!("<code>{}</code>", esc(c))).unwrap_or_default());
    // The environment may hold secrets: its names only, never its values.
    let env: Vec<String> = r["env"].as_object().map(|e| e.keys().map(|k| esc(k)).collect()).unwrap_or_default();
    field("Environment", if env.is_empty() { String::new() } else { format!("{} (values not shown)", env.join(", ")) });
    field(
        "Restart of",
        r["origin"].as_str().map(|o| format!("<a href=\"/jobs/{}\">{}</a>", url(o), esc(o))).unwrap_or_default(),
    );
    body.push_str("</dl></section>");
}
