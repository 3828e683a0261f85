//! The one error type of the command line, and the exit codes it ends with.

/// An error that ends the program with a message and an exit code.
#[derive(Debug)]
pub struct CliError {
    /// What went wrong, for stderr.
    pub message: String,
    /// The exit code.
    pub code: u8,
}

impl CliError {
    /// A usage error: bad options, unreadable files (exit 2).
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError { message: message.into(), code: 2 }
    }

    /// A script or module that cannot run at all (exit 2).
    pub fn script(error: runspace::Error) -> CliError {
        CliError { message: error.to_string(), code: 2 }
    }
}
