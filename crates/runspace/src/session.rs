//! What every runspace of a session starts with: PowerShell's `InitialSessionState`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::capability::{Capability, Grants};
use crate::error::{Error, Result};
use crate::host::Surroundings;
use crate::live::LiveOutput;
use crate::remedy::Remedies;
use crate::script::compile;

/// Names a script always has; a variable, parameter or module may not hide them.
pub(crate) const RESERVED: &[&str] = &[
    "_",
    "_G",
    "_VERSION",
    "emit",
    "print",
    "write_error",
    "write_warning",
    "write_verbose",
    "write_debug",
    "write_information",
    "write_progress",
    "sleep",
    "now",
    "json",
    "measure",
    "require",
    "string",
    "table",
    "math",
    "utf8",
    "coroutine",
    "buffer",
    "bit32",
    "vector",
    "error",
    "pcall",
    "xpcall",
    "type",
    "typeof",
    "tostring",
    "tonumber",
    "pairs",
    "ipairs",
    "next",
    "select",
    "setmetatable",
    "getmetatable",
    "rawget",
    "rawset",
    "rawequal",
    "rawlen",
    "assert",
    "unpack",
    "collectgarbage",
    "gcinfo",
    "newproxy",
    "fs",
    "proc",
    "net",
    "http",
    "exec",
    "env",
];

/// Luau keywords, which cannot be variable names either.
const KEYWORDS: &[&str] = &[
    "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "if", "in", "local", "nil", "not", "or",
    "repeat", "return", "then", "true", "until", "while", "continue",
];

/// Checks that `name` can be a global a script refers to.
pub(crate) fn check_name(kind: &str, name: &str) -> Result<()> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric());
    if !valid || KEYWORDS.contains(&name) {
        return Err(Error::Session(format!(
            "{kind} name '{name}' is not a valid identifier (letters, digits and _, not starting with a digit, not a keyword)"
        )));
    }
    if RESERVED.contains(&name) {
        return Err(Error::Session(format!("{kind} name '{name}' would hide the built-in '{name}'")));
    }
    Ok(())
}

/// A module: Luau source run once per runspace, its return value bound to
/// a global named after it (and returned by `require("name")`).
#[derive(Debug, Clone)]
pub(crate) struct Module {
    pub(crate) name: String,
    pub(crate) bytecode: Vec<u8>,
}

/// Everything a runspace starts with: variables, modules, granted
/// capabilities and limits. Cheap to clone; shared by every runspace of a
/// pool.
///
/// ```
/// use runspace::{SessionState, Capability};
/// use serde_json::json;
/// use std::time::Duration;
///
/// let state = SessionState::new()
///     .variable("greeting", json!("hello")).unwrap()
///     .module("util", "return { double = function(x) return 2 * x end }").unwrap()
///     .allow(Capability::Net)
///     .memory_limit(64 << 20)
///     .timeout(Duration::from_secs(5));
/// assert!(state.grants().allows(Capability::Net));
/// ```
#[derive(Debug, Clone, Default)]
pub struct SessionState {
    pub(crate) variables: BTreeMap<String, Value>,
    pub(crate) modules: Vec<Module>,
    pub(crate) grants: Grants,
    pub(crate) memory_limit: Option<usize>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) max_output: Option<usize>,
    pub(crate) surroundings: Arc<Surroundings>,
    pub(crate) live: Option<LiveOutput>,
    pub(crate) remedies: Remedies,
}

/// Bytes of output and stream records one invocation may produce unless
/// [`SessionState::max_output`] says otherwise.
pub const DEFAULT_MAX_OUTPUT: usize = 16 << 20;

impl SessionState {
    /// An empty, fully sandboxed session: no variables, modules or capabilities, no limits.
    pub fn new() -> SessionState {
        SessionState::default()
    }

    /// Adds a variable every script sees as a read-only global.
    pub fn variable(mut self, name: &str, value: Value) -> Result<SessionState> {
        check_name("variable", name)?;
        self.variables.insert(name.to_string(), value);
        Ok(self)
    }

    /// Adds a module from source: run once per runspace, its return value
    /// bound to the global `name`. Compiled now, so a syntax error is
    /// reported before any runspace opens. The source is bytes (a Lua string
    /// literal may hold any byte); a `&str` works as well.
    pub fn module(mut self, name: &str, source: impl AsRef<[u8]>) -> Result<SessionState> {
        check_name("module", name)?;
        if self.modules.iter().any(|m| m.name == name) {
            return Err(Error::Session(format!("module '{name}' is added twice")));
        }
        let bytecode = compile(name, source.as_ref())?;
        self.modules.push(Module { name: name.to_string(), bytecode });
        Ok(self)
    }

    /// Adds a module from a file, named after the file's stem
    /// (`lib/net_util.luau` binds `net_util`).
    pub fn module_file(self, path: impl AsRef<Path>) -> Result<SessionState> {
        let path = path.as_ref();
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let source = std::fs::read(path).map_err(|e| Error::Module {
            name: path.display().to_string(),
            message: format!("cannot read file: {e}"),
        })?;
        self.module(&name, &source)
    }

    /// Grants a capability everywhere.
    pub fn allow(mut self, capability: Capability) -> SessionState {
        self.grants.grant(capability);
        self
    }

    /// Replaces the granted capabilities.
    pub fn grants_from(mut self, grants: Grants) -> SessionState {
        self.grants = grants;
        self
    }

    /// The granted capabilities.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// Limits each runspace's VM to `bytes` of memory. An allocation past it
    /// fails the item that made it; the runspace stays usable.
    pub fn memory_limit(mut self, bytes: usize) -> SessionState {
        self.memory_limit = Some(bytes);
        self
    }

    /// The default timeout of every invocation and item of this session.
    pub fn timeout(mut self, timeout: Duration) -> SessionState {
        // Past MAX_DURATION a deadline (now + timeout) overflows `Instant` and
        // panics: `Duration::MAX` means "no real limit", so it is clamped.
        self.timeout = Some(timeout.min(crate::units::MAX_DURATION));
        self
    }

    /// Caps what one invocation or item may produce: its output values and
    /// stream records, counted roughly as their JSON size as they are
    /// captured (default [`DEFAULT_MAX_OUTPUT`], 16 MB). Past it the item
    /// fails with "output limit of 16 MB exceeded" and the rest carry on, so
    /// a script printing in an endless loop cannot exhaust the host's memory.
    pub fn max_output(mut self, bytes: usize) -> SessionState {
        self.max_output = Some(bytes);
        self
    }

    /// How refusals word their hint (see [`Remedies`]): a front end names
    /// its own flags or fields; the default names this library's API.
    pub fn remedies(mut self, remedies: Remedies) -> SessionState {
        self.remedies = remedies;
        self
    }

    /// Hands each line of the external commands a script names with
    /// `exec`'s `live` option to `handler` as it is read, while they run;
    /// see [`LiveOutput`].
    pub fn live_output(mut self, handler: LiveOutput) -> SessionState {
        self.live = Some(handler);
        self
    }

    /// The output cap of each invocation, in bytes.
    pub fn max_output_bytes(&self) -> usize {
        self.max_output.unwrap_or(DEFAULT_MAX_OUTPUT)
    }

    /// Sets the directory the session's scripts stand in: relative paths
    /// of `fs`, relative path grants (`fs:.`), and `exec`'s programs and
    /// `cwd` resolve against it, and `exec` runs programs there. The
    /// default is the process's working directory. `dir` must be absolute.
    ///
    /// ```
    /// use runspace::SessionState;
    /// let state = SessionState::new().working_dir("/srv/data").unwrap();
    /// assert_eq!(state.working_directory(), Some(std::path::Path::new("/srv/data")));
    /// assert!(SessionState::new().working_dir("relative").is_err());
    /// ```
    pub fn working_dir(mut self, dir: impl Into<PathBuf>) -> Result<SessionState> {
        let dir = dir.into();
        if !dir.is_absolute() {
            return Err(Error::Session(format!("working directory '{}' is not an absolute path", dir.display())));
        }
        Arc::make_mut(&mut self.surroundings).working_dir = Some(dir);
        Ok(self)
    }

    /// Sets exactly the environment variables the session's scripts see:
    /// `env.get`/`env.vars` read them and `exec` gives them (and nothing of
    /// the process's own) to the programs it starts. The default is the
    /// process's environment. Names must be non-empty without `=` or NUL,
    /// values without NUL.
    ///
    /// ```
    /// use runspace::SessionState;
    /// let state = SessionState::new().environment([("LANG".to_string(), "C".to_string())]).unwrap();
    /// assert_eq!(state.environment_vars().unwrap()["LANG"], "C");
    /// assert!(SessionState::new().environment([("A=B".to_string(), String::new())]).is_err());
    /// ```
    pub fn environment(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Result<SessionState> {
        let mut map = BTreeMap::new();
        for (name, value) in vars {
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(Error::Session(format!("environment variable name '{name}' is empty or holds '=' or NUL")));
            }
            if value.contains('\0') {
                return Err(Error::Session(format!("environment variable '{name}' holds a NUL byte")));
            }
            map.insert(name, value);
        }
        Arc::make_mut(&mut self.surroundings).environment = Some(map);
        Ok(self)
    }

    /// The working directory set with [`SessionState::working_dir`], if any.
    pub fn working_directory(&self) -> Option<&Path> {
        self.surroundings.working_dir.as_deref()
    }

    /// The environment set with [`SessionState::environment`], if any.
    pub fn environment_vars(&self) -> Option<&BTreeMap<String, String>> {
        self.surroundings.environment.as_ref()
    }

    /// The grants host functions check: relative path grants made absolute
    /// against the working directory, when the session has one.
    pub(crate) fn host_grants(&self) -> Grants {
        match &self.surroundings.working_dir {
            Some(dir) => self.grants.relative_to(dir),
            None => self.grants.clone(),
        }
    }

    /// The per-runspace memory limit, if any.
    pub fn memory_limit_bytes(&self) -> Option<usize> {
        self.memory_limit
    }

    /// The default timeout, if any.
    pub fn default_timeout(&self) -> Option<Duration> {
        self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bad_names_are_refused_with_a_reason() {
        let e = SessionState::new().variable("1x", json!(1)).unwrap_err().to_string();
        assert!(e.contains("not a valid identifier"), "{e}");
        let e = SessionState::new().variable("end", json!(1)).unwrap_err().to_string();
        assert!(e.contains("not a valid identifier"), "{e}");
        let e = SessionState::new().variable("string", json!(1)).unwrap_err().to_string();
        assert!(e.contains("hide the built-in"), "{e}");
    }

    #[test]
    fn module_syntax_errors_surface_at_add_time() {
        let e = SessionState::new().module("m", "return {").unwrap_err();
        assert!(matches!(e, Error::Syntax { ref name, line: Some(1), .. } if name == "m"), "{e:?}");
        let e = SessionState::new().module("m", "return 1").unwrap().module("m", "return 2").unwrap_err();
        assert!(e.to_string().contains("twice"));
    }
}
