//! `rsp`: run scripts in parallel over many inputs, scan ports, and run
//! background jobs — PowerShell's runspaces for the command line.
//!
//! The program only parses, calls the libraries and formats; everything
//! else lives in the `runspace`, `runspace-scan` and `runspace-server` crates.

mod common;
mod job;
mod reference;
mod run;
mod scan;
mod serve;
mod worker;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// Run Luau scripts in parallel over many inputs, scan TCP ports, and run background jobs.
#[derive(Parser, Debug)]
#[command(
    name = "rsp",
    version,
    about,
    long_about = "Run Luau scripts in parallel over many inputs (like ForEach-Object -Parallel, GNU parallel \
                  or xargs -P), scan TCP ports (like nmap -sT), and run background jobs. Scripts run in \
                  sandboxed runspaces: they reach files, processes or the network only when you --allow it.",
    after_help = "Examples:\n  rsp run -e 'return _ * _' --range 1..100 --throttle 10\n  \
                  seq 1 5 | rsp run -e 'return tonumber(_) + 1' --format values\n  \
                  rsp scan 127.0.0.1 -p-\n\nExit codes: 0 all items succeeded, 1 some did not, 2 usage or script error, 130 interrupted."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Colour output and messages: auto (on a terminal, unless NO_COLOR is set), always or never.
    #[arg(long = "color", visible_alias = "colour", global = true, value_enum, value_name = "WHEN",
          default_value_t = common::colour::ColorChoice::Auto)]
    color: common::colour::ColorChoice,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a script once per input, in parallel, and print a record per input.
    Run(Box<run::RunArgs>),
    /// Scan TCP ports of one or many hosts (a connect scan with nmap's port states).
    Scan(Box<scan::ScanArgs>),
    /// Start, list, inspect, wait for, stop and remove background jobs (a client of `rsp serve`).
    #[command(subcommand)]
    Job(job::JobCommand),
    /// Run the job server: jobs in SQLite, an HTTP JSON API on loopback behind a token.
    Serve(Box<serve::ServeArgs>),
    /// Run work from a PostgreSQL store on this host; `rsp worker list` lists the workers.
    Worker(Box<worker::WorkerArgs>),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(reference::CompletionsArgs),
    /// Print a man page: rsp's, or a command's (rsp man run, rsp man job start).
    Man(reference::ManArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    common::colour::init(cli.color);
    let result = match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Scan(args) => scan::run(*args),
        Command::Job(cmd) => job::run(cmd),
        Command::Serve(args) => serve::run(*args),
        Command::Completions(args) => reference::completions(&args, Cli::command()),
        Command::Man(args) => reference::man(&args, Cli::command()),
        Command::Worker(args) => Ok(worker::run(*args).clamp(0, 255) as u8),
    };
    ExitCode::from(match result {
        Ok(code) => code,
        Err(e) => {
            common::diag::diag!("rsp: error: {}", e.message);
            if let Some(hint) = e.hint {
                common::diag::diag!("rsp: {hint}");
            }
            e.code
        }
    })
}
