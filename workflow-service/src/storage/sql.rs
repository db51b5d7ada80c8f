//! [`WorkflowRepository`] in SQL both databases accept, written once over a [`Dialect`].
//!
//! Where the databases differ the dialect says so: PostgreSQL locks the row it is about to change
//! (`FOR NO KEY UPDATE`, `FOR UPDATE` to delete it; a report of an execution only keeps it,
//! `FOR KEY SHARE`); SQLite takes its single write lock up front (`BEGIN IMMEDIATE`), which also
//! avoids the deadlock of two readers upgrading to writers at once.

use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use engarde::kit::dialect::{self, BindKeyset, Conn, Decodes, Dialect, SqlUuid, Statement};
use engarde::kit::error::{ServiceError, ServiceResult};
use engarde::kit::idempotency::IdempotencyKey;
use engarde::kit::pagination::PageRequest;
use engarde::kit::warm_pool::WarmPool;
use uuid::Uuid;

use crate::domain::name_folding::fold_name;
use crate::domain::templates::Template;
use crate::domain::{ExecutionReport, NewWorkflow, RecordedExecution, Workflow, WorkflowFilter};
use crate::storage::row::{COLUMNS, SELECT_COLUMNS, WorkflowRow, from_workflows_of};
use crate::storage::{DeleteCheck, ImportApplied, Mutation, SeedOutcome, WorkflowRepository};

/// PostgreSQL's row locks on a workflow's definition (`w`: no row of an outer join's nullable
/// side can be locked). A change of the definition keeps its key, so it does not wait for, nor
/// hold back, reports of executions, which only need the row to stay (a key share).
const LOCK_CHANGE: &str = " FOR NO KEY UPDATE OF w";
const LOCK_DELETE: &str = " FOR UPDATE OF w";
const LOCK_KEEP: &str = " FOR KEY SHARE OF w";
const LOCK_NONE: &str = "";

/// The workflow repository of a dialect.
pub struct SqlWorkflowRepository<D: Dialect> {
    pool: WarmPool<D::Db>,
    dialect: PhantomData<D>,
}

pub type PostgresWorkflowRepository = SqlWorkflowRepository<dialect::Postgres>;
pub type SqliteWorkflowRepository = SqlWorkflowRepository<dialect::Sqlite>;

impl<D: Dialect> SqlWorkflowRepository<D> {
    pub fn new(pool: WarmPool<D::Db>) -> Self {
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

/// The reports of one batch on one workflow (see `record_in`).
struct Group {
    id: Uuid,
    /// None: the tenant cannot read it.
    workflow: Option<Workflow>,
    /// What its reports counted now.
    executions: i64,
    successes: i64,
    /// How many of its reports had been counted before.
    repeats: usize,
}

impl<D> SqlWorkflowRepository<D>
where
    D: Dialect,
    D::Db: Decodes<WorkflowRow> + Decodes<(SqlUuid, String)> + Decodes<(i64, i64)>,
{
    /// The workflow if the tenant can see it (with the tenant's statistics), the definition's
    /// row locked for the rest of the transaction with PostgreSQL's `lock` (one of the
    /// `LOCK_*`; nothing on SQLite, whose transactions take the one write lock up front).
    async fn load_locked(conn: &mut Conn<D>, tenant: &str, id: Uuid, lock: &str) -> ServiceResult<Workflow> {
        let lock = if D::LOCK.is_empty() { "" } else { lock };
        let sql = format!(
            "SELECT {SELECT_COLUMNS} FROM {} WHERE w.id = $1 AND (w.tenant_id = $2 OR w.is_template){lock}",
            from_workflows_of(2)
        );
        let row: Option<WorkflowRow> = sqlx::query::<D::Db>(sqlx::AssertSqlSafe(sql))
            .arg(SqlUuid(id))
            .arg(tenant)
            .fetch_optional_as(&mut *conn)
            .await?;
        row.ok_or_else(|| not_found(id))?.try_into()
    }

    /// Records `reports`, all `tenant`'s, in the caller's transaction: each execution exactly
    /// once (by its id), in the tenant's statistics of its workflow. Answers one outcome per
    /// report, in their order: a report that cannot be counted (NOT_FOUND, ALREADY_EXISTS,
    /// ABORTED) fails alone; a database failure fails them all.
    ///
    /// The definition does not change: its row is only kept from being deleted meanwhile, so
    /// that the reports of every tenant on one template run side by side. Exactly once rests on
    /// the execution's key: of concurrent reports of one execution, one inserts it, the others
    /// wait for that one's commit and find it there. Two phases, each in one fixed order, so
    /// that concurrent batches take their locks alike and cannot deadlock: first the workflows
    /// are kept and the executions inserted, by (workflow id, execution id); then each
    /// workflow's statistics row is counted once, by workflow id.
    async fn record_in(
        conn: &mut Conn<D>,
        tenant: &str,
        reports: &[ExecutionReport],
    ) -> ServiceResult<Vec<ServiceResult<RecordedExecution>>> {
        let mut order: Vec<usize> = (0..reports.len()).collect();
        order.sort_by_key(|&i| (reports[i].workflow_id, reports[i].execution_id.as_str()));
        // Per report, by its index: whether it counted now, or why it cannot be counted.
        let mut claims: Vec<Option<ServiceResult<bool>>> = (0..reports.len()).map(|_| None).collect();
        let mut groups: Vec<Group> = Vec::new();
        for &i in &order {
            let report = &reports[i];
            if groups.last().is_none_or(|g| g.id != report.workflow_id) {
                let workflow = match Self::load_locked(&mut *conn, tenant, report.workflow_id, LOCK_KEEP).await {
                    Ok(workflow) => Some(workflow),
                    Err(ServiceError::NotFound(_)) => None,
                    Err(e) => return Err(e),
                };
                groups.push(Group { id: report.workflow_id, workflow, executions: 0, successes: 0, repeats: 0 });
            }
            let Some(group) = groups.last_mut().filter(|g| g.workflow.is_some()) else {
                claims[i] = Some(Err(not_found(report.workflow_id)));
                continue;
            };
            let claim = Self::insert_execution(&mut *conn, tenant, report).await?;
            match claim {
                Ok(true) => {
                    group.executions += 1;
                    group.successes += i64::from(report.succeeded);
                }
                Ok(false) => group.repeats += 1,
                Err(_) => {}
            }
            claims[i] = Some(claim);
        }
        // Each workflow's figures after the batch: counted in the tenant's own row (the reports
        // of one tenant on one workflow queue on it), or read again when only repeats were
        // answered (the figures include the reports that counted them).
        let mut figures: Vec<(Uuid, Arc<Workflow>)> = Vec::with_capacity(groups.len());
        for group in groups {
            let Some(mut workflow) = group.workflow else { continue };
            if group.executions > 0 {
                (workflow.execution_count, workflow.success_count) =
                    Self::count_statistics(&mut *conn, tenant, group.id, group.executions, group.successes).await?;
            } else if group.repeats > 0 {
                workflow = Self::load_locked(&mut *conn, tenant, group.id, LOCK_NONE).await?;
            } else {
                continue;
            }
            figures.push((group.id, Arc::new(workflow)));
        }
        let outcomes = reports.iter().zip(claims).map(|(report, claim)| {
            let counted = claim.unwrap_or_else(|| Err(not_found(report.workflow_id)))?;
            // In workflow order, as the groups were made.
            let found = figures.binary_search_by_key(&report.workflow_id, |(id, _)| *id);
            let workflow = found.map(|at| figures[at].1.clone()).map_err(|_| {
                ServiceError::internal(anyhow::anyhow!("report on {} recorded without figures", report.workflow_id))
            })?;
            Ok(RecordedExecution { counted, workflow })
        });
        Ok(outcomes.collect())
    }

    /// Inserts the report's execution: answers true when it is new, false when this tenant
    /// had recorded it for this workflow before (within this transaction too), and why not when
    /// it belongs to another workflow or tenant, or vanished meanwhile.
    async fn insert_execution(
        conn: &mut Conn<D>,
        tenant: &str,
        report: &ExecutionReport,
    ) -> ServiceResult<ServiceResult<bool>> {
        let inserted = sqlx::query::<D::Db>(
            "INSERT INTO workflow_executions (execution_id, workflow_id, tenant_id, succeeded, recorded_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (execution_id) DO NOTHING",
        )
        .arg(&report.execution_id)
        .arg(SqlUuid(report.workflow_id))
        .arg(tenant)
        .arg(report.succeeded)
        .arg(Utc::now())
        .run(&mut *conn)
        .await?;
        if D::rows_affected(&inserted) == 1 {
            return Ok(Ok(true));
        }
        let seen: Option<(SqlUuid, String)> =
            sqlx::query::<D::Db>("SELECT workflow_id, tenant_id FROM workflow_executions WHERE execution_id = $1")
                .arg(&report.execution_id)
                .fetch_optional_as(&mut *conn)
                .await?;
        let execution_id = &report.execution_id;
        Ok(match seen {
            // Gone since: its workflow was deleted in between.
            None => Err(ServiceError::Aborted(format!("execution {execution_id} changed concurrently; retry"))),
            // One execution is one tenant's, of one workflow (a template's counts are per tenant).
            Some((recorded_for, recorded_tenant))
                if recorded_for.0 != report.workflow_id || recorded_tenant != tenant =>
            {
                Err(ServiceError::AlreadyExists(format!(
                    "execution {execution_id} was already recorded for another workflow or tenant"
                )))
            }
            Some(_) => Ok(false),
        })
    }

    /// Adds `executions` (of which `successes` succeeded) to the tenant's statistics of the
    /// workflow; answers its figures after.
    async fn count_statistics(
        conn: &mut Conn<D>,
        tenant: &str,
        workflow_id: Uuid,
        executions: i64,
        successes: i64,
    ) -> ServiceResult<(i64, i64)> {
        let figures: (i64, i64) = sqlx::query::<D::Db>(
            "INSERT INTO workflow_statistics (workflow_id, tenant_id, execution_count, success_count) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (workflow_id, tenant_id) DO UPDATE SET \
               execution_count = workflow_statistics.execution_count + excluded.execution_count, \
               success_count = workflow_statistics.success_count + excluded.success_count \
             RETURNING execution_count, success_count",
        )
        .arg(SqlUuid(workflow_id))
        .arg(tenant)
        .arg(executions)
        .arg(successes)
        .fetch_one_as(&mut *conn)
        .await?;
        Ok(figures)
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

    /// Records that template `id` is at the library's `revision`.
    async fn set_template_revision(conn: &mut Conn<D>, id: Uuid, revision: i64) -> ServiceResult<()> {
        sqlx::query::<D::Db>("UPDATE workflows SET template_revision = $1 WHERE id = $2")
            .arg(revision)
            .arg(SqlUuid(id))
            .run(&mut *conn)
            .await?;
        Ok(())
    }

    /// Sets the statistics of `w`'s tenant on `w` to `w`'s figures (an import's).
    async fn write_statistics(conn: &mut Conn<D>, w: &Workflow) -> ServiceResult<()> {
        sqlx::query::<D::Db>(
            "INSERT INTO workflow_statistics (workflow_id, tenant_id, execution_count, success_count) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (workflow_id, tenant_id) DO UPDATE SET \
               execution_count = excluded.execution_count, success_count = excluded.success_count",
        )
        .arg(SqlUuid(w.id))
        .arg(&w.tenant_id)
        .arg(w.execution_count)
        .arg(w.success_count)
        .run(&mut *conn)
        .await?;
        Ok(())
    }

    /// Inserts `w` (and its folded name); answers how many rows were inserted, which
    /// `on_conflict` may make 0. Statistics are not the definition's: a new one has none.
    async fn insert(conn: &mut Conn<D>, w: &Workflow, on_conflict: &str) -> ServiceResult<u64> {
        let sql = format!(
            "INSERT INTO workflows ({COLUMNS}, name_folded) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) {on_conflict}"
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
    D::Db: Decodes<WorkflowRow>
        + Decodes<(SqlUuid,)>
        + Decodes<(SqlUuid, String)>
        + Decodes<(String, Option<String>)>
        + Decodes<(String, bool)>
        + Decodes<(i64, i64)>
        + Decodes<(i64,)>,
{
    async fn seed_templates(&self, templates: &[Template]) -> ServiceResult<SeedOutcome> {
        let _span = D::span("workflows.seed_templates");
        // One transaction: replicas starting at once queue on each template's row (SQLite: on
        // the one write lock), and the later ones find the revision already there.
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        let mut outcome = SeedOutcome::default();
        for Template { revision, workflow: template } in templates {
            if Self::insert(&mut *tx, template, "ON CONFLICT (id) DO NOTHING").await? == 1 {
                Self::set_template_revision(&mut *tx, template.id, *revision).await?;
                outcome.inserted += 1;
                continue;
            }
            let mut stored = Self::load_locked(&mut *tx, "", template.id, LOCK_CHANGE).await?;
            let (stored_revision,): (i64,) =
                sqlx::query::<D::Db>("SELECT template_revision FROM workflows WHERE id = $1")
                    .arg(SqlUuid(template.id))
                    .fetch_one_as(&mut *tx)
                    .await?;
            // The same revision, or a newer release's: nothing to do (never undo a newer one).
            if stored_revision >= *revision {
                continue;
            }
            // An older revision: brought up to this one, with a new version only when the
            // definition differs (a database seeded before revisions existed holds 0).
            if stored.definition_differs(template) {
                stored.name = template.name.clone();
                stored.description = template.description.clone();
                stored.category = template.category;
                stored.config = template.config.clone();
                stored.version += 1;
                stored.updated_at = now();
                Self::update(&mut *tx, &stored, stored.version - 1).await?;
                outcome.updated += 1;
            }
            Self::set_template_revision(&mut *tx, template.id, *revision).await?;
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
        let _span = D::span("workflows.create");
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
        let _span = D::span("workflows.get");
        let sql = format!(
            "SELECT {SELECT_COLUMNS} FROM {} WHERE w.id = $1 AND (w.tenant_id = $2 OR w.is_template)",
            from_workflows_of(2)
        );
        let row: Option<WorkflowRow> = sqlx::query::<D::Db>(sqlx::AssertSqlSafe(sql))
            .arg(SqlUuid(id))
            .arg(tenant)
            .fetch_optional_as(&self.pool)
            .await?;
        row.ok_or_else(|| not_found(id))?.try_into()
    }

    async fn list(&self, tenant: &str, filter: &WorkflowFilter, page: &PageRequest) -> ServiceResult<Arc<[Workflow]>> {
        let _span = D::span("workflows.list");
        // One static statement: an empty filter parameter matches everything. The tenant's own
        // workflows and the library are read apart, each already in page order from the
        // (tenant_id, name, id) index and at most a page of each, then merged: one scan of
        // `tenant OR template` would read and sort every workflow of the tenant for each page.
        let filters = "AND ($2 = '' OR w.category = $2) \
               AND ($3 = '' OR w.status = $3) \
               AND ($4 = -1 OR w.is_template = ($4 = 1)) \
               AND ($5 = '' OR w.name_folded LIKE $5 ESCAPE '\\') \
               AND ($6 = 0 OR (w.name, w.id) > ($7, $8))";
        let sql = format!(
            "SELECT * FROM (SELECT {SELECT_COLUMNS} FROM {from} WHERE w.tenant_id = $1 AND NOT w.is_template {filters} \
                            ORDER BY w.name, w.id LIMIT $9) AS own \
             UNION ALL \
             SELECT * FROM (SELECT {SELECT_COLUMNS} FROM {from} WHERE w.tenant_id = '' AND w.is_template {filters} \
                            ORDER BY w.name, w.id LIMIT $9) AS library \
             ORDER BY name, id LIMIT $9",
            from = from_workflows_of(1)
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
        let _span = D::span("workflows.mutate");
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        if let Some(json) = dialect::claim_idempotency::<D>(&mut *tx, tenant, key).await? {
            return replayed(&json);
        }
        let mut workflow = Self::load_locked(&mut *tx, tenant, id, LOCK_CHANGE).await?;
        let read = workflow.clone();
        mutation(&mut workflow)?;
        // Only a change of the definition makes a new version (a status change does not:
        // agents made from the workflow have nothing new to upgrade to).
        workflow.version = read.version + i64::from(workflow.definition_differs(&read));
        workflow.updated_at = now();
        let read_version = read.version;
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
        let _span = D::span("workflows.delete");
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        if let Some(json) = dialect::claim_idempotency::<D>(&mut *tx, tenant, key).await? {
            return replayed(&json);
        }
        let workflow = Self::load_locked(&mut *tx, tenant, id, LOCK_DELETE).await?;
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
        let _span = D::span("workflows.record_execution");
        let report = ExecutionReport { workflow_id, execution_id: execution_id.to_owned(), succeeded };
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        let recorded = Self::record_in(&mut *tx, tenant, std::slice::from_ref(&report)).await?;
        let Some(recorded) = recorded.into_iter().next() else {
            return Err(ServiceError::internal(anyhow::anyhow!("one report recorded without an outcome")));
        };
        let recorded = recorded?;
        tx.commit().await?;
        Ok(recorded)
    }

    async fn record_executions(
        &self,
        tenant: &str,
        reports: &[ExecutionReport],
    ) -> ServiceResult<Vec<ServiceResult<RecordedExecution>>> {
        let _span = D::span("workflows.record_executions");
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        let recorded = Self::record_in(&mut *tx, tenant, reports).await?;
        tx.commit().await?;
        Ok(recorded)
    }

    async fn import(&self, w: &Workflow, dry_run: bool) -> ServiceResult<ImportApplied> {
        let _span = D::span("workflows.import");
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        let owner: Option<(String, bool)> = sqlx::query::<D::Db>(sqlx::AssertSqlSafe(format!(
            "SELECT tenant_id, is_template FROM workflows WHERE id = $1{}",
            if D::LOCK.is_empty() { "" } else { " FOR NO KEY UPDATE" }
        )))
        .arg(SqlUuid(w.id))
        .fetch_optional_as(&mut *tx)
        .await?;
        let applied = match owner {
            // The platform's rows have ids of their own: a clash with the library is not the same
            // workflow, and a template is nobody's to overwrite.
            Some((_, true)) => ImportApplied::Refused("id: already the id of a built-in template".into()),
            Some((owner, false)) if owner != w.tenant_id => {
                ImportApplied::Refused("id: already the id of another tenant's workflow".into())
            }
            None => {
                Self::insert(&mut *tx, w, "").await?;
                if w.execution_count > 0 {
                    Self::write_statistics(&mut *tx, w).await?;
                }
                ImportApplied::Created
            }
            Some(_) => {
                let mut stored = Self::load_locked(&mut *tx, &w.tenant_id, w.id, LOCK_NONE).await?;
                let mut changed = false;
                if stored.definition_differs(w) || stored.status != w.status {
                    let read = stored.clone();
                    (stored.name, stored.description, stored.category, stored.config, stored.status) =
                        (w.name.clone(), w.description.clone(), w.category, w.config.clone(), w.status);
                    // As any change: a new version only for a new definition, not for a status.
                    stored.version = read.version + i64::from(stored.definition_differs(&read));
                    stored.updated_at = now();
                    Self::update(&mut *tx, &stored, read.version).await?;
                    changed = true;
                }
                if (stored.execution_count, stored.success_count) != (w.execution_count, w.success_count) {
                    Self::write_statistics(&mut *tx, w).await?;
                    changed = true;
                }
                if changed { ImportApplied::Updated } else { ImportApplied::Unchanged }
            }
        };
        if dry_run || matches!(applied, ImportApplied::Refused(_)) {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
        }
        Ok(applied)
    }

    async fn expire_idempotency_keys(&self, before: DateTime<Utc>, limit: i64) -> ServiceResult<u64> {
        dialect::expire_idempotency::<D>(&self.pool, before, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{WorkflowConfig, templates};
    use crate::storage::{POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS};

    fn new_workflow(name: &str) -> NewWorkflow {
        let template = &templates::library(Utc::now())[0].workflow;
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
        assert_eq!(repo.expire_idempotency_keys(an_hour_ago, 100).await.unwrap(), 0, "a young key is kept");
        let in_an_hour = Utc::now() + chrono::Duration::hours(1);
        assert_eq!(repo.expire_idempotency_keys(in_an_hour, 100).await.unwrap(), 1);

        let after_expiry = repo.create("tenant-a", new_workflow("Once"), Some(&key)).await.unwrap();
        assert_ne!(after_expiry.id, first.id);
    }

    /// A release's template changes reach an existing database: changed templates get a new
    /// version and keep their statistics; an unchanged library changes nothing.
    async fn template_changes_reach_an_existing_database(repo: &dyn WorkflowRepository) {
        let library = templates::library(now());
        assert_eq!(repo.seed_templates(&library).await.unwrap(), SeedOutcome { inserted: 11, updated: 0 });
        assert_eq!(repo.seed_templates(&library).await.unwrap(), SeedOutcome::default(), "a restart changes nothing");
        let counted = repo.record_execution("tenant-a", library[0].workflow.id, "exec-1", true).await.unwrap();
        assert!(counted.counted);

        // A change without a new revision is no release of it: nothing happens.
        let mut next_release = templates::library(now());
        next_release[0].workflow.description = "A better description".into();
        next_release[0].workflow.config.steps[0].prompt = "A better prompt for {input}".into();
        assert_eq!(repo.seed_templates(&next_release).await.unwrap(), SeedOutcome::default());
        next_release[0].revision += 1;
        // A revision that changes nothing of the definition only records the revision.
        next_release[1].revision += 1;
        assert_eq!(repo.seed_templates(&next_release).await.unwrap(), SeedOutcome { inserted: 0, updated: 1 });
        let updated = repo.get("tenant-a", library[0].workflow.id).await.unwrap();
        assert_eq!(updated.description, "A better description");
        assert_eq!(updated.config, next_release[0].workflow.config);
        assert_eq!(updated.version, 2);
        assert_eq!((updated.execution_count, updated.success_count), (1, 1), "statistics stay");
        assert_eq!(repo.get("tenant-a", library[1].workflow.id).await.unwrap().version, 1, "the others are untouched");
        assert_eq!(repo.seed_templates(&next_release).await.unwrap(), SeedOutcome::default());
        // The previous release, still running during a rolling update, undoes nothing.
        assert_eq!(repo.seed_templates(&library).await.unwrap(), SeedOutcome::default());
        assert_eq!(repo.get("tenant-a", library[0].workflow.id).await.unwrap(), updated);
        // Two replicas of the next release start at once: one of them updates, once.
        let mut third = next_release.clone();
        third[0].revision += 1;
        third[0].workflow.name = "A renamed template".into();
        let (a, b) = tokio::join!(repo.seed_templates(&third), repo.seed_templates(&third));
        assert_eq!(a.unwrap().updated + b.unwrap().updated, 1);
        assert_eq!(repo.get("tenant-a", library[0].workflow.id).await.unwrap().version, 3);
    }

    /// Statistics are per tenant: a template's, as each tenant reads them, are its own; a
    /// tenant's own workflow counts its executions, each once; another tenant's workflow is
    /// NOT_FOUND and counts nothing. Every read carries the reader's figures.
    async fn statistics_are_per_tenant(repo: &dyn WorkflowRepository) {
        let library = templates::library(now());
        repo.seed_templates(&library).await.unwrap();
        let template = library[0].workflow.id;
        let record = |tenant: &'static str, execution: &'static str, succeeded: bool| {
            repo.record_execution(tenant, template, execution, succeeded)
        };
        let a1 = record("tenant-a", "a-1", true).await.unwrap();
        assert_eq!((a1.counted, a1.workflow.execution_count, a1.workflow.success_count), (true, 1, 1));
        let a2 = record("tenant-a", "a-2", false).await.unwrap();
        assert_eq!((a2.workflow.execution_count, a2.workflow.success_count), (2, 1));
        let b1 = record("tenant-b", "b-1", false).await.unwrap();
        assert_eq!((b1.counted, b1.workflow.execution_count, b1.workflow.success_count), (true, 1, 0), "B's own");
        let replay = record("tenant-a", "a-1", true).await.unwrap();
        assert_eq!((replay.counted, replay.workflow.execution_count, replay.workflow.success_count), (false, 2, 1));
        // An execution belongs to one tenant: another's report of its id counts nothing.
        let by_b = record("tenant-b", "a-2", true).await.unwrap_err();
        assert!(matches!(by_b, ServiceError::AlreadyExists(_)), "{by_b:?}");

        let counts = |w: &Workflow| (w.execution_count, w.success_count);
        assert_eq!(counts(&repo.get("tenant-a", template).await.unwrap()), (2, 1));
        assert_eq!(counts(&repo.get("tenant-b", template).await.unwrap()), (1, 0));
        assert_eq!(counts(&repo.get("tenant-c", template).await.unwrap()), (0, 0), "none of its own");
        let page = &PageRequest::parse(50, "", String::new()).unwrap();
        let listed = |tenant: &'static str| async move {
            let all = repo.list(tenant, &WorkflowFilter::default(), page).await.unwrap();
            all.iter().find(|w| w.id == template).map(counts).unwrap()
        };
        assert_eq!((listed("tenant-a").await, listed("tenant-b").await), ((2, 1), (1, 0)));

        // A tenant's own workflow: its executions only; another tenant cannot count on it.
        let own = repo.create("tenant-a", new_workflow("Own"), None).await.unwrap();
        repo.record_execution("tenant-a", own.id, "own-1", true).await.unwrap();
        let foreign = repo.record_execution("tenant-b", own.id, "forged-1", true).await.unwrap_err();
        assert!(matches!(foreign, ServiceError::NotFound(_)), "{foreign:?}");
        assert_eq!(counts(&repo.get("tenant-a", own.id).await.unwrap()), (1, 1));
        // A change of the definition answers, and keeps, the owner's figures.
        let renamed = repo
            .mutate(
                "tenant-a",
                own.id,
                None,
                Box::new(|w: &mut Workflow| {
                    w.name = "Own, renamed".into();
                    Ok(())
                }),
            )
            .await
            .unwrap();
        assert_eq!(counts(&renamed), (1, 1));
        // The template library's seeding keeps every tenant's statistics.
        let mut next_release = templates::library(now());
        next_release[0].workflow.description = "Changed".into();
        next_release[0].revision += 1;
        assert_eq!(repo.seed_templates(&next_release).await.unwrap().updated, 1);
        assert_eq!(counts(&repo.get("tenant-a", template).await.unwrap()), (2, 1));
        assert_eq!(counts(&repo.get("tenant-b", template).await.unwrap()), (1, 0));
    }

    /// Tenants report executions on one template at once, each execution by three racing
    /// reporters: each is counted once, in its tenant's statistics.
    async fn concurrent_reports_of_tenants_on_a_template_count_once(repo: &dyn WorkflowRepository) {
        let library = templates::library(now());
        repo.seed_templates(&library).await.unwrap();
        let template = library[0].workflow.id;
        let reporter = |tenant: &'static str| async move {
            let mut counted = 0;
            for n in 0..20 {
                let execution = format!("{tenant}-{n}");
                let recorded = repo.record_execution(tenant, template, &execution, n % 4 != 0).await.unwrap();
                assert!(recorded.workflow.execution_count <= 20, "{recorded:?}");
                counted += usize::from(recorded.counted);
            }
            counted
        };
        let counted = tokio::join!(
            reporter("tenant-a"),
            reporter("tenant-b"),
            reporter("tenant-a"),
            reporter("tenant-b"),
            reporter("tenant-a"),
            reporter("tenant-b"),
        );
        assert_eq!(counted.0 + counted.2 + counted.4, 20, "each of A's executions counted by one report");
        assert_eq!(counted.1 + counted.3 + counted.5, 20);
        for tenant in ["tenant-a", "tenant-b"] {
            let read = repo.get(tenant, template).await.unwrap();
            assert_eq!((read.execution_count, read.success_count), (20, 15), "{tenant}");
        }
    }

    fn report(workflow_id: Uuid, execution_id: &str, succeeded: bool) -> ExecutionReport {
        ExecutionReport { workflow_id, execution_id: execution_id.into(), succeeded }
    }

    /// A batch counts each execution once (duplicates within it too) in the tenant's statistics,
    /// answers per report in order, fails only the reports it cannot count, and ends with the
    /// statistics the same reports sent one by one make.
    async fn batches_count_like_single_reports(repo: &dyn WorkflowRepository) {
        let library = templates::library(now());
        repo.seed_templates(&library).await.unwrap();
        let template = library[0].workflow.id;
        let own = repo.create("tenant-a", new_workflow("Own"), None).await.unwrap().id;
        let of_b = repo.create("tenant-b", new_workflow("B's"), None).await.unwrap().id;
        let unknown = Uuid::now_v7();
        assert!(repo.record_executions("tenant-a", &[]).await.unwrap().is_empty());

        let first = [
            report(template, "e-1", true),
            report(own, "e-2", false),
            report(template, "e-3", false),
            report(template, "e-1", true),
            report(unknown, "e-4", true),
            report(of_b, "e-5", true),
            report(own, "e-6", true),
        ];
        let answered = repo.record_executions("tenant-a", &first).await.unwrap();
        let figures = |outcome: &ServiceResult<RecordedExecution>| match outcome {
            Ok(r) => (r.counted, r.workflow.execution_count, r.workflow.success_count),
            Err(e) => panic!("{e:?}"),
        };
        assert_eq!(answered.len(), first.len());
        assert_eq!(figures(&answered[0]), (true, 2, 1), "the template's figures after the batch");
        assert_eq!(figures(&answered[1]), (true, 2, 1));
        assert_eq!(figures(&answered[2]), (true, 2, 1));
        assert_eq!(figures(&answered[3]), (false, 2, 1), "a duplicate within the batch counts once");
        assert!(matches!(answered[4], Err(ServiceError::NotFound(_))), "{:?}", answered[4]);
        assert!(matches!(answered[5], Err(ServiceError::NotFound(_))), "another tenant's: {:?}", answered[5]);
        assert_eq!(figures(&answered[6]), (true, 2, 1));
        assert_eq!(answered[0].as_ref().unwrap().workflow.id, template);
        assert_eq!(answered[1].as_ref().unwrap().workflow.id, own);

        // A later batch: repeats are counted=false with the current figures; an execution of
        // another workflow, or reported by another tenant, is ALREADY_EXISTS; the rest count.
        let second = [report(template, "e-1", true), report(own, "e-3", true), report(template, "e-7", true)];
        let answered = repo.record_executions("tenant-a", &second).await.unwrap();
        assert_eq!(figures(&answered[0]), (false, 3, 2));
        assert!(matches!(answered[1], Err(ServiceError::AlreadyExists(_))), "{:?}", answered[1]);
        assert_eq!(figures(&answered[2]), (true, 3, 2));
        let by_b = repo.record_executions("tenant-b", &[report(template, "e-2", true)]).await.unwrap();
        assert!(matches!(by_b[0], Err(ServiceError::AlreadyExists(_))), "{:?}", by_b[0]);

        let counts = |w: Workflow| (w.execution_count, w.success_count);
        assert_eq!(counts(repo.get("tenant-a", template).await.unwrap()), (3, 2));
        assert_eq!(counts(repo.get("tenant-a", own).await.unwrap()), (2, 1));
        assert_eq!(counts(repo.get("tenant-b", template).await.unwrap()), (0, 0), "B's own figures");
        assert_eq!(counts(repo.get("tenant-b", of_b).await.unwrap()), (0, 0), "nothing counted on B's");

        // The same reports batched by tenant C and one by one by tenant D: the same outcomes
        // (counted or not, or the same error) and the same statistics.
        let outcome = |o: &ServiceResult<RecordedExecution>| match o {
            Ok(r) => format!("counted {}", r.counted),
            Err(e) => format!("{:?}", e.code()),
        };
        let mut by_c = Vec::new();
        let mut by_d = Vec::new();
        let of = |tenant: &str, batch: &[ExecutionReport]| -> Vec<ExecutionReport> {
            batch.iter().map(|r| report(r.workflow_id, &format!("{tenant}/{}", r.execution_id), r.succeeded)).collect()
        };
        for batch in [&first[..], &second[..]] {
            by_c.extend(repo.record_executions("tenant-c", &of("c", batch)).await.unwrap().iter().map(outcome));
            for r in of("d", batch) {
                by_d.push(outcome(
                    &repo.record_execution("tenant-d", r.workflow_id, &r.execution_id, r.succeeded).await,
                ));
            }
        }
        assert_eq!(by_c, by_d);
        assert_eq!(counts(repo.get("tenant-c", template).await.unwrap()), (3, 2));
        assert_eq!(counts(repo.get("tenant-d", template).await.unwrap()), (3, 2));
    }

    /// Batches racing on overlapping sets of executions over two workflows, each batch in its
    /// own order (as replicas redelivering what they claimed of one outbox), beside single
    /// reports: no deadlock, each execution counted once. (Counting each report's statistics
    /// right after inserting it, instead of after all the inserts, deadlocks here within a few
    /// rounds on PostgreSQL.)
    async fn concurrent_batches_count_once(repo: &dyn WorkflowRepository) {
        const ROUNDS: i64 = 12;
        let library = templates::library(now());
        repo.seed_templates(&library).await.unwrap();
        let (w1, w2) = (library[0].workflow.id, library[1].workflow.id);
        for round in 0..ROUNDS {
            let reports: Vec<ExecutionReport> = (0..40)
                .map(|n| report(if n % 2 == 0 { w1 } else { w2 }, &format!("{round}-{n}"), n % 4 != 1))
                .collect();
            // Batch k: two reports of every three from the k-th on, rotated by k, every other
            // reversed.
            let batches: Vec<Vec<ExecutionReport>> = (0..6)
                .map(|k| {
                    let mut batch: Vec<_> = reports.iter().skip(k).step_by(3).cloned().collect();
                    batch.extend(reports.iter().skip(k + 1).step_by(3).cloned());
                    let by = k % batch.len();
                    batch.rotate_left(by);
                    if k % 2 == 1 {
                        batch.reverse();
                    }
                    batch
                })
                .collect();
            let batch = |k: usize| {
                let batch = &batches[k];
                async move {
                    let answered = repo.record_executions("tenant-a", batch).await.unwrap();
                    answered.iter().filter(|r| r.as_ref().unwrap().counted).count()
                }
            };
            let singles = async {
                let mut counted = 0;
                for r in reports.iter().rev() {
                    let recorded = repo.record_execution("tenant-a", r.workflow_id, &r.execution_id, r.succeeded).await;
                    counted += usize::from(recorded.unwrap().counted);
                }
                counted
            };
            let counted = tokio::join!(batch(0), batch(1), batch(2), batch(3), batch(4), batch(5), singles);
            let all = counted.0 + counted.1 + counted.2 + counted.3 + counted.4 + counted.5 + counted.6;
            assert_eq!(all, 40, "each execution counted by one of its reports: {counted:?}");
        }
        let counts = |w: Workflow| (w.execution_count, w.success_count);
        assert_eq!(counts(repo.get("tenant-a", w1).await.unwrap()), (20 * ROUNDS, 20 * ROUNDS));
        assert_eq!(counts(repo.get("tenant-a", w2).await.unwrap()), (20 * ROUNDS, 10 * ROUNDS));
    }

    /// Rows as the code before per-tenant statistics wrote them (migrations before 0005 on
    /// PostgreSQL, 0004 on SQLite; portable SQL): a template counted for two tenants, with one
    /// more pooled execution than recorded ones; tenant A's workflows, one whose stored figures
    /// exceed its recorded executions, one whose agree, one never run; tenant B's.
    fn pooled_rows(config: &WorkflowConfig) -> String {
        let config = serde_json::to_string(config).unwrap().replace('\'', "''");
        let workflow = |id: &str, tenant: &str, (executions, successes): (i64, i64)| {
            format!(
                "INSERT INTO workflows (id, tenant_id, name, description, category, config, status, is_template, \
                 execution_count, success_count, version, created_at, updated_at, name_folded) VALUES \
                 ('{id}', '{tenant}', 'W {id}', '', 'content_generation', '{config}', 'active', {}, {executions}, \
                 {successes}, 1, '2026-03-02T09:00:00Z', '2026-03-02T09:00:00Z', 'w {id}');\n",
                if tenant.is_empty() { "TRUE" } else { "FALSE" }
            )
        };
        let execution = |id: &str, workflow: &str, tenant: &str, succeeded: bool| {
            format!(
                "INSERT INTO workflow_executions (execution_id, workflow_id, tenant_id, succeeded, recorded_at) \
                 VALUES ('{id}', '{workflow}', '{tenant}', {}, '2026-03-02T09:30:00Z');\n",
                if succeeded { "TRUE" } else { "FALSE" }
            )
        };
        [
            workflow(MIGRATED_TEMPLATE, "", (4, 3)),
            execution("t-a1", MIGRATED_TEMPLATE, "tenant-a", true),
            execution("t-a2", MIGRATED_TEMPLATE, "tenant-a", false),
            execution("t-b1", MIGRATED_TEMPLATE, "tenant-b", true),
            workflow(MIGRATED_MORE_STORED, "tenant-a", (5, 4)),
            execution("m-1", MIGRATED_MORE_STORED, "tenant-a", true),
            execution("m-2", MIGRATED_MORE_STORED, "tenant-a", true),
            execution("m-3", MIGRATED_MORE_STORED, "tenant-a", false),
            workflow(MIGRATED_AGREEING, "tenant-a", (2, 1)),
            execution("g-1", MIGRATED_AGREEING, "tenant-a", true),
            execution("g-2", MIGRATED_AGREEING, "tenant-a", false),
            workflow(MIGRATED_NEVER_RUN, "tenant-a", (0, 0)),
            workflow(MIGRATED_OF_B, "tenant-b", (1, 0)),
            execution("b-1", MIGRATED_OF_B, "tenant-b", false),
        ]
        .concat()
    }

    const MIGRATED_TEMPLATE: &str = "0190a0a0-0000-7000-8000-000000000001";
    const MIGRATED_MORE_STORED: &str = "0190a0a0-0000-7000-8000-000000000002";
    const MIGRATED_AGREEING: &str = "0190a0a0-0000-7000-8000-000000000003";
    const MIGRATED_NEVER_RUN: &str = "0190a0a0-0000-7000-8000-000000000004";
    const MIGRATED_OF_B: &str = "0190a0a0-0000-7000-8000-000000000005";

    /// After the migration, the rows of [`pooled_rows`] read per tenant, with no count lost, and
    /// counting goes on exactly once.
    async fn pooled_statistics_were_migrated(repo: &dyn WorkflowRepository) {
        let id = |s: &str| Uuid::parse_str(s).unwrap();
        let counts = |tenant: &'static str, workflow: &'static str| async move {
            let w = repo.get(tenant, id(workflow)).await.unwrap();
            (w.execution_count, w.success_count)
        };
        // The template: each tenant its recorded executions; the pooled figure's unrecorded
        // rest kept under the library's tenant, read by none: 2 + 1 + 1 = 4, 1 + 1 + 1 = 3.
        assert_eq!(counts("tenant-a", MIGRATED_TEMPLATE).await, (2, 1));
        assert_eq!(counts("tenant-b", MIGRATED_TEMPLATE).await, (1, 1));
        assert_eq!(counts("tenant-c", MIGRATED_TEMPLATE).await, (0, 0));
        assert_eq!(counts("", MIGRATED_TEMPLATE).await, (1, 1));
        // Own workflows: the stored figures where larger than the recorded, else the recorded.
        assert_eq!(counts("tenant-a", MIGRATED_MORE_STORED).await, (5, 4));
        assert_eq!(counts("tenant-a", MIGRATED_AGREEING).await, (2, 1));
        assert_eq!(counts("tenant-a", MIGRATED_NEVER_RUN).await, (0, 0));
        assert_eq!(counts("tenant-b", MIGRATED_OF_B).await, (1, 0));
        assert!(matches!(repo.get("tenant-a", id(MIGRATED_OF_B)).await, Err(ServiceError::NotFound(_))));

        // An execution counted before is still known; new ones count on top, per tenant.
        let again = repo.record_execution("tenant-a", id(MIGRATED_MORE_STORED), "m-1", true).await.unwrap();
        assert_eq!((again.counted, again.workflow.execution_count), (false, 5));
        let more = repo.record_execution("tenant-a", id(MIGRATED_MORE_STORED), "m-4", true).await.unwrap();
        assert_eq!((more.counted, more.workflow.execution_count, more.workflow.success_count), (true, 6, 5));
        let on_template = repo.record_execution("tenant-b", id(MIGRATED_TEMPLATE), "t-b2", false).await.unwrap();
        assert_eq!((on_template.workflow.execution_count, on_template.workflow.success_count), (2, 1));
        assert_eq!(counts("tenant-a", MIGRATED_TEMPLATE).await, (2, 1));
        // The definitions are intact.
        let template = repo.get("tenant-a", id(MIGRATED_TEMPLATE)).await.unwrap();
        assert!(template.is_template && template.tenant_id.is_empty(), "{template:?}");
        assert_eq!(template.config, templates::library(now())[0].workflow.config);
        let page = PageRequest::parse(50, "", String::new()).unwrap();
        let found = WorkflowFilter { name_contains: "W 0190".into(), ..Default::default() };
        assert_eq!(repo.list("tenant-a", &found, &page).await.unwrap().len(), 4, "A's three and the template");
        // The rebuilt table is still what the executions reference: deleting a workflow
        // deletes its counted executions, whose ids are then free.
        repo.delete("tenant-a", id(MIGRATED_AGREEING), None, Box::new(|_| Ok(()))).await.unwrap();
        let reused = repo.record_execution("tenant-a", id(MIGRATED_NEVER_RUN), "g-1", true).await.unwrap();
        assert_eq!((reused.counted, reused.workflow.execution_count), (true, 1));
    }

    /// The migration before per-tenant statistics, per backend.
    const POSTGRES_BEFORE_STATISTICS: i64 = 4;
    const SQLITE_BEFORE_STATISTICS: i64 = 3;

    type Scenario =
        for<'a> fn(&'a dyn WorkflowRepository) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

    async fn on_sqlite(scenario: Scenario) {
        on_sqlite_from(None, scenario).await;
    }

    /// On an in-memory database migrated to the end; with `before`, migrated to `before.0`, then
    /// given the SQL `before.1`, then migrated to the end.
    async fn on_sqlite_from(before: Option<(i64, String)>, scenario: Scenario) {
        let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await.unwrap();
        if let Some((version, rows)) = before {
            SQLITE_MIGRATIONS.run_to(version, &pool).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(rows)).execute(&pool).await.unwrap();
        }
        SQLITE_MIGRATIONS.run(&pool).await.unwrap();
        scenario(&SqliteWorkflowRepository::new(pool.into())).await;
    }

    async fn on_postgres(scenario: Scenario) {
        on_postgres_from(None, scenario).await;
    }

    /// On a database of its own, created on the server `TEST_DATABASE_URL` names (the local
    /// server by default, as the end-to-end tests use) and dropped afterwards; migrated as
    /// [`on_sqlite_from`] says.
    async fn on_postgres_from(before: Option<(i64, String)>, scenario: Scenario) {
        let admin_url = std::env::var("TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let admin = sqlx::PgPool::connect(&admin_url).await.unwrap();
        let name = format!("engarde_unit_{}", Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await.unwrap();
        let base = admin_url.rsplit_once('/').map_or(admin_url.as_str(), |(base, _)| base);
        let pool = sqlx::PgPool::connect(&format!("{base}/{name}")).await.unwrap();
        // Run apart, so that the database is dropped even when an assertion fails.
        let outcome = tokio::spawn({
            let pool = pool.clone();
            async move {
                if let Some((version, rows)) = before {
                    POSTGRES_MIGRATIONS.run_to(version, &pool).await.unwrap();
                    sqlx::raw_sql(sqlx::AssertSqlSafe(rows)).execute(&pool).await.unwrap();
                }
                POSTGRES_MIGRATIONS.run(&pool).await.unwrap();
                scenario(&PostgresWorkflowRepository::new(pool.into())).await
            }
        })
        .await;
        pool.close().await;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name}"))).execute(&admin).await.unwrap();
        if let Err(failed) = outcome {
            std::panic::resume_unwind(failed.into_panic());
        }
    }

    #[tokio::test]
    async fn statistics_are_per_tenant_on_sqlite() {
        on_sqlite(|repo| Box::pin(statistics_are_per_tenant(repo))).await;
    }

    #[tokio::test]
    async fn statistics_are_per_tenant_on_postgres() {
        on_postgres(|repo| Box::pin(statistics_are_per_tenant(repo))).await;
    }

    #[tokio::test]
    async fn concurrent_reports_of_tenants_on_a_template_count_once_on_sqlite() {
        on_sqlite(|repo| Box::pin(concurrent_reports_of_tenants_on_a_template_count_once(repo))).await;
    }

    #[tokio::test]
    async fn concurrent_reports_of_tenants_on_a_template_count_once_on_postgres() {
        on_postgres(|repo| Box::pin(concurrent_reports_of_tenants_on_a_template_count_once(repo))).await;
    }

    #[tokio::test]
    async fn batches_count_like_single_reports_on_sqlite() {
        on_sqlite(|repo| Box::pin(batches_count_like_single_reports(repo))).await;
    }

    #[tokio::test]
    async fn batches_count_like_single_reports_on_postgres() {
        on_postgres(|repo| Box::pin(batches_count_like_single_reports(repo))).await;
    }

    #[tokio::test]
    async fn concurrent_batches_count_once_on_sqlite() {
        on_sqlite(|repo| Box::pin(concurrent_batches_count_once(repo))).await;
    }

    #[tokio::test]
    async fn concurrent_batches_count_once_on_postgres() {
        on_postgres(|repo| Box::pin(concurrent_batches_count_once(repo))).await;
    }

    #[tokio::test]
    async fn pooled_statistics_migrate_per_tenant_losing_none_on_sqlite() {
        let rows = pooled_rows(&templates::library(now())[0].workflow.config);
        on_sqlite_from(Some((SQLITE_BEFORE_STATISTICS, rows)), |repo| Box::pin(pooled_statistics_were_migrated(repo)))
            .await;
    }

    #[tokio::test]
    async fn pooled_statistics_migrate_per_tenant_losing_none_on_postgres() {
        let rows = pooled_rows(&templates::library(now())[0].workflow.config);
        on_postgres_from(Some((POSTGRES_BEFORE_STATISTICS, rows)), |repo| {
            Box::pin(pooled_statistics_were_migrated(repo))
        })
        .await;
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
