//! pueue's everyday verbs: `follow`, `restart`, `rerun-failed`, `clean`,
//! `wait --all` (its exit code) and `output` (streamed, JSON Lines when piped).

use crate::common::diag::diag;
use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::records::{item_stream_lines, job_stream_line, Closed, RecordWriter};
use super::{connect, malformed, show, Common, Format};
use runspace_server::Client;

use crate::common::{exit, CliError};

/// How long one follow request may wait on the server for news; between
/// requests the follower checks that its reader is still there.
const FOLLOW_WAIT: Duration = Duration::from_secs(2);
/// The most stream records asked for at once (pages are bounded in bytes too).
const STREAM_PAGE: u64 = 1000;

/// `rsp job follow`.
#[derive(clap::Args, Debug)]
pub struct FollowArgs {
    /// The job's name.
    pub name: String,
    /// Start after this many records (default: from the first).
    #[arg(long, default_value_t = 0)]
    pub offset: u64,
    /// Give up after this long (exit 3); default: follow until the job ends.
    #[arg(long, value_parser = crate::common::parse::timeout, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    #[command(flatten)]
    pub common: Common,
}

/// `rsp job restart` and `rsp job rerun-failed`.
#[derive(clap::Args, Debug)]
pub struct AgainArgs {
    /// The job to run again.
    pub name: String,
    /// The new job's name (default: the original's name with -2, -3…).
    #[arg(long = "as", value_name = "NEW_NAME")]
    pub new_name: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

/// `rsp job clean`.
#[derive(clap::Args, Debug)]
pub struct CleanArgs {
    /// Only jobs in these states (repeat or comma-separate; default: every finished state).
    #[arg(long, value_delimiter = ',', value_parser = |s: &str| s.parse::<runspace::JobState>())]
    pub state: Vec<runspace::JobState>,
    #[command(flatten)]
    pub common: Common,
}

/// Exit code of a finished job: 0 only for Completed.
fn exit_code(job: &Value) -> u8 {
    u8::from(job["state"] != json!("Completed"))
}

/// Whether nobody reads our stdout any more (a pipe whose reader exited),
/// asked without writing, so an idle follower notices too.
fn stdout_reader_gone() -> bool {
    let mut fd = libc::pollfd { fd: libc::STDOUT_FILENO, events: 0, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call, zero timeout.
    let ready = unsafe { libc::poll(&mut fd, 1, 0) };
    ready == 1 && fd.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// Prints records until the job ends; its exit code is the job's.
pub fn follow(a: FollowArgs) -> Result<u8, CliError> {
    let client = connect(&a.common)?;
    let format = a.common.records_format();
    let stdout = std::io::stdout();
    let mut out = RecordWriter::new(format, stdout.lock());
    let deadline = a.timeout.map(|t| Instant::now() + t);
    let mut offset = a.offset;
    let result = 'follow: loop {
        if stdout_reader_gone() {
            return Ok(0);
        }
        let left = deadline.map_or(FOLLOW_WAIT, |d| d.saturating_duration_since(Instant::now()).min(FOLLOW_WAIT));
        let path = format!("/v1/jobs/{}/follow?offset={offset}&timeout={}ms", a.name, left.as_millis());
        let page = client.get_timeout(&path, left)?;
        for record in page["records"].as_array().into_iter().flatten() {
            if let Err(e) = out.record(record) {
                break 'follow Err(e);
            }
            if format == Format::Table {
                item_stream_lines(record).iter().for_each(|l| diag!("{l}"));
            }
        }
        if let Err(e) = out.flush() {
            break Err(e);
        }
        offset = page["next_offset"].as_u64().unwrap_or(offset);
        if page["finished"] == json!(true) {
            let job = &page["job"];
            print_job_streams(&client, &a.name, job)?;
            diag!("rsp job: '{}' {} ({})", a.name, job["state"].as_str().unwrap_or("?"), progress(job));
            if let Some(error) = job["error"].as_str() {
                diag!("rsp job: {error}");
            }
            break out.finish().map(|()| exit_code(job));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            diag!("rsp job: stopped following '{}' after {:?}; it has not finished", a.name, a.timeout.unwrap());
            break out.finish().map(|()| exit::TIMED_OUT);
        }
    };
    finish(result)
}

/// Every record of a finished job's streams, on stderr, read page by page
/// from the streams endpoint: the job's description carries only the last
/// few of each.
fn print_job_streams(client: &Client, name: &str, job: &Value) -> Result<(), CliError> {
    for (stream, count) in job["stream_counts"].as_object().into_iter().flatten() {
        let total = count.as_u64().unwrap_or(0);
        let mut offset = 0;
        while offset < total {
            let page = client.get(&format!("/v1/jobs/{name}/streams/{stream}?offset={offset}&limit={STREAM_PAGE}"))?;
            let Some(records) = page["records"].as_array().filter(|r| !r.is_empty()) else {
                return Err(CliError::failure(format!(
                    "the job server's answer has no records of the {stream} stream from {offset} of {total}"
                )));
            };
            records.iter().for_each(|r| diag!("{}", job_stream_line(stream, r)));
            offset += records.len() as u64;
        }
    }
    Ok(())
}

fn finish(result: Result<u8, Closed>) -> Result<u8, CliError> {
    match result {
        Ok(code) => Ok(code),
        Err(Closed::Reader) => Ok(0),
        Err(Closed::Error(e)) => Err(CliError::failure(e)),
    }
}

fn progress(job: &Value) -> String {
    format!("{}/{} items", job["progress"]["done"], job["progress"]["total"])
}

/// Prints a job's records, page by page, as they are fetched.
pub fn output(client: &Client, name: &str, offset: u64, limit: Option<u64>, format: Format) -> Result<u8, CliError> {
    let stdout = std::io::stdout();
    let mut out = RecordWriter::new(format, stdout.lock());
    let mut offset = offset;
    let mut left = limit.unwrap_or(u64::MAX);
    let result = loop {
        if left == 0 {
            break out.finish().map(|()| 0);
        }
        let want = left.min(1000);
        let page = client.get(&format!("/v1/jobs/{name}/output?offset={offset}&limit={want}"))?;
        let total = page["total"].as_u64().ok_or_else(|| malformed("total"))?;
        let records = page["records"].as_array().ok_or_else(|| malformed("records"))?;
        if let Some(e) = records.iter().find_map(|r| out.record(r).err()) {
            break Err(e);
        }
        // Pages are bounded in bytes too: fewer records than asked is not the end.
        let got = records.len() as u64;
        offset += got;
        left -= got.min(left);
        if got == 0 || offset >= total {
            break out.finish().map(|()| 0);
        }
    };
    finish(result)
}

/// `restart` (every item again) or `rerun-failed` (those that did not complete).
pub fn again(a: AgainArgs, verb: &str) -> Result<u8, CliError> {
    let client = connect(&a.common)?;
    let body = match &a.new_name {
        Some(name) => {
            runspace::check_job_name(name).map_err(|e| CliError::usage(format!("--as: {e}")))?;
            json!({"name": name})
        }
        None => json!({}),
    };
    let created = client.post(&format!("/v1/jobs/{}/{verb}", a.name), &body)?;
    match (a.common.format(), created["name"].as_str()) {
        (Format::Json, _) => show::json(&created),
        (Format::Jsonl, _) => show::json_line(&created),
        (Format::Table, Some(name)) => {
            println!("{name}");
            diag!("rsp job: started '{name}' from '{}' ({})", a.name, progress(&created).replace(" items", ""));
        }
        (Format::Table, None) => diag!("rsp job: nothing to rerun: every item of '{}' completed", a.name),
    }
    Ok(0)
}

/// Removes finished jobs.
pub fn clean(a: CleanArgs) -> Result<u8, CliError> {
    let client = connect(&a.common)?;
    let states: Vec<String> = a.state.iter().map(ToString::to_string).collect();
    let path = if states.is_empty() { "/v1/jobs".to_string() } else { format!("/v1/jobs?state={}", states.join(",")) };
    let removed = client.delete(&path)?;
    match a.common.format() {
        Format::Json => show::json(&removed),
        Format::Jsonl => show::json_line(&removed),
        Format::Table => diag!(
            "rsp job: removed {}",
            crate::common::human::count_of(removed["removed"].as_u64().unwrap_or(0), "finished job", "finished jobs")
        ),
    }
    Ok(0)
}

/// After `wait --all`: every job, printed; 0 when all Completed, else 1.
pub fn all_jobs(client: &Client, format: Format) -> Result<u8, CliError> {
    let mut jobs = Vec::new();
    loop {
        let page = client.get(&format!("/v1/jobs?offset={}&limit=10000", jobs.len()))?;
        let got = page["jobs"].as_array().cloned().unwrap_or_default();
        let total = page["total"].as_u64().unwrap_or(0);
        let empty = got.is_empty();
        jobs.extend(got);
        if empty || jobs.len() as u64 >= total {
            break;
        }
    }
    let code = u8::from(jobs.iter().any(|j| exit_code(j) != 0));
    match format {
        Format::Json => show::json(&Value::Array(jobs)),
        Format::Jsonl => jobs.iter().for_each(show::json_line),
        Format::Table => show::job_table(&jobs, None),
    }
    let _ = std::io::stdout().flush();
    Ok(code)
}
