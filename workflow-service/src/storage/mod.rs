//! Where workflows live: one repository interface, implemented for PostgreSQL (production) and
//! SQLite (the embedded default) from one body of portable SQL.

mod cache;
mod change_feed;
mod row;
mod sql;

use std::sync::Arc;

use async_trait::async_trait;
use engarde::kit::db::DbPool;
use engarde::kit::error::ServiceResult;
use engarde::kit::idempotency::IdempotencyKey;
use engarde::kit::pagination::PageRequest;
use uuid::Uuid;

use crate::domain::templates::Template;
use crate::domain::{ExecutionReport, NewWorkflow, RecordedExecution, Workflow, WorkflowFilter};

pub use cache::{CachedWorkflowRepository, WorkflowCache};
pub use sql::{PostgresWorkflowRepository, SqliteWorkflowRepository};

/// A change to one workflow, decided by the domain on the current row inside the transaction.
pub type Mutation = Box<dyn FnOnce(&mut Workflow) -> ServiceResult<()> + Send>;
/// A check that a workflow may be deleted, run on the current row inside the transaction.
pub type DeleteCheck = Box<dyn FnOnce(&Workflow) -> ServiceResult<()> + Send>;

/// What seeding the template library did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeedOutcome {
    pub inserted: u64,
    pub updated: u64,
}

/// What importing one workflow did (see [`WorkflowRepository::import`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportApplied {
    Created,
    Updated,
    Unchanged,
    /// Not imported, for this reason (the id is taken by a template or another tenant).
    Refused(String),
}

/// Storage of workflow definitions. Every read and write is scoped to a tenant: a workflow of
/// another tenant is NOT_FOUND. Templates (tenant '') are visible to every tenant. A workflow
/// read carries the reading tenant's own statistics of it.
#[async_trait]
pub trait WorkflowRepository: Send + Sync {
    /// Inserts the templates that are not there yet, and brings those stored at an older
    /// revision up to `templates` (a new version when the name, description, category or config
    /// differ; statistics and status stay), so that a release's template changes reach an
    /// existing database, once however many replicas start; a newer revision stays.
    async fn seed_templates(&self, templates: &[Template]) -> ServiceResult<SeedOutcome>;

    /// Fills in the folded name (see `domain::name_folding`) of the rows written before the
    /// service kept one; answers how many it filled.
    async fn fold_names(&self) -> ServiceResult<u64>;

    /// Stores a new draft.
    async fn create(&self, tenant: &str, new: NewWorkflow, key: Option<&IdempotencyKey>) -> ServiceResult<Workflow>;

    /// One workflow the tenant can see.
    async fn get(&self, tenant: &str, id: Uuid) -> ServiceResult<Workflow>;

    /// One page of the workflows the tenant can see, ordered by (name, id). Shared, so that a
    /// cached page is answered without copying it.
    async fn list(&self, tenant: &str, filter: &WorkflowFilter, page: &PageRequest) -> ServiceResult<Arc<[Workflow]>>;

    /// Loads the workflow, applies `mutation`, bumps the version and saves, atomically.
    async fn mutate(
        &self,
        tenant: &str,
        id: Uuid,
        key: Option<&IdempotencyKey>,
        mutation: Mutation,
    ) -> ServiceResult<Workflow>;

    /// Deletes the workflow when `check` allows it.
    async fn delete(
        &self,
        tenant: &str,
        id: Uuid,
        key: Option<&IdempotencyKey>,
        check: DeleteCheck,
    ) -> ServiceResult<Uuid>;

    /// Counts one execution of `tenant`'s exactly once (by `execution_id`), in that tenant's
    /// statistics of the workflow (a template's are per tenant); answers the workflow with them.
    async fn record_execution(
        &self,
        tenant: &str,
        workflow_id: Uuid,
        execution_id: &str,
        succeeded: bool,
    ) -> ServiceResult<RecordedExecution>;

    /// Records `reports`, all `tenant`'s, in one transaction, each as [`Self::record_execution`]
    /// records one (a repeat within the batch too is counted=false). Answers one outcome per
    /// report, in their order: a report that cannot be counted (its workflow NOT_FOUND for the
    /// tenant, its execution ALREADY_EXISTS for another workflow or tenant) fails alone, and
    /// the others are counted; only a failure of the database fails the whole batch. The figures
    /// answered are the workflow's after the batch.
    async fn record_executions(
        &self,
        tenant: &str,
        reports: &[ExecutionReport],
    ) -> ServiceResult<Vec<ServiceResult<RecordedExecution>>>;

    /// Imports `workflow` (a workflow of the platform, with its id, tenant and statistics) in
    /// one transaction: created when its id is new; when the tenant already has it, its
    /// definition (name, description, category, config) and status are overwritten only if
    /// they differ (a new version only for a new definition, as for any change), and its statistics (the tenant's own) only if they differ;
    /// refused when the id is a template's or another tenant's. `dry_run` rolls the
    /// transaction back: the answer says what would have been done.
    async fn import(&self, workflow: &Workflow, dry_run: bool) -> ServiceResult<ImportApplied>;

    /// Forgets idempotency keys older than `before`.
    async fn expire_idempotency_keys(&self, before: chrono::DateTime<chrono::Utc>, limit: i64) -> ServiceResult<u64>;
}

/// The repository for a pool.
pub fn repository(pool: &DbPool) -> Arc<dyn WorkflowRepository> {
    match pool {
        DbPool::Postgres(p) => Arc::new(PostgresWorkflowRepository::new(p.clone())),
        DbPool::Sqlite(p) => Arc::new(SqliteWorkflowRepository::new(p.clone())),
    }
}

/// The repository for a pool, behind a cache of up to `capacity` workflows where the database
/// announces changes (PostgreSQL), its feed checked every `heartbeat`; uncached on SQLite, or
/// with a capacity of 0.
pub fn cached_repository(pool: &DbPool, capacity: u64, heartbeat: std::time::Duration) -> Arc<dyn WorkflowRepository> {
    let repo = repository(pool);
    match pool {
        DbPool::Postgres(p) if capacity > 0 => {
            let cache = Arc::new(WorkflowCache::new(capacity));
            change_feed::spawn(p.sqlx().clone(), cache.clone(), heartbeat);
            Arc::new(CachedWorkflowRepository::new(repo, cache))
        }
        _ => repo,
    }
}

/// The migrations of each database.
pub static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
pub static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
