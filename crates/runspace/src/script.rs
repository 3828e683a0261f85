//! Scripts compiled once, checked before anything runs.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};

/// A Luau script, compiled to bytecode once and shared by every runspace
/// that runs it.
///
/// Compiling up front means a syntax error is reported, with its line,
/// before any item runs; each runspace then only loads the bytecode.
///
/// ```
/// use runspace::Script;
/// let script = Script::new("return _ * _").unwrap();
/// assert_eq!(script.name(), "script");
/// let err = Script::new("return )").unwrap_err();
/// assert!(err.to_string().contains("line 1"));
/// ```
#[derive(Clone, Debug)]
pub struct Script(Arc<Compiled>);

#[derive(Debug)]
struct Compiled {
    id: u64,
    name: String,
    bytecode: Vec<u8>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Script {
    /// Compiles inline code; errors name it `script`.
    pub fn new(source: &str) -> Result<Script> {
        Script::named("script", source)
    }

    /// Compiles `source`, naming it `name` in errors and stack traces.
    ///
    /// The source is bytes, as Lua's is: a string literal may hold any byte,
    /// so a file need not be UTF-8.
    ///
    /// ```
    /// use runspace::Script;
    /// assert!(Script::named("bytes.luau", b"return '\xff\xfe'").is_ok());
    /// ```
    pub fn named(name: &str, source: impl AsRef<[u8]>) -> Result<Script> {
        let bytecode = compile(name, source.as_ref())?;
        Ok(Script(Arc::new(Compiled { id: NEXT_ID.fetch_add(1, Ordering::Relaxed), name: name.to_string(), bytecode })))
    }

    /// Reads and compiles a script file; errors name the file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Script> {
        let path = path.as_ref();
        let source = std::fs::read(path).map_err(|e| Error::Syntax {
            name: path.display().to_string(),
            line: None,
            message: format!("cannot read file: {e}"),
        })?;
        let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
        Script::named(&name, &source)
    }

    /// The name used in errors: the file name, or `script` for inline code.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub(crate) fn id(&self) -> u64 {
        self.0.id
    }

    pub(crate) fn bytecode(&self) -> &[u8] {
        &self.0.bytecode
    }
}

/// Compiles with full optimisation (the sandbox makes builtins safe to
/// inline) and line information for error messages.
pub(crate) fn compile(name: &str, source: &[u8]) -> Result<Vec<u8>> {
    let compiler = mlua::chunk::Compiler::new().set_optimization_level(2).set_debug_level(1);
    compiler.compile(source).map_err(|e| {
        let message = match e {
            mlua::Error::SyntaxError { message, .. } => message,
            other => other.to_string(),
        };
        let (line, message) = split_line(&message);
        Error::Syntax { name: name.to_string(), line, message }
    })
}

/// Luau reports `:LINE: message` (sometimes after a chunk name); pull the
/// line out so callers can show it on its own.
fn split_line(message: &str) -> (Option<u32>, String) {
    let trimmed = message.trim();
    // Either `LINE: message` or `chunk:LINE: message`.
    let starts = std::iter::once(0).chain(trimmed.match_indices(':').map(|(i, _)| i + 1));
    for start in starts {
        let rest = &trimmed[start..];
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if !digits.is_empty() && rest[digits.len()..].starts_with(':') {
            let text = rest[digits.len() + 1..].trim().to_string();
            return (digits.parse().ok(), text);
        }
    }
    (None, trimmed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_error_names_the_line() {
        let err = Script::named("job.luau", "local x = 1\nlocal y = \nreturn x +").unwrap_err();
        match &err {
            Error::Syntax { name, line, .. } => {
                assert_eq!(name, "job.luau");
                assert_eq!(*line, Some(3));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().starts_with("syntax error in job.luau at line 3"), "{err}");
    }

    #[test]
    fn scripts_get_distinct_ids() {
        let a = Script::new("return 1").unwrap();
        let b = Script::new("return 1").unwrap();
        assert_ne!(a.id(), b.id());
        assert_eq!(a.clone().id(), a.id());
    }

    #[test]
    fn files_that_are_not_utf8_compile() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bytes.luau");
        std::fs::write(&path, b"return '\xff\x80' -- \xc3\n").unwrap();
        let script = Script::from_file(&path).unwrap();
        assert_eq!(script.name(), "bytes.luau");
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let err = Script::from_file("/nonexistent/x.luau").unwrap_err().to_string();
        assert!(err.contains("/nonexistent/x.luau") && err.contains("cannot read"), "{err}");
    }
}
