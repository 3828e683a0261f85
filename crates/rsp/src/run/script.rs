//! The options that say what to run and with what: shared by `rsp run` and
//! `rsp job start`, so both build sessions the same way.

use std::path::PathBuf;

use runspace::{Grants, Remedies, Remedy, Script, SessionState};
use serde_json::Value;

use runspace_server::limits::MIN_MEMORY_LIMIT;

use super::inputs::strip_bom;
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
                Ok((name, strip_bom(&source).to_vec()))
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
        for (name, source) in self.module_sources()? {
            session = session.module(&name, source).map_err(CliError::script)?;
        }
        session = session.grants_from(self.grants()?).remedies(flag_remedies());
        if let Some(bytes) = self.memory_limit()? {
            session = session.memory_limit(bytes);
        }
        Ok(session)
    }

    /// The `--module` files: each one's name (the file's stem, as the
    /// library names a module file) and source, a byte-order mark skipped.
    pub fn module_sources(&self) -> Result<Vec<(String, Vec<u8>)>, CliError> {
        self.modules
            .iter()
            .map(|path| {
                let source = std::fs::read(path)
                    .map_err(|e| CliError::usage(format!("cannot read module {}: {e}", path.display())))?;
                let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                Ok((name, strip_bom(&source).to_vec()))
            })
            .collect()
    }

    /// `--memory-limit`, checked: below 1 MB no runspace can even open, so a
    /// bare `10` (ten bytes, not ten megabytes) is refused with that said.
    pub fn memory_limit(&self) -> Result<Option<usize>, CliError> {
        let Some(text) = &self.memory_limit else { return Ok(None) };
        let bytes = parse::size(text).map_err(|e| CliError::usage(format!("--memory-limit: {e}")))?;
        if (bytes as u64) < MIN_MEMORY_LIMIT {
            let unit = if text.trim().bytes().all(|b| b.is_ascii_digit()) { " (a bare number is bytes)" } else { "" };
            return Err(CliError::usage(format!(
                "--memory-limit {text} means {} bytes{unit}, too small: a runspace needs at least {} (e.g. 64MB)",
                crate::common::human::human_count(bytes as u64),
                runspace::units::format_size(MIN_MEMORY_LIMIT)
            )));
        }
        Ok(Some(bytes))
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

/// A refusal's hint names the flag that fixes it (the engine names only the
/// capability or module).
fn flag_remedies() -> Remedies {
    Remedies::new(|remedy| match remedy {
        Remedy::Grant(capability) => format!("grant it with --allow {capability}"),
        Remedy::GrantPath(capability) => format!("grant it with --allow {capability}:DIR"),
        Remedy::AddModule(name) => format!("add it with --module {name}.luau"),
        _ => String::new(),
    })
}
