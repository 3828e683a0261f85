//! `rsp serve stop`: a graceful shutdown of the server of a state
//! directory, asked for over the API (with the token), then awaited.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use runspace_server::{Client, StatePaths};
use serde_json::json;

use crate::common::diag::diag;
use crate::common::{exit, CliError};

/// Stop the job server of a state directory gracefully (running jobs get its --grace period).
#[derive(clap::Args, Debug, Clone)]
pub struct StopArgs {
    /// The server's state directory [default: $XDG_DATA_HOME/rsp or ~/.local/share/rsp].
    #[arg(long, env = "RSP_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// How long to wait for it to end beyond its grace period (exit 1 past it).
    #[arg(long, default_value = "30s", value_parser = crate::common::parse::timeout, value_name = "DURATION")]
    pub timeout: Duration,
}

/// Runs `rsp serve stop`: exit 0 once the server has ended (or when none
/// runs), an error when it could not be asked or did not end.
pub fn run(args: &StopArgs) -> Result<u8, CliError> {
    let message = stop(args).map_err(CliError::failure)?;
    diag!("rsp serve: {message}");
    Ok(exit::OK)
}

fn stop(args: &StopArgs) -> Result<String, String> {
    let paths = StatePaths::new(args.state_dir.as_deref()).map_err(|e| format!("{e} (--state-dir)"))?;
    if !paths.server_running() {
        return Ok(format!("no job server is running for {}", paths.dir.display()));
    }
    let client = Client::connect(&paths).map_err(|e| e.message)?;
    let answer = client.post("/v1/shutdown", &json!({})).map_err(|e| e.message)?;
    let grace = answer["grace_s"].as_f64().filter(|g| g.is_finite() && *g >= 0.0).unwrap_or(0.0);
    let pid = answer["pid"].as_u64().unwrap_or(0);
    let limit = Duration::from_secs_f64(grace.min(86_400.0)) + args.timeout;
    let deadline = Instant::now() + limit;
    while paths.server_running() {
        if Instant::now() >= deadline {
            return Err(format!("the job server (pid {pid}) did not stop within {limit:?}; it may still be stopping"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(format!("stopped the job server (pid {pid}) of {}", paths.dir.display()))
}
