//! The submitter's context: the working directory and environment a job
//! runs with. Never the server's own: a request without `cwd` runs in `/`,
//! one without `env` sees no variables at all.

use runspace::SessionState;

use super::{bad, ApiError, Submit};

/// Gives `session` the request's working directory and environment.
pub(super) fn apply(session: SessionState, req: &Submit) -> Result<SessionState, ApiError> {
    let cwd = req.cwd.as_deref().unwrap_or("/");
    let session = session.working_dir(cwd).map_err(|e| bad(format!("cwd: {e}")))?;
    let env = req.env.clone().unwrap_or_default();
    session.environment(env).map_err(|e| bad(format!("env: {e}")))
}
