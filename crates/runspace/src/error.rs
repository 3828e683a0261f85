//! The engine's error type.

use std::fmt;

/// What went wrong while setting up or driving runspaces.
///
/// Errors raised *by a script* are not `Error`s: they end that invocation
/// with [`Status::Failed`](crate::Status::Failed) and are reported in its
/// result, so one bad item never stops the others.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A script or module did not compile. `line` is 1-based when known.
    Syntax {
        /// The chunk name: a file name, or `"script"` for inline code.
        name: String,
        /// The line of the first error, when the compiler gave one.
        line: Option<u32>,
        /// The compiler's message.
        message: String,
    },
    /// A module could not be loaded into a runspace (it raised an error).
    Module {
        /// The module's name (the global it binds).
        name: String,
        /// What the module raised.
        message: String,
    },
    /// A session variable or parameter has an invalid name or value.
    Session(String),
    /// The Luau VM could not be created or configured.
    Vm(String),
    /// The pool is closed, or a worker thread could not be started.
    Pool(String),
    /// A wait ran out of time before the awaited work finished.
    Timeout(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Syntax { name, line: Some(line), message } => {
                write!(f, "syntax error in {name} at line {line}: {message}")
            }
            Error::Syntax { name, line: None, message } => write!(f, "syntax error in {name}: {message}"),
            Error::Module { name, message } => write!(f, "module '{name}' failed to load: {message}"),
            Error::Session(m) => write!(f, "invalid session state: {m}"),
            Error::Vm(m) => write!(f, "runspace could not be opened: {m}"),
            Error::Pool(m) => write!(f, "runspace pool: {m}"),
            Error::Timeout(m) => write!(f, "timed out: {m}"),
        }
    }
}

impl std::error::Error for Error {}

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
