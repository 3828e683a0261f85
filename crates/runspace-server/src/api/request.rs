//! A job request (`POST /v1/jobs`): what it may hold, how it becomes a
//! [`JobSpec`], and what of it is kept.
//!
//! The caller's context (working directory, environment) is turned into
//! the job's session by [`super::context`].

use axum::http::StatusCode;
use runspace::{Error, Grants, JobSpec, Script, SessionState};
use serde::Deserialize;
use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::{bad, context, ApiError};
use crate::limits::JobLimits;

/// The body of `POST /v1/jobs`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Submit {
    pub(super) name: Option<String>,
    pub(super) script: String,
    script_name: Option<String>,
    #[serde(default)]
    params: Map<String, Value>,
    #[serde(default)]
    variables: Map<String, Value>,
    #[serde(default)]
    modules: Vec<ModuleSource>,
    #[serde(default)]
    allow: Vec<String>,
    memory_limit: Option<u64>,
    timeout_ms: Option<u64>,
    pub(super) inputs: Option<Vec<Value>>,
    pub(super) range: Option<RangeSpec>,
    throttle: Option<u64>,
    /// The submitter's working directory (absolute); default `/`.
    pub(super) cwd: Option<String>,
    /// The environment the job's programs and `env` see; default none.
    pub(super) env: Option<BTreeMap<String, String>>,
}

impl Submit {
    /// A run over inputs (or a range), rather than one run of the script.
    pub(super) fn parallel(&self) -> bool {
        self.inputs.is_some() || self.range.is_some()
    }

    /// The explicit inputs as kept apart for restarts (a JSON array).
    pub(super) fn inputs_json(&self) -> Option<String> {
        self.inputs.as_ref().map(|i| Value::Array(i.clone()).to_string())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModuleSource {
    name: String,
    source: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RangeSpec {
    pub(super) start: i64,
    pub(super) end: i64,
}

/// Builds the job from a request: compiles the script and modules, so a
/// syntax error is a 400 that names the line.
pub(super) fn build_spec(req: &Submit) -> Result<(JobSpec, u64), ApiError> {
    let script_name = req.script_name.as_deref().unwrap_or("script");
    let script = Script::named(script_name, &req.script).map_err(engine_error)?;
    let mut spec = JobSpec::new(&script);
    for (k, v) in &req.params {
        spec = spec.param(k, v.clone());
    }
    let items = match (&req.inputs, &req.range) {
        (Some(_), Some(_)) => return Err(bad("give inputs or range, not both")),
        (Some(inputs), None) => inputs.len() as u64,
        (None, Some(r)) => r.start.abs_diff(r.end).saturating_add(1),
        (None, None) => 1,
    };
    let limits =
        JobLimits { throttle: req.throttle, memory_limit: req.memory_limit, timeout_ms: req.timeout_ms, items }
            .check()
            .map_err(|e| bad(e.to_string()))?;
    let custom = !req.variables.is_empty() || !req.modules.is_empty() || !req.allow.is_empty();
    if custom || limits.memory_limit.is_some() {
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
        session = context::apply(session.grants_from(grants).remedies(crate::limits::job_remedies()), req)?;
        if let Some(limit) = limits.memory_limit {
            session = session.memory_limit(limit);
        }
        spec = spec.session(session);
    }
    if let Some(timeout) = limits.timeout {
        spec = spec.timeout(timeout);
    }
    if let Some(t) = limits.throttle {
        spec = spec.throttle(t);
    }
    if let Some(inputs) = &req.inputs {
        spec = spec.inputs(inputs.clone());
    } else if let Some(r) = &req.range {
        spec = spec.range(r.start, r.end);
    }
    let total = spec.total();
    Ok((spec, total))
}

fn engine_error(e: Error) -> ApiError {
    let kind = if matches!(e, Error::Syntax { .. }) { "syntax error" } else { "invalid job" };
    ApiError(StatusCode::BAD_REQUEST, format!("{kind}: {e}").replacen("syntax error: syntax error", "syntax error", 1))
}

/// What is kept of a request: everything but bulky inputs, which are
/// counted here and kept apart ([`crate::store::NewJob::inputs`]) for
/// restarts. `env` may hold secrets: the request is never served back by
/// the API. `origin` is the job this one restarts or reruns.
pub(super) fn request_record(req: &Submit, origin: Option<&str>) -> Value {
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
