//! `rsp completions SHELL` and `rsp man [COMMAND…]`: shell completions
//! (clap_complete) and man pages (clap_mangen) generated from the command
//! line's own definition, at run time.
//!
//! At run time rather than in a build script: a user who has only the
//! binary (`cargo install`, a copied release) can still get both, they can
//! never disagree with the binary they came from, and the build needs no
//! generated files or an OUT_DIR convention for packagers to find.

use std::io::{self, Write};

use clap_complete::Shell;

use crate::common::{exit, CliError};

/// `rsp completions`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  rsp completions bash > ~/.local/share/bash-completion/completions/rsp
  rsp completions zsh > ~/.zfunc/_rsp
  rsp completions fish > ~/.config/fish/completions/rsp.fish")]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// `rsp man`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  rsp man | man -l -
  rsp man run > rsp-run.1
  rsp man job start | man -l -")]
pub struct ManArgs {
    /// The command whose page to print (e.g. run, or job start); none for rsp itself.
    #[arg(value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Writes the completion script for `args.shell` to stdout.
pub fn completions(args: &CompletionsArgs, mut command: clap::Command) -> Result<u8, CliError> {
    // Into memory first: clap_complete panics when its writer fails (`| head`).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "rsp", &mut script);
    write_out(&script)
}

/// Writes the man page of `args.command` (roff) to stdout.
pub fn man(args: &ManArgs, command: clap::Command) -> Result<u8, CliError> {
    let mut page = command;
    let mut name = "rsp".to_string();
    for word in &args.command {
        let sub = page.find_subcommand(word).cloned().ok_or_else(|| {
            let known: Vec<&str> = page.get_subcommands().map(|c| c.get_name()).collect();
            CliError::usage(format!("no command '{word}' in '{name}' (known: {})", known.join(", ")))
        })?;
        name = format!("{name}-{word}");
        page = sub;
    }
    let page = page.display_name(name.clone()).bin_name(name.replace('-', " "));
    let mut roff = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut roff)
        .map_err(|e| CliError::failure(format!("cannot render the man page: {e}")))?;
    write_out(&roff)
}

fn write_out(bytes: &[u8]) -> Result<u8, CliError> {
    let mut out = io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(exit::OK),
        // `rsp man | head` is the reader having had enough.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(exit::OK),
        Err(e) => Err(CliError::failure(format!("cannot write: {e}"))),
    }
}
