//! `hotsplice-server`: the fleet server. Machines register with an access
//! key, check in with a report (`hotsplice_fleet::report::Report`) and
//! receive a signed list of the patches meant for them
//! (`hotsplice_fleet::feed`); publishers upload signed patch files into
//! channels; operators steer machines through Uptrack's API (`/api/1/`)
//! or hotsplice's own (`/api/v2/`, OpenAPI document at
//! `/api/v2/openapi.json`).
//!
//! - [`db`]: the store, SQLite or PostgreSQL through one query layer;
//! - [`fleet`]: what the server does (no HTTP);
//! - [`http`]: the routes, credentials and errors;
//! - [`server`]: data directory, `init` and `run`.
//!
//! See `docs/server.md` and `docs/api.md`.

pub mod audit;
pub mod checkin_store;
pub mod checkin_writer;
pub mod dashboard;
pub mod db;
pub mod error;
pub mod fleet;
pub mod http;
pub mod metrics;
pub mod mirror;
pub mod ops;
pub mod rollout;
pub mod server;
pub mod types;
pub mod users;
pub mod vex;
