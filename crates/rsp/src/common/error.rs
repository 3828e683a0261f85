//! The one error type of the command line, and the exit codes it ends with.
//!
//! Every subcommand returns `Result<u8, CliError>`: `Ok(code)` when it ran
//! (the code says how it went, see [`exit`]), `Err` when it could not; `main`
//! prints the error the same way for all of them.

use runspace_server::ClientError;

/// The exit codes every subcommand uses.
pub mod exit {
    /// Everything succeeded.
    pub const OK: u8 = 0;
    /// It ran, but some items (jobs, hosts) did not succeed.
    pub const SOME_FAILED: u8 = 1;
    /// Bad options or input, or a script that cannot run: nothing (or not everything) was tried.
    pub const USAGE: u8 = 2;
    /// A wait ran out of time (`rsp job wait`).
    pub const TIMED_OUT: u8 = 3;
    /// Interrupted by Ctrl-C (128 + SIGINT, as shells report it).
    pub const INTERRUPTED: u8 = 130;
}

/// An error that ends the program with a message and an exit code.
#[derive(Debug)]
pub struct CliError {
    /// What went wrong, for stderr.
    pub message: String,
    /// The exit code.
    pub code: u8,
    /// What the user may do about it, printed on a line of its own.
    pub hint: Option<String>,
}

impl CliError {
    /// A usage error: bad options, unreadable files (exit 2).
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError { message: message.into(), code: exit::USAGE, hint: None }
    }

    /// Something failed while doing the work: a write, a server, the system (exit 1).
    pub fn failure(message: impl Into<String>) -> CliError {
        CliError { message: message.into(), code: exit::SOME_FAILED, hint: None }
    }

    /// A script or module that cannot run at all (exit 2).
    pub fn script(error: runspace::Error) -> CliError {
        CliError::usage(error.to_string())
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> CliError {
        let code = if e.code == 2 { exit::USAGE } else { exit::SOME_FAILED };
        let hint = e
            .server_down
            .then(|| "start one with 'rsp serve --detach' (or 'rsp job start', which starts one)".to_string());
        CliError { message: e.message, code, hint }
    }
}
