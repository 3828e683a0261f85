//! What a worker makes of a cluster job's stored request: the compiled
//! script, its session (variables, modules, grants, the submitter's
//! working directory and environment, limits) and its parameters; or why
//! this worker refuses it.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use runspace::{Grants, RunspacePool, Script, SessionState};
use serde_json::{Map, Value};

/// A job ready to run on this worker.
pub(super) struct Prepared {
    pub(super) pool: RunspacePool,
    pub(super) script: Script,
    pub(super) params: Map<String, Value>,
    pub(super) timeout: Option<Duration>,
}

/// Why a job cannot run on this worker: beyond its grants, or broken.
pub(super) struct Refusal(pub(super) String);

/// Builds the job's session; refuses what asks for more than `allow_max`.
pub(super) fn prepare(request: &Value, allow_max: &Grants, slots: usize) -> Result<Prepared, Refusal> {
    let text = |key: &str| request.get(key).and_then(Value::as_str);
    let script_name = text("script_name").unwrap_or("script");
    let source = text("script").ok_or_else(|| Refusal("the job's request has no script".into()))?;
    let script = Script::named(script_name, source).map_err(|e| Refusal(format!("invalid job: {e}")))?;
    let mut asked = Grants::default();
    for spec in request.get("allow").and_then(Value::as_array).into_iter().flatten() {
        let spec = spec.as_str().unwrap_or_default();
        asked.grant_spec(spec).map_err(|e| Refusal(format!("invalid job: allow: {e}")))?;
    }
    let cwd = text("cwd").unwrap_or("/");
    // Judged and granted as the host will resolve them, not as written.
    let asked = on_disk_grants(&asked, Path::new(cwd))?;
    within(&asked, allow_max)?;
    let mut session = SessionState::new().grants_from(asked).remedies(crate::limits::job_remedies());
    for (k, v) in request.get("variables").and_then(Value::as_object).into_iter().flatten() {
        session = session.variable(k, v.clone()).map_err(|e| Refusal(format!("invalid job: {e}")))?;
    }
    for m in request.get("modules").and_then(Value::as_array).into_iter().flatten() {
        let (name, source) = (m["name"].as_str().unwrap_or_default(), m["source"].as_str().unwrap_or_default());
        session = session.module(name, source).map_err(|e| Refusal(format!("invalid job: module {name}: {e}")))?;
    }
    session = session.working_dir(cwd).map_err(|e| Refusal(format!("cwd: {e}")))?;
    let env: Vec<(String, String)> = request
        .get("env")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect();
    session = session.environment(env).map_err(|e| Refusal(format!("env: {e}")))?;
    if let Some(limit) = request.get("memory_limit").and_then(Value::as_u64) {
        session = session.memory_limit(usize::try_from(limit).unwrap_or(usize::MAX));
    }
    let timeout = request.get("timeout_ms").and_then(Value::as_u64).map(Duration::from_millis);
    let pool = RunspacePool::builder()
        .max(slots)
        .session(session)
        .open()
        .map_err(|e| Refusal(format!("cannot open a pool for it: {e}")))?;
    let params = request.get("params").and_then(Value::as_object).cloned().unwrap_or_default();
    // A parameter the engine refuses is refused once here, not at every chunk.
    let mut check = pool.parallel(&script);
    for (k, v) in &params {
        check = check.param(k, v.clone()).map_err(|e| Refusal(format!("invalid job: parameter {k}: {e}")))?;
    }
    drop(check);
    Ok(Prepared { pool, script, params, timeout })
}

/// The job's grants with every root as the host's file system resolves it:
/// made absolute against the job's working directory, its symbolic links
/// and `.` followed. A root is compared with the worker's maximum, and
/// then checked at every access, by what it resolves to: compared as
/// written, `fs:/data/../etc` and `fs:/data/link-to-etc` passed a worker
/// allowed `fs:/data` at most and then read `/etc`. A root holding `..` is
/// refused outright: under a part that does not exist yet it could come to
/// resolve elsewhere once that part is created.
fn on_disk_grants(asked: &Grants, cwd: &Path) -> Result<Grants, Refusal> {
    let mut resolved = Grants::default();
    for cap in asked.iter() {
        let roots = asked.roots(cap).unwrap_or_default();
        if roots.is_empty() {
            resolved.grant(cap);
        }
        for root in roots {
            if root.components().any(|c| c == Component::ParentDir) {
                return Err(Refusal(format!("the job asks for '{cap}:{}', a path with '..'", root.display())));
            }
            let on_disk = runspace::resolve_on_disk(&cwd.join(root)).map_err(|e| {
                Refusal(format!("the job asks for '{cap}:{}', which cannot be resolved: {e}", root.display()))
            })?;
            resolved.grant_path(cap, on_disk);
        }
    }
    Ok(resolved)
}

/// Refuses grants beyond `max`: a capability it does not have, or a path
/// outside the roots it limits that capability to (both compared as they
/// resolve on this host).
fn within(asked: &Grants, max: &Grants) -> Result<(), Refusal> {
    let allowed: Vec<String> = max.iter().map(|c| c.to_string()).collect();
    let allowed = if allowed.is_empty() { "nothing".to_string() } else { allowed.join(",") };
    for cap in asked.iter() {
        let Some(max_roots) = max.roots(cap) else {
            return Err(Refusal(format!(
                "the job asks for the '{cap}' capability, beyond what this worker grants at most ({allowed})"
            )));
        };
        if max_roots.is_empty() {
            continue;
        }
        let roots = asked.roots(cap).unwrap_or_default();
        let max_on_disk: Vec<PathBuf> =
            max_roots.iter().map(|m| runspace::resolve_on_disk(m).unwrap_or_else(|_| m.to_path_buf())).collect();
        let inside = |r: &Path| max_on_disk.iter().any(|m| r.starts_with(m));
        if roots.is_empty() || !roots.iter().all(|r| inside(r)) {
            let max: Vec<String> = max_roots.iter().map(|r| r.display().to_string()).collect();
            return Err(Refusal(format!(
                "the job asks for '{cap}' outside what this worker grants at most ({cap}:{})",
                max.join(",")
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(spec: &str) -> Grants {
        let mut g = Grants::default();
        g.grant_spec(spec).unwrap();
        g
    }

    #[test]
    fn a_worker_refuses_capabilities_and_paths_beyond_its_maximum() {
        assert!(within(&grants("fs"), &grants("fs,net")).is_ok());
        assert!(within(&grants("fs:/data/x"), &grants("fs:/data")).is_ok());
        let e = within(&grants("exec"), &grants("fs")).err().unwrap().0;
        assert!(e.contains("'exec'") && e.contains("(fs)"), "{e}");
        let e = within(&grants("fs"), &grants("fs:/data")).err().unwrap().0;
        assert!(e.contains("outside") && e.contains("fs:/data"), "{e}");
        assert!(within(&grants("fs:/etc"), &grants("fs:/data")).is_err());
        assert!(within(&grants("net"), &Grants::default()).err().unwrap().0.contains("(nothing)"));
    }
}
