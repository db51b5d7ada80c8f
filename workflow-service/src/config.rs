//! workflow-service's settings: its own address and database, plus the shared ones.

use std::time::Duration;

use engarde::kit::config::CommonConfig;
use engarde::kit::import::{ImportArgs, ImportConfig};

/// workflow-service: EnGarde's workflow definitions over gRPC.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "workflow-service", version, about)]
pub struct Config {
    /// Address to serve gRPC on (`host:port`; port 0 picks a free one).
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    pub listen_addr: String,
    /// `postgres://user@host/db` in production; an SQLite file for the embedded default.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://data/workflow.db", hide_env_values = true)]
    pub database_url: String,
    /// Workflows kept in memory for reads (PostgreSQL only, where commits are announced to every
    /// replica); 0 turns the cache off.
    #[arg(long, env = "WORKFLOW_CACHE_CAPACITY", default_value_t = 4096)]
    pub workflow_cache_capacity: u64,
    /// How often the cache checks that it still hears of changes, in milliseconds; after three
    /// silent heartbeats it turns itself off and listens anew.
    #[arg(long, env = "WORKFLOW_CACHE_HEARTBEAT_MS", default_value_t = 5000)]
    pub workflow_cache_heartbeat_ms: u64,
    /// How many violations a ValidateWorkflowConfig report lists at most; it counts the rest in
    /// `omitted_violations`, so that a small request with thousands of bad steps cannot ask for
    /// an answer of megabytes.
    #[arg(long, env = "MAX_REPORTED_VIOLATIONS", default_value_t = 100)]
    pub max_reported_violations: usize,
    #[command(flatten)]
    pub common: CommonConfig,
    #[command(flatten)]
    pub import: ImportConfig,
    /// Without a command, the service serves.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What the binary does instead of serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Imports the platform's `workflow_definitions` table, every tenant's rows, into this
    /// service's database (DATABASE_URL), prints one JSON line per row and a summary, and exits:
    /// 0 when every row came in, 2 when some failed (see their reasons), 1 on an error.
    Import(ImportArgs),
}

impl Config {
    pub fn workflow_cache_heartbeat(&self) -> Duration {
        Duration::from_millis(self.workflow_cache_heartbeat_ms.max(10))
    }
}
