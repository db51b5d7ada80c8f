//! The plumbing both services share: one place for authentication, health, reflection,
//! serving and shutdown, logging, the error table, idempotency keys and page tokens.

pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod health;
pub mod idempotency;
pub mod metrics;
pub mod pagination;
pub mod pg_feed;
pub mod request;
pub mod rpc_log;
pub mod server;
pub mod telemetry;
pub mod trace;
pub mod versioning;
