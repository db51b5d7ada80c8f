//! The plumbing both services share: one place for authentication, health, reflection,
//! serving and its limits, shutdown, logging, the error table, idempotency keys, page tokens and
//! page budgets.

pub mod auth;
pub mod calls;
pub mod concurrency;
pub mod config;
pub mod connections;
pub mod db;
pub mod deadline;
pub mod dialect;
pub mod error;
pub mod generations;
pub mod health;
pub mod http_json;
pub mod idempotency;
pub mod import;
pub mod jwks;
pub mod malformed_request;
pub mod memory;
pub mod metrics;
pub mod otlp;
pub mod page_budget;
pub mod pagination;
pub mod pg_feed;
pub mod plumbing;
pub mod request;
pub mod retention;
pub mod rpc_log;
pub mod server;
pub mod service_identity;
pub mod struct_json;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod versioning;
pub mod warm_pool;
