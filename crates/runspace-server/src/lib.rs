//! The runspace job service: background jobs (`runspace::JobManager`)
//! kept in a store, served over an HTTP JSON API behind a token, and the
//! client that talks to it.
//!
//! - [`store`]: the [`store::JobStore`] trait and its embedded SQLite backend;
//! - [`server`]: a server's lifecycle ([`server::serve`], [`server::spawn_detached`]);
//! - [`state`]: the state directory a server and its clients share;
//! - [`client`]: a blocking HTTP client for the API;
//! - [`limits`]: the one check of a job's limits, shared by the API and the command line;
//! - [`worker`]: the loop of `rsp worker`, which leases cluster work from a PostgreSQL store;
//! - the web dashboard, served at `/` beside the API (docs/dashboard.md).
//!
//! The API is described in docs/jobs.md and docs/jobs-openapi.yaml.

mod api;
pub mod client;
mod dashboard;
mod guessing;
mod http;
pub mod limits;
mod private;
pub mod server;
pub mod state;
pub mod store;
pub mod worker;

pub use client::{Client, ClientError};
pub use server::{serve, spawn_detached, ServerConfig};
pub use state::StatePaths;
