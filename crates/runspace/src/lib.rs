//! PowerShell's runspace model in Rust: sandboxed Luau script environments
//! ([`Runspace`]), pools that run scripts in parallel under a throttle limit
//! ([`RunspacePool`]), invocations with PowerShell's six streams
//! ([`Invocation`]), and parallel runs over many inputs ([`Parallel`]).
//!
//! ```
//! use runspace::{RunspacePool, Script, SessionState, Status};
//! use serde_json::json;
//!
//! let session = SessionState::new().variable("factor", json!(3)).unwrap();
//! let pool = RunspacePool::builder().max(4).session(session).open().unwrap();
//! let script = Script::new("return _ * factor").unwrap();
//! let mut results: Vec<_> = pool.parallel(&script).run((1..=3).map(|n| json!(n))).collect();
//! results.sort_by_key(|r| r.index);
//! assert!(results.iter().all(|r| r.status == Status::Completed));
//! assert_eq!(results[2].result, json!(9));
//! ```
//!
//! The library never prints; the `rsp` program formats what it returns.
//!
//! # Building for speed
//!
//! Luau's C++ keeps all its internal assertions unless `NDEBUG` is
//! defined, and the vendored build never defines it. This workspace sets
//! `LUAU_CXXFLAGS=-DNDEBUG` in its `.cargo/config.toml`. A project that
//! embeds this crate should do the same, for example in its own
//! `.cargo/config.toml`: CPU-bound scripts then run about 1.2× faster.
//! Debug builds keep the assertions either way.

mod capability;
mod control;
mod convert;
mod error;
mod host;
pub mod inputs;
mod invocation;
mod invocation_result;
mod item_thread;
pub mod joblog;
mod jobs;
pub mod json;
mod live;
mod parallel;
mod pool;
mod remedy;
mod runspace;
mod script;
mod session;
mod stdlib;
mod streams;
mod timer;
pub mod units;

pub use capability::{Capability, Grants};
pub use error::{Error, Result};
pub use host::resolve_on_disk;
pub use invocation::{Invocation, InvocationHandle};
pub use invocation_result::InvocationResult;
pub use jobs::{
    auto_job_name, check_job_name, JobError, JobEvent, JobInfo, JobManager, JobManagerBuilder, JobSpec, JobState,
    Progress,
};
pub use live::{LineEnd, LineStream, LiveLine, LiveOutput, MAX_LIVE_LINE};
pub use parallel::{
    Halt, HaltRule, HaltWhen, Input, ItemResult, Next, Parallel, Results, Retry, RunControl, RunProgress,
};
pub use pool::{PoolBuilder, RunspacePool, ABANDON_GRACE};
pub use remedy::{Remedies, Remedy};
pub use runspace::{Runspace, Stopper, MODULE_TIMEOUT};
pub use script::Script;
pub use session::{SessionState, DEFAULT_MAX_OUTPUT};
pub use streams::{ProgressRecord, Status, Streams};
