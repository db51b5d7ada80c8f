//! Where agents live: one repository interface, implemented for PostgreSQL (production) and
//! SQLite (the embedded default) from one body of portable SQL.

mod agents;
pub mod deployment;
mod execution_rows;
pub mod executions;
mod executions_sql;
mod one_statement_finish;
mod row;
pub mod runs;
mod runs_announced;
mod runs_sql;

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use engarde::kit::db::DbPool;
use engarde::kit::error::{ServiceError, ServiceResult};
use engarde::kit::idempotency::IdempotencyKey;
use engarde::kit::pagination::PageRequest;
use uuid::Uuid;

use crate::domain::provisioning::{Candidate, ProvisionOutcome, Skipped};
use crate::domain::{Agent, AgentFilter, NewAgent};

pub use agents::{PostgresAgentRepository, SqliteAgentRepository};
pub use executions::ExecutionRepository;
use executions_sql::{PostgresExecutionRepository, SqliteExecutionRepository};

/// A change to one agent, decided by the domain on the current row inside the transaction.
pub type Mutation = Box<dyn FnOnce(&mut Agent) -> ServiceResult<()> + Send>;
/// The answer to store for a request id, made from the changed agent (most calls answer the
/// agent itself; UpgradeAgent answers more).
pub type Answer = Box<dyn FnOnce(&Agent) -> ServiceResult<serde_json::Value> + Send>;
/// A check that an agent may be deleted, run on the current row inside the transaction.
pub type DeleteCheck = Box<dyn FnOnce(&Agent) -> ServiceResult<()> + Send>;

/// What a mutation did.
#[derive(Debug)]
pub enum Mutated {
    /// The agent after the change.
    Done(Box<Agent>),
    /// A replay: the stored answer of the first request with this id.
    Replayed(String),
}

/// Storage of agents. Every read and write is scoped to a tenant: another tenant's agent is
/// NOT_FOUND.
#[async_trait]
pub trait AgentRepository: Send + Sync {
    /// The stored answer of a completed request with this key, read before any slow work (such
    /// as a call to workflow-service) is done for a retry. ALREADY_EXISTS when the key was used
    /// for another request. `None`: no answer yet; the writing call claims the key itself.
    async fn replay(&self, tenant: &str, key: Option<&IdempotencyKey>) -> ServiceResult<Option<String>>;

    /// Stores a new draft. An agent made from a workflow also claims that workflow as
    /// provisioned (if no agent claimed it before).
    async fn create(&self, tenant: &str, new: NewAgent, key: Option<&IdempotencyKey>) -> ServiceResult<Agent>;

    /// One agent of the tenant.
    async fn get(&self, tenant: &str, id: Uuid) -> ServiceResult<Agent>;

    /// Whether any tenant has an agent with this id (for housekeeping, never for answers).
    async fn agent_exists(&self, id: Uuid) -> ServiceResult<bool>;

    /// One page of the tenant's agents, ordered by (created_at, id).
    async fn list(&self, tenant: &str, filter: &AgentFilter, page: &PageRequest) -> ServiceResult<Vec<Agent>>;

    /// Loads the agent, applies `mutation`, bumps the version and saves, atomically; stores
    /// `answer` of the result for the request id.
    async fn mutate(
        &self,
        tenant: &str,
        id: Uuid,
        key: Option<&IdempotencyKey>,
        mutation: Mutation,
        answer: Answer,
    ) -> ServiceResult<Mutated>;

    /// Deletes the agent when `check` allows it. Its workflow's claim passes to another agent of
    /// that workflow, or goes, so that the next provisioning gives the workflow an agent again.
    async fn delete(
        &self,
        tenant: &str,
        id: Uuid,
        key: Option<&IdempotencyKey>,
        check: DeleteCheck,
    ) -> ServiceResult<Uuid>;

    /// In one transaction: for each candidate (sorted by workflow id), claims its workflow and,
    /// when the claim is new, stores its agent; a workflow claimed before is skipped as
    /// ALREADY_HAS_AGENT. `skipped` are the workflows skipped before, answered alongside.
    async fn provision(
        &self,
        tenant: &str,
        candidates: Vec<Candidate>,
        skipped: Vec<Skipped>,
        key: Option<&IdempotencyKey>,
    ) -> ServiceResult<ProvisionOutcome>;

    /// Which of `workflow_ids` the tenant has provisioned (for dry runs).
    async fn provisioned(&self, tenant: &str, workflow_ids: &[Uuid]) -> ServiceResult<HashSet<Uuid>>;

    /// Forgets idempotency keys older than `before`.
    async fn expire_idempotency_keys(&self, before: chrono::DateTime<chrono::Utc>) -> ServiceResult<u64>;
}

/// Applies `mutation` and answers the agent (or, for a replay, the agent first answered).
pub async fn mutate_agent(
    repo: &dyn AgentRepository,
    tenant: &str,
    id: Uuid,
    key: Option<&IdempotencyKey>,
    mutation: Mutation,
) -> ServiceResult<Agent> {
    let answer: Answer = Box::new(|agent| serde_json::to_value(agent).map_err(ServiceError::internal));
    match repo.mutate(tenant, id, key, mutation, answer).await? {
        Mutated::Done(agent) => Ok(*agent),
        Mutated::Replayed(json) => replayed(&json),
    }
}

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
        DbPool::Postgres(p) => Arc::new(runs_sql::PostgresRunRepository::new(p.clone())),
        DbPool::Sqlite(p) => Arc::new(runs_announced::AnnouncedRunRepository::new(
            Arc::new(runs_sql::SqliteRunRepository::new(p.clone())),
            events.clone(),
        )),
    }
}

/// The migrations of each database.
pub static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
pub static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
