//! The options that say what to run and with what: shared by `rsp run` and
//! `rsp job start`, so both build sessions the same way.

use std::path::PathBuf;

use runspace::{Grants, Script, SessionState};
use serde_json::Value;

use crate::common::parse;
use crate::common::CliError;

/// What to run, and the session it runs in.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ScriptArgs {
    /// Luau script file to run for each input.
    /// (Required unless -e or --cmd is given; checked when the script is read.)
    #[arg(value_name = "SCRIPT_FILE")]
    pub script: Option<PathBuf>,

    /// Run this code instead of a file.
    #[arg(short = 'e', long = "eval", value_name = "CODE", conflicts_with = "script")]
    pub code: Option<String>,

    /// A read-only global every item sees (VALUE is JSON when it parses as JSON, else a string).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,

    /// A named parameter: a global of each invocation (VALUE as for --var).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,

    /// A Luau module loaded once per runspace, bound to a global named after the file.
    #[arg(long = "module", value_name = "FILE")]
    pub modules: Vec<PathBuf>,

    /// Grant a capability: fs, fs:PATH, fs-write, fs-write:PATH, proc, net, http, exec, env (repeat or comma-separate).
    #[arg(long = "allow", value_name = "CAP")]
    pub allow: Vec<String>,

    /// Memory limit per runspace, e.g. 64MB: an item allocating past it fails, the rest carry on.
    #[arg(long, value_name = "SIZE")]
    pub memory_limit: Option<String>,
}

impl ScriptArgs {
    /// The script's source and the name errors use, as text (a job's
    /// script travels as a JSON string).
    pub fn source(&self) -> Result<(String, String), CliError> {
        let (name, bytes) = self.source_bytes()?;
        let source = String::from_utf8(bytes)
            .map_err(|_| CliError::usage(format!("script {name} is not UTF-8 text, which a job's script must be")))?;
        Ok((name, source))
    }

    /// The script's source as bytes (a Lua string literal may hold any
    /// byte) and the name errors use.
    fn source_bytes(&self) -> Result<(String, Vec<u8>), CliError> {
        match (&self.code, &self.script) {
            (Some(code), _) => Ok(("script".to_string(), code.clone().into_bytes())),
            (None, Some(path)) => {
                let source = std::fs::read(path)
                    .map_err(|e| CliError::usage(format!("cannot read script {}: {e}", path.display())))?;
                let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into());
                Ok((name, source))
            }
            (None, None) => Err(CliError::usage("give a SCRIPT_FILE or -e CODE")),
        }
    }

    /// The compiled script: a syntax error is reported here, with its line.
    pub fn script(&self) -> Result<Script, CliError> {
        let (name, source) = self.source_bytes()?;
        Script::named(&name, &source).map_err(CliError::script)
    }

    /// The session: variables, modules, capabilities, memory limit.
    pub fn session(&self) -> Result<SessionState, CliError> {
        let mut session = SessionState::new();
        for var in &self.vars {
            let (name, value) = parse::name_value(var).map_err(|e| CliError::usage(format!("--var: {e}")))?;
            session = session.variable(&name, value).map_err(|e| CliError::usage(format!("--var: {e}")))?;
        }
        for module in &self.modules {
            session = session.module_file(module).map_err(CliError::script)?;
        }
        session = session.grants_from(self.grants()?);
        if let Some(limit) = &self.memory_limit {
            session =
                session.memory_limit(parse::size(limit).map_err(|e| CliError::usage(format!("--memory-limit: {e}")))?);
        }
        Ok(session)
    }

    /// The granted capabilities.
    pub fn grants(&self) -> Result<Grants, CliError> {
        let mut grants = Grants::default();
        for spec in &self.allow {
            grants.grant_spec(spec).map_err(|e| CliError::usage(format!("--allow: {e}")))?;
        }
        Ok(grants)
    }

    /// The named parameters.
    pub fn params(&self) -> Result<Vec<(String, Value)>, CliError> {
        self.params.iter().map(|p| parse::name_value(p).map_err(|e| CliError::usage(format!("--param: {e}")))).collect()
    }
}
