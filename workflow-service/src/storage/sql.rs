//! [`WorkflowRepository`] in SQL both databases accept, written once over a [`Dialect`].
//!
//! Where the databases differ the dialect says so: PostgreSQL locks the row it is about to change
//! (`FOR UPDATE`); SQLite takes its single write lock up front (`BEGIN IMMEDIATE`), which also
//! avoids the deadlock of two readers upgrading to writers at once.

use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use engarde::kit::dialect::{self, BindKeyset, Conn, Decodes, Dialect, SqlUuid, Statement};
use engarde::kit::error::{ServiceError, ServiceResult};
use engarde::kit::idempotency::IdempotencyKey;
use engarde::kit::pagination::PageRequest;
use uuid::Uuid;

use crate::domain::name_folding::fold_name;
use crate::domain::{NewWorkflow, RecordedExecution, Workflow, WorkflowFilter};
use crate::storage::row::{COLUMNS, WorkflowRow};
use crate::storage::{DeleteCheck, Mutation, SeedOutcome, WorkflowRepository};

/// The workflow repository of a dialect.
pub struct SqlWorkflowRepository<D: Dialect> {
    pool: sqlx::Pool<D::Db>,
    dialect: PhantomData<D>,
}

pub type PostgresWorkflowRepository = SqlWorkflowRepository<dialect::Postgres>;
pub type SqliteWorkflowRepository = SqlWorkflowRepository<dialect::Sqlite>;

impl<D: Dialect> SqlWorkflowRepository<D> {
    pub fn new(pool: sqlx::Pool<D::Db>) -> Self {
        Self { pool, dialect: PhantomData }
    }
}

/// Now, to the microsecond: what PostgreSQL stores, so an answer equals a later read.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn replayed<T: serde::de::DeserializeOwned>(json: &str) -> ServiceResult<T> {
    serde_json::from_str(json).map_err(ServiceError::internal)
}

fn not_found(id: Uuid) -> ServiceError {
    ServiceError::not_found(format!("workflow {id}"))
}

/// The `LIKE` pattern of a name filter, on folded names (`''`: no filter).
fn name_pattern(name_contains: &str) -> String {
    if name_contains.is_empty() {
        return String::new();
    }
    let escaped = fold_name(name_contains).replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
    format!("%{escaped}%")
}

impl<D> SqlWorkflowRepository<D>
where
    D: Dialect,
    D::Db: Decodes<WorkflowRow>,
{
    /// The workflow if the tenant can see it, locked for the rest of the transaction.
    async fn load_for_update(conn: &mut Conn<D>, tenant: &str, id: Uuid) -> ServiceResult<Workflow> {
        let sql =
            format!("SELECT {COLUMNS} FROM workflows WHERE id = $1 AND (tenant_id = $2 OR is_template){}", D::LOCK);
        let row: Option<WorkflowRow> = sqlx::query::<D::Db>(sqlx::AssertSqlSafe(sql))
            .arg(SqlUuid(id))
            .arg(tenant)
            .fetch_optional_as(&mut *conn)
            .await?;
        row.ok_or_else(|| not_found(id))?.try_into()
    }

    /// Writes `w` over the row at `read_version` (ABORTED when it changed meanwhile).
    async fn update(conn: &mut Conn<D>, w: &Workflow, read_version: i64) -> ServiceResult<()> {
        let updated = sqlx::query::<D::Db>(
            "UPDATE workflows SET name = $1, description = $2, category = $3, config = $4, status = $5, \
             version = $6, updated_at = $7, name_folded = $10 WHERE id = $8 AND version = $9",
        )
        .arg(&w.name)
        .arg(&w.description)
        .arg(w.category.as_str())
        .json(&w.config)
        .arg(w.status.as_str())
        .arg(w.version)
        .arg(w.updated_at)
        .arg(SqlUuid(w.id))
        .arg(read_version)
        .arg(fold_name(&w.name))
        .run(&mut *conn)
        .await?;
        if D::rows_affected(&updated) != 1 {
            return Err(ServiceError::Aborted(format!("workflow {} changed concurrently; read it again", w.id)));
        }
        Ok(())
    }

    /// Inserts `w` (and its folded name); answers how many rows were inserted, which
    /// `on_conflict` may make 0.
    async fn insert(conn: &mut Conn<D>, w: &Workflow, on_conflict: &str) -> ServiceResult<u64> {
        let sql = format!(
            "INSERT INTO workflows ({COLUMNS}, name_folded) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) {on_conflict}"
        );
        let inserted = sqlx::query::<D::Db>(sqlx::AssertSqlSafe(sql))
            .arg(SqlUuid(w.id))
            .arg(&w.tenant_id)
            .arg(&w.name)
            .arg(&w.description)
            .arg(w.category.as_str())
            .json(&w.config)
            .arg(w.status.as_str())
            .arg(w.is_template)
            .arg(w.execution_count)
            .arg(w.success_count)
            .arg(w.version)
            .arg(w.created_at)
            .arg(w.updated_at)
            .arg(fold_name(&w.name))
            .run(&mut *conn)
            .await?;
        Ok(D::rows_affected(&inserted))
    }
}

#[async_trait]
impl<D> WorkflowRepository for SqlWorkflowRepository<D>
where
    D: Dialect,
    D::Db: Decodes<WorkflowRow> + Decodes<(SqlUuid,)> + Decodes<(SqlUuid, String)> + Decodes<(String, Option<String>)>,
{
    async fn seed_templates(&self, templates: &[Workflow]) -> ServiceResult<SeedOutcome> {
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        let mut outcome = SeedOutcome::default();
        for template in templates {
            if Self::insert(&mut *tx, template, "ON CONFLICT (id) DO NOTHING").await? == 1 {
                outcome.inserted += 1;
                continue;
            }
            // There already: brought up to date when the library's text differs from it.
            let mut stored = Self::load_for_update(&mut *tx, "", template.id).await?;
            let current = (&stored.name, &stored.description, stored.category, &stored.config);
            if current == (&template.name, &template.description, template.category, &template.config) {
                continue;
            }
            stored.name = template.name.clone();
            stored.description = template.description.clone();
            stored.category = template.category;
            stored.config = template.config.clone();
            stored.version += 1;
            stored.updated_at = now();
            Self::update(&mut *tx, &stored, stored.version - 1).await?;
            outcome.updated += 1;
        }
        tx.commit().await?;
        Ok(outcome)
    }

    async fn fold_names(&self) -> ServiceResult<u64> {
        const BATCH: i64 = 500;
        let mut folded = 0;
        loop {
            let rows: Vec<(SqlUuid, String)> =
                sqlx::query::<D::Db>("SELECT id, name FROM workflows WHERE name_folded IS NULL LIMIT $1")
                    .arg(BATCH)
                    .fetch_all_as(&self.pool)
                    .await?;
            if rows.is_empty() {
                return Ok(folded);
            }
            let mut tx = self.pool.begin_with(D::BEGIN).await?;
            for (id, name) in rows {
                // Only if the name is still the one folded: a rename meanwhile wrote its own.
                let updated = sqlx::query::<D::Db>(
                    "UPDATE workflows SET name_folded = $1 WHERE id = $2 AND name = $3 AND name_folded IS NULL",
                )
                .arg(fold_name(&name))
                .arg(id)
                .arg(&name)
                .run(&mut *tx)
                .await?;
                folded += D::rows_affected(&updated);
            }
            tx.commit().await?;
        }
    }

    async fn create(&self, tenant: &str, new: NewWorkflow, key: Option<&IdempotencyKey>) -> ServiceResult<Workflow> {
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        if let Some(json) = dialect::claim_idempotency::<D>(&mut *tx, tenant, key).await? {
            return replayed(&json);
        }
        let workflow = new.into_draft(tenant, now());
        Self::insert(&mut *tx, &workflow, "").await?;
        dialect::complete_idempotency::<D::Db>(&mut *tx, tenant, key, &workflow).await?;
        tx.commit().await?;
        Ok(workflow)
    }

    async fn get(&self, tenant: &str, id: Uuid) -> ServiceResult<Workflow> {
        let sql = format!("SELECT {COLUMNS} FROM workflows WHERE id = $1 AND (tenant_id = $2 OR is_template)");
        let row: Option<WorkflowRow> = sqlx::query::<D::Db>(sqlx::AssertSqlSafe(sql))
            .arg(SqlUuid(id))
            .arg(tenant)
            .fetch_optional_as(&self.pool)
            .await?;
        row.ok_or_else(|| not_found(id))?.try_into()
    }

    async fn list(&self, tenant: &str, filter: &WorkflowFilter, page: &PageRequest) -> ServiceResult<Arc<[Workflow]>> {
        // One static statement: an empty filter parameter matches everything.
        let sql = format!(
            "SELECT {COLUMNS} FROM workflows \
             WHERE (tenant_id = $1 OR is_template) \
               AND ($2 = '' OR category = $2) \
               AND ($3 = '' OR status = $3) \
               AND ($4 = -1 OR is_template = ($4 = 1)) \
               AND ($5 = '' OR name_folded LIKE $5 ESCAPE '\\') \
               AND ($6 = 0 OR (name, id) > ($7, $8)) \
             ORDER BY name, id LIMIT $9"
        );
        let is_template: i64 = match filter.is_template {
            None => -1,
            Some(true) => 1,
            Some(false) => 0,
        };
        let rows: Vec<WorkflowRow> = sqlx::query::<D::Db>(sqlx::AssertSqlSafe(sql))
            .arg(tenant)
            .arg(filter.category.map(|c| c.as_str()).unwrap_or(""))
            .arg(filter.status.map(|s| s.as_str()).unwrap_or(""))
            .arg(is_template)
            .arg(name_pattern(&filter.name_contains))
            .bind_text_keyset(page)?
            .arg(i64::from(page.size))
            .fetch_all_as(&self.pool)
            .await?;
        rows.into_iter().map(Workflow::try_from).collect::<ServiceResult<Vec<_>>>().map(Into::into)
    }

    async fn mutate(
        &self,
        tenant: &str,
        id: Uuid,
        key: Option<&IdempotencyKey>,
        mutation: Mutation,
    ) -> ServiceResult<Workflow> {
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        if let Some(json) = dialect::claim_idempotency::<D>(&mut *tx, tenant, key).await? {
            return replayed(&json);
        }
        let mut workflow = Self::load_for_update(&mut *tx, tenant, id).await?;
        let read_version = workflow.version;
        mutation(&mut workflow)?;
        workflow.version = read_version + 1;
        workflow.updated_at = now();
        Self::update(&mut *tx, &workflow, read_version).await?;
        dialect::complete_idempotency::<D::Db>(&mut *tx, tenant, key, &workflow).await?;
        tx.commit().await?;
        Ok(workflow)
    }

    async fn delete(
        &self,
        tenant: &str,
        id: Uuid,
        key: Option<&IdempotencyKey>,
        check: DeleteCheck,
    ) -> ServiceResult<Uuid> {
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        if let Some(json) = dialect::claim_idempotency::<D>(&mut *tx, tenant, key).await? {
            return replayed(&json);
        }
        let workflow = Self::load_for_update(&mut *tx, tenant, id).await?;
        check(&workflow)?;
        sqlx::query::<D::Db>("DELETE FROM workflows WHERE id = $1").arg(SqlUuid(id)).run(&mut *tx).await?;
        dialect::complete_idempotency::<D::Db>(&mut *tx, tenant, key, &id).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn record_execution(
        &self,
        tenant: &str,
        workflow_id: Uuid,
        execution_id: &str,
        succeeded: bool,
    ) -> ServiceResult<RecordedExecution> {
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        // Locking the workflow serialises concurrent reports of one execution.
        let mut workflow = Self::load_for_update(&mut *tx, tenant, workflow_id).await?;
        let seen: Option<(SqlUuid,)> =
            sqlx::query::<D::Db>("SELECT workflow_id FROM workflow_executions WHERE execution_id = $1")
                .arg(execution_id)
                .fetch_optional_as(&mut *tx)
                .await?;
        if let Some((recorded_for,)) = seen {
            if recorded_for.0 != workflow_id {
                return Err(ServiceError::AlreadyExists(format!(
                    "execution {execution_id} was already recorded for another workflow"
                )));
            }
            return Ok(RecordedExecution { counted: false, workflow });
        }
        sqlx::query::<D::Db>(
            "INSERT INTO workflow_executions (execution_id, workflow_id, tenant_id, succeeded, recorded_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .arg(execution_id)
        .arg(SqlUuid(workflow_id))
        .arg(tenant)
        .arg(succeeded)
        .arg(Utc::now())
        .run(&mut *tx)
        .await?;
        let success = i64::from(succeeded);
        sqlx::query::<D::Db>(
            "UPDATE workflows SET execution_count = execution_count + 1, success_count = success_count + $1 \
             WHERE id = $2",
        )
        .arg(success)
        .arg(SqlUuid(workflow_id))
        .run(&mut *tx)
        .await?;
        tx.commit().await?;
        workflow.execution_count += 1;
        workflow.success_count += success;
        Ok(RecordedExecution { counted: true, workflow })
    }

    async fn expire_idempotency_keys(&self, before: DateTime<Utc>) -> ServiceResult<u64> {
        dialect::expire_idempotency::<D>(&self.pool, before).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::templates;
    use crate::storage::{POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS};

    fn new_workflow(name: &str) -> NewWorkflow {
        let template = &templates::library(Utc::now())[0];
        NewWorkflow {
            name: name.into(),
            description: String::new(),
            category: template.category,
            config: template.config.clone(),
        }
    }

    /// The kit's idempotency SQL, through this repository: a retry replays the first answer
    /// until its key expires, then it is a new request.
    async fn an_expired_key_no_longer_replays(repo: &dyn WorkflowRepository) {
        let key = IdempotencyKey { request_id: "req-1".into(), fingerprint: "create Once".into() };
        let first = repo.create("tenant-a", new_workflow("Once"), Some(&key)).await.unwrap();
        let replay = repo.create("tenant-a", new_workflow("Once"), Some(&key)).await.unwrap();
        assert_eq!(replay.id, first.id);

        let an_hour_ago = Utc::now() - chrono::Duration::hours(1);
        assert_eq!(repo.expire_idempotency_keys(an_hour_ago).await.unwrap(), 0, "a young key is kept");
        let in_an_hour = Utc::now() + chrono::Duration::hours(1);
        assert_eq!(repo.expire_idempotency_keys(in_an_hour).await.unwrap(), 1);

        let after_expiry = repo.create("tenant-a", new_workflow("Once"), Some(&key)).await.unwrap();
        assert_ne!(after_expiry.id, first.id);
    }

    /// A release's template changes reach an existing database: changed templates get a new
    /// version and keep their statistics; an unchanged library changes nothing.
    async fn template_changes_reach_an_existing_database(repo: &dyn WorkflowRepository) {
        let library = templates::library(now());
        assert_eq!(repo.seed_templates(&library).await.unwrap(), SeedOutcome { inserted: 11, updated: 0 });
        assert_eq!(repo.seed_templates(&library).await.unwrap(), SeedOutcome::default(), "a restart changes nothing");
        let counted = repo.record_execution("tenant-a", library[0].id, "exec-1", true).await.unwrap();
        assert!(counted.counted);

        let mut next_release = templates::library(now());
        next_release[0].description = "A better description".into();
        next_release[0].config.steps[0].prompt = "A better prompt for {input}".into();
        assert_eq!(repo.seed_templates(&next_release).await.unwrap(), SeedOutcome { inserted: 0, updated: 1 });
        let updated = repo.get("tenant-a", library[0].id).await.unwrap();
        assert_eq!(updated.description, "A better description");
        assert_eq!(updated.config, next_release[0].config);
        assert_eq!(updated.version, 2);
        assert_eq!((updated.execution_count, updated.success_count), (1, 1), "statistics stay");
        assert_eq!(repo.get("tenant-a", library[1].id).await.unwrap().version, 1, "the others are untouched");
        assert_eq!(repo.seed_templates(&next_release).await.unwrap(), SeedOutcome::default());
    }

    type Scenario =
        for<'a> fn(&'a dyn WorkflowRepository) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

    async fn on_sqlite(scenario: Scenario) {
        let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await.unwrap();
        SQLITE_MIGRATIONS.run(&pool).await.unwrap();
        scenario(&SqliteWorkflowRepository::new(pool)).await;
    }

    /// On a database of its own, created on the server `TEST_DATABASE_URL` names (the local
    /// server by default, as the end-to-end tests use) and dropped afterwards.
    async fn on_postgres(scenario: Scenario) {
        let admin_url = std::env::var("TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let admin = sqlx::PgPool::connect(&admin_url).await.unwrap();
        let name = format!("engarde_unit_{}", Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await.unwrap();
        let base = admin_url.rsplit_once('/').map_or(admin_url.as_str(), |(base, _)| base);
        let pool = sqlx::PgPool::connect(&format!("{base}/{name}")).await.unwrap();
        POSTGRES_MIGRATIONS.run(&pool).await.unwrap();
        // Run apart, so that the database is dropped even when an assertion fails.
        let outcome = tokio::spawn({
            let pool = pool.clone();
            async move { scenario(&PostgresWorkflowRepository::new(pool)).await }
        })
        .await;
        pool.close().await;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name}"))).execute(&admin).await.unwrap();
        if let Err(failed) = outcome {
            std::panic::resume_unwind(failed.into_panic());
        }
    }

    #[tokio::test]
    async fn an_expired_idempotency_key_no_longer_replays_on_sqlite() {
        on_sqlite(|repo| Box::pin(an_expired_key_no_longer_replays(repo))).await;
    }

    #[tokio::test]
    async fn an_expired_idempotency_key_no_longer_replays_on_postgres() {
        on_postgres(|repo| Box::pin(an_expired_key_no_longer_replays(repo))).await;
    }

    #[tokio::test]
    async fn template_changes_reach_an_existing_database_on_sqlite() {
        on_sqlite(|repo| Box::pin(template_changes_reach_an_existing_database(repo))).await;
    }

    #[tokio::test]
    async fn template_changes_reach_an_existing_database_on_postgres() {
        on_postgres(|repo| Box::pin(template_changes_reach_an_existing_database(repo))).await;
    }
}
