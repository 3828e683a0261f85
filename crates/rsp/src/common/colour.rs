//! One colour decision for every subcommand: `--color auto|always|never`,
//! and `NO_COLOR` (<https://no-color.org>) for `auto`.
//!
//! `main` decides once ([`init`]); the rest asks [`stdout`] and [`stderr`].
//! The decision is also handed to `console`, so its styles (and the
//! progress bars drawn with them) follow it.

use std::io::{self, IsTerminal};
use std::sync::OnceLock;

/// When to colour output.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ColorChoice {
    /// On a terminal, unless NO_COLOR is set (non-empty) or TERM is dumb.
    #[default]
    Auto,
    /// Always, even into a pipe or a file.
    Always,
    /// Never.
    Never,
}

/// Whether each stream gets colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decision {
    stdout: bool,
    stderr: bool,
}

static DECISION: OnceLock<Decision> = OnceLock::new();

impl ColorChoice {
    /// Whether a stream that is (or is not) a terminal gets colour.
    fn colours(self, terminal: bool) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
                let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
                terminal && !no_color && !dumb
            }
        }
    }
}

/// Decides colour for stdout and stderr once, for the whole program.
pub fn init(choice: ColorChoice) {
    let decision = Decision {
        stdout: choice.colours(io::stdout().is_terminal()),
        stderr: choice.colours(io::stderr().is_terminal()),
    };
    console::set_colors_enabled(decision.stdout);
    console::set_colors_enabled_stderr(decision.stderr);
    let _ = DECISION.set(decision);
}

fn decision() -> Decision {
    *DECISION.get_or_init(|| Decision {
        stdout: ColorChoice::Auto.colours(io::stdout().is_terminal()),
        stderr: ColorChoice::Auto.colours(io::stderr().is_terminal()),
    })
}

/// Whether output on stdout is coloured.
pub fn stdout() -> bool {
    decision().stdout
}

/// Whether messages on stderr are coloured.
pub fn stderr() -> bool {
    decision().stderr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn always_and_never_ignore_the_terminal() {
        assert!(ColorChoice::Always.colours(false));
        assert!(!ColorChoice::Never.colours(true));
        assert!(!ColorChoice::Auto.colours(false));
    }
}
