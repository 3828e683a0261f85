//! Printing jobs: aligned tables for people, JSON for programs.

use crate::common::diag::diag;
use std::io::{self, Write};

use serde_json::Value;

/// Prints one line. A reader that went away (`| head`) ends the program
/// quietly (exit 0), as it would a filter; any other write error ends it
/// with a message (exit 1).
pub fn line(text: &str) {
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        diag!("rsp job: cannot write output: {e}");
        std::process::exit(1);
    }
}

pub fn json(v: &Value) {
    line(&serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn progress(job: &Value) -> String {
    let p = &job["progress"];
    format!("{}/{}", p["done"].as_u64().unwrap_or(0), p["total"].as_u64().unwrap_or(0))
}

fn duration(job: &Value) -> String {
    job["duration_s"].as_f64().map_or_else(String::new, |d| format!("{d:.3}s"))
}

fn shorten(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.chars().count() > max {
        format!("{}…", line.chars().take(max - 1).collect::<String>())
    } else {
        line.to_string()
    }
}

/// One line per job.
pub fn job_table(jobs: &[Value], total: Option<u64>) {
    let rows: Vec<[String; 6]> = jobs
        .iter()
        .map(|j| {
            [
                text(&j["name"]),
                text(&j["state"]),
                progress(j),
                duration(j),
                text(&j["start"]),
                shorten(&text(&j["error"]), 60),
            ]
        })
        .collect();
    let header = ["NAME", "STATE", "PROGRESS", "DURATION", "STARTED", "ERROR"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        line(cells.join("  ").trim_end());
    }
    if let Some(total) = total {
        if total > jobs.len() as u64 {
            diag!("({} of {total} jobs shown; use --offset/--limit for more)", jobs.len());
        }
    }
}

/// Everything about one job, one field per line.
pub fn job_detail(job: &Value) {
    let field = |k: &str, v: String| {
        if !v.is_empty() {
            line(&format!("{k:<10} {v}"));
        }
    };
    field("Name", text(&job["name"]));
    field("State", text(&job["state"]));
    field("Kind", text(&job["kind"]));
    field("Progress", progress(job));
    field("Submitted", text(&job["submitted"]));
    field("Start", text(&job["start"]));
    field("End", text(&job["end"]));
    field("Duration", duration(job));
    field("Outputs", text(&job["output_count"]));
    field("Error", text(&job["error"]));
    if let Some(history) = job["history"].as_array() {
        let steps: Vec<String> =
            history.iter().map(|h| format!("{} ({})", text(&h["state"]), text(&h["at"]))).collect();
        field("History", steps.join(" -> "));
    }
    if let Some(streams) = job["streams"].as_object() {
        for (stream, records) in streams {
            let shown = records.as_array().map_or(0, Vec::len) as u64;
            let count = job["stream_counts"][stream].as_u64().unwrap_or(shown);
            if count > shown {
                line(&format!(
                    "{:<10} ({} earlier records: GET /v1/jobs/{}/streams/{stream})",
                    format!("[{stream}]"),
                    count - shown,
                    text(&job["name"])
                ));
            }
            for record in records.as_array().into_iter().flatten() {
                line(&format!("{:<10} {}", format!("[{stream}]"), text(record)));
            }
        }
    }
}

/// One output record: a value as is, an item as `index  status  result`.
pub fn output_text(record: &Value) -> String {
    if let Some(value) = record.get("value") {
        text(value)
    } else {
        let errors: Vec<String> = record["errors"].as_array().into_iter().flatten().map(text).collect();
        let row = format!(
            "{}\t{}\t{}\t{}",
            record["index"],
            text(&record["status"]),
            text(&record["result"]),
            errors.join("; ")
        );
        row.trim_end().to_string()
    }
}

/// A value on one line (`--format jsonl`).
pub fn json_line(v: &Value) {
    line(&v.to_string());
}
