//! Where agents live: one repository interface, implemented for PostgreSQL (production) and
//! SQLite (the embedded default) from one body of portable SQL.

pub mod agent_cache;
mod agent_change_feed;
mod agents;
pub mod default_models;
pub mod deployment;
mod execution_rows;
mod execution_store;
pub mod executions;
pub mod feedback;
mod one_statement_finish;
pub mod outbox;
pub mod retention;
pub mod reviews;
mod row;
mod run_store;
pub mod runs;
pub mod schedules;
pub mod sessions;

use std::sync::Arc;

use engarde::kit::db::DbPool;
use engarde::kit::dialect::{self, Decodes, Dialect, SqlDb, SqlUuid};
use engarde::kit::error::{ServiceError, ServiceResult};

use default_models::DefaultModelRow;
use execution_rows::ExecutionRow;
use executions::{ExecutionRowWithFingerprint, RunningRow};
use feedback::FeedbackRow;
use one_statement_finish::OneStatementFinish;
use outbox::ReportRow;
use reviews::ReviewRow;
use row::AgentRow;
use run_store::{EventRow, PageStepRow, RunRow, StepRow};
use schedules::ScheduledRow;
use sessions::{MessageRow, SessionRow};

pub use agents::{AgentRepository, Answer, DeleteCheck, ImportApplied, Mutated, Mutation, mutate_agent};
use agents::{PostgresAgentRepository, SqliteAgentRepository};
pub use default_models::DefaultModelRepository;
use execution_store::{PostgresExecutionRepository, SqliteExecutionRepository};
pub use executions::ExecutionRepository;

/// A dialect agent-service's storage runs on: its database decodes every row type storage
/// reads. Stated once here, so that the repositories written over any dialect need no bounds
/// of their own; the compiler checks every row type against both databases.
trait AgentDialect: Dialect<Db: AgentRows> {}

impl AgentDialect for dialect::Postgres {}
impl AgentDialect for dialect::Sqlite {}

/// The row types agent-service's storage reads, and the one-statement finish where there is one.
trait AgentRows:
    SqlDb
    + OneStatementFinish
    + Decodes<AgentRow>
    + Decodes<DefaultModelRow>
    + Decodes<ExecutionRow>
    + Decodes<ExecutionRowWithFingerprint>
    + Decodes<RunningRow>
    + Decodes<SessionRow>
    + Decodes<MessageRow>
    + Decodes<FeedbackRow>
    + Decodes<ReportRow>
    + Decodes<RunRow>
    + Decodes<StepRow>
    + Decodes<PageStepRow>
    + Decodes<EventRow>
    + Decodes<ReviewRow>
    + Decodes<(i64,)>
    + Decodes<(String,)>
    + Decodes<(i64, i64, f64)>
    + Decodes<(SqlUuid,)>
    + Decodes<(SqlUuid, String)>
    + Decodes<(SqlUuid, Option<String>)>
    + Decodes<(String, i64)>
    + Decodes<(String, Option<String>)>
    + Decodes<ScheduledRow>
{
}

impl AgentRows for sqlx::Postgres {}
impl AgentRows for sqlx::Sqlite {}

/// A stored answer, read back.
pub fn replayed<T: serde::de::DeserializeOwned>(json: &str) -> ServiceResult<T> {
    serde_json::from_str(json).map_err(ServiceError::internal)
}

/// Strings as one JSON array, to bind as a single parameter where a statement takes a list
/// (read back with `jsonb_array_elements_text` / `json_each`): one prepared statement for any
/// number of them.
fn json_strings(items: impl IntoIterator<Item = impl ToString>) -> String {
    serde_json::Value::from(items.into_iter().map(|item| item.to_string()).collect::<Vec<_>>()).to_string()
}

/// The repository for a pool.
pub fn repository(pool: &DbPool) -> Arc<dyn AgentRepository> {
    match pool {
        DbPool::Postgres(p) => Arc::new(PostgresAgentRepository::new(p.clone())),
        DbPool::Sqlite(p) => Arc::new(SqliteAgentRepository::new(p.clone())),
    }
}

/// The repository for a pool, with a cache of up to about `capacity` agents in front of the
/// reads of executions where changes are announced (PostgreSQL; 0: no cache).
pub fn cached_repository(pool: &DbPool, capacity: u64) -> Arc<dyn AgentRepository> {
    let repo = repository(pool);
    match pool {
        DbPool::Postgres(p) if capacity > 0 => {
            let cache = Arc::new(agent_cache::AgentCache::new(capacity));
            agent_change_feed::spawn(p.sqlx().clone(), cache.clone());
            Arc::new(agent_cache::CachedAgentRepository::new(repo, cache))
        }
        _ => repo,
    }
}

/// The repository of tenants' default models for a pool.
pub fn default_model_repository(pool: &DbPool) -> Arc<dyn DefaultModelRepository> {
    match pool {
        DbPool::Postgres(p) => Arc::new(default_models::SqlDefaultModelRepository::<dialect::Postgres>::new(p.clone())),
        DbPool::Sqlite(p) => Arc::new(default_models::SqlDefaultModelRepository::<dialect::Sqlite>::new(p.clone())),
    }
}

/// The execution repository for a pool.
pub fn execution_repository(pool: &DbPool) -> Arc<dyn ExecutionRepository> {
    match pool {
        DbPool::Postgres(p) => Arc::new(PostgresExecutionRepository::new(p.clone())),
        DbPool::Sqlite(p) => Arc::new(SqliteExecutionRepository::new(p.clone())),
    }
}

/// The walker's run repository for a pool. Its committed events are announced to `events`: on
/// PostgreSQL by the database itself (a trigger's NOTIFY, heard by the walker's event feed), on
/// SQLite by the repository.
pub fn run_repository<A: runs::RunAnnouncer + 'static>(pool: &DbPool, events: &Arc<A>) -> Arc<dyn runs::RunRepository> {
    match pool {
        DbPool::Postgres(p) => Arc::new(run_store::PostgresRunRepository::new(p.clone(), None)),
        DbPool::Sqlite(p) => Arc::new(run_store::SqliteRunRepository::new(p.clone(), Some(events.clone()))),
    }
}

/// The migrations of each database.
pub static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
pub static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
