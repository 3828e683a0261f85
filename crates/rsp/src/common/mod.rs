//! What every subcommand shares: the error type and exit codes, the colour
//! decision, messages on stderr, parsers for option values (durations,
//! sizes, ranges), numbers and durations for people, and the progress
//! display.

pub mod colour;
pub mod diag;
pub mod error;
pub mod human;
pub mod parse;
pub mod progress;

pub use error::{exit, CliError};
