//! The runspace job service: background jobs (`runspace::JobManager`)
//! kept in a store, served over an HTTP JSON API behind a token, and the
//! client that talks to it.
//!
//! - [`store`]: the [`store::JobStore`] trait and its embedded SQLite backend;
//! - [`server`]: a server's lifecycle ([`server::serve`], [`server::spawn_detached`]);
//! - [`state`]: the state directory a server and its clients share;
//! - [`client`]: a blocking HTTP client for the API.
//!
//! The API is described in docs/jobs.md and docs/jobs-openapi.yaml.

mod api;
pub mod client;
mod private;
pub mod server;
pub mod state;
pub mod store;

pub use api::MAX_BODY;
pub use client::{Client, ClientError};
pub use server::{serve, spawn_detached, ServerConfig};
pub use state::StatePaths;
