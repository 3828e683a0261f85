//! The caller's context sent with `rsp job start`: the working directory
//! (relative path grants are resolved here, against it) and the
//! environment the job's programs and `env` will see.
//!
//! The default environment is the caller's whole environment when the job
//! is granted `exec` or `env` (the only ways a script can see a variable),
//! and nothing otherwise, so that variables, often secrets, are stored
//! with a job only when it could use them. `--env NAME` / `--env
//! NAME=VALUE` send only those; `--no-env` sends none.

use std::path::{Path, PathBuf};

use runspace::{Capability, Grants};
use serde_json::{json, Map, Value};

use crate::common::CliError;

/// The environment options of `rsp job start`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct EnvArgs {
    /// Send only this variable to the job (NAME: its value here, skipped when unset; NAME=VALUE: that value).
    /// Repeatable. Default: the whole environment when --allow exec or env is given, else none.
    #[arg(long = "env", value_name = "NAME[=VALUE]")]
    pub env: Vec<String>,

    /// Send no environment variables: the job's programs start with an empty environment.
    #[arg(long, conflicts_with = "env")]
    pub no_env: bool,
}

/// The caller's working directory, as the absolute path the server is sent.
pub fn working_dir() -> Result<PathBuf, CliError> {
    std::env::current_dir().map_err(|e| CliError::usage(format!("cannot read the current directory: {e}")))
}

/// `--allow` specs with relative paths (`fs:.`) made absolute against `cwd`.
pub fn absolute_grants(specs: &[String], cwd: &Path) -> Vec<String> {
    specs
        .iter()
        .flat_map(|spec| spec.split(',').map(str::trim).filter(|p| !p.is_empty()))
        .map(|part| match part.split_once(':') {
            Some((cap, path)) if Path::new(path).is_relative() && !path.is_empty() => {
                format!("{cap}:{}", cwd.join(path).display())
            }
            _ => part.to_string(),
        })
        .collect()
}

/// The environment to send, as a JSON object; `None` sends nothing (the
/// job then sees no variables).
pub fn environment(args: &EnvArgs, grants: &Grants) -> Result<Option<Value>, CliError> {
    if args.no_env {
        return Ok(Some(json!({})));
    }
    let mut vars = Map::new();
    if args.env.is_empty() {
        if !grants.allows(Capability::Exec) && !grants.allows(Capability::Env) {
            return Ok(None);
        }
        // Variables that are not UTF-8 cannot travel as JSON text; they are left out.
        for (name, value) in std::env::vars_os() {
            if let (Some(name), Some(value)) = (name.to_str(), value.to_str()) {
                vars.insert(name.into(), json!(value));
            }
        }
        return Ok(Some(Value::Object(vars)));
    }
    for spec in &args.env {
        let (name, value) = match spec.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (spec.as_str(), std::env::var(spec).ok()),
        };
        if name.is_empty() || name.contains('\0') {
            return Err(CliError::usage(format!("--env: '{spec}' names no variable (expected NAME or NAME=VALUE)")));
        }
        if let Some(value) = value {
            vars.insert(name.into(), json!(value));
        }
    }
    Ok(Some(Value::Object(vars)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_path_grants_become_absolute_and_others_stay() {
        let specs = vec!["fs:.,net".to_string(), "fs-write:out/x".to_string(), "fs:/abs".to_string()];
        let got = absolute_grants(&specs, Path::new("/home/me"));
        assert_eq!(got, ["fs:/home/me/.", "net", "fs-write:/home/me/out/x", "fs:/abs"]);
    }

    #[test]
    fn the_environment_is_sent_only_when_the_job_can_see_it() {
        let none = Grants::default();
        assert_eq!(environment(&EnvArgs::default(), &none).unwrap(), None);
        let mut exec = Grants::default();
        exec.grant(Capability::Exec);
        let all = environment(&EnvArgs::default(), &exec).unwrap().unwrap();
        assert_eq!(all["PATH"], json!(std::env::var("PATH").unwrap()));
        let no = EnvArgs { no_env: true, ..EnvArgs::default() };
        assert_eq!(environment(&no, &exec).unwrap(), Some(json!({})));
        let some = EnvArgs { env: vec!["A=1".into(), "PATH".into(), "RSP_SURELY_UNSET".into()], no_env: false };
        let got = environment(&some, &none).unwrap().unwrap();
        assert_eq!(got, json!({"A": "1", "PATH": std::env::var("PATH").unwrap()}));
        let bad = EnvArgs { env: vec!["=x".into()], no_env: false };
        assert!(environment(&bad, &none).unwrap_err().message.contains("names no variable"));
    }
}
