//! Agents: [`AgentRepository`], and its implementation in SQL both databases accept, written once
//! over a [`Dialect`].
//!
//! Where the databases differ the dialect says so: PostgreSQL locks the row it is about to change
//! (`FOR UPDATE`); SQLite takes its single write lock up front (`BEGIN IMMEDIATE`).

use std::collections::HashSet;
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use engarde::kit::error::{ServiceError, ServiceResult};
use engarde::kit::idempotency::{IdempotencyKey, judge_replay};
use engarde::kit::pagination::PageRequest;
use uuid::Uuid;

use super::{AgentDialect, json_strings, replayed};
use crate::domain::provisioning::{Candidate, ProvisionOutcome, ProvisionTarget, SkipReason, Skipped};
use crate::domain::{Agent, AgentFilter, NewAgent, now};
use crate::storage::row::{AgentRow, COLUMNS, SnapshotColumns};
use engarde::kit::dialect::{self, BindKeyset, Conn, Dialect, SqlDb, SqlQuery, SqlUuid, Statement};
use engarde::kit::warm_pool::WarmPool;

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

/// What importing one agent did (see [`AgentRepository::import`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportApplied {
    Created,
    Updated,
    Unchanged,
    /// Not imported, for this reason (the id is another tenant's agent's).
    Refused(String),
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

    /// One agent of the tenant as an execution runs it: its content and status as committed
    /// (by another process: as soon as the change is announced, see
    /// [`agent_cache`](super::agent_cache)), its statistics possibly older. Never for an answer
    /// that shows the agent.
    async fn get_for_run(&self, tenant: &str, id: Uuid) -> ServiceResult<Arc<Agent>> {
        self.get(tenant, id).await.map(Arc::new)
    }

    /// Agent `id` was changed by a write outside this repository (an execution's finish that
    /// moved it to ERROR): what [`AgentRepository::get_for_run`] answers next is read again.
    fn changed_elsewhere(&self, _id: Uuid) {}

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
    /// `pending` is what is still to be done with the created agents (stored in the answer).
    async fn provision(
        &self,
        tenant: &str,
        candidates: Vec<Candidate>,
        skipped: Vec<Skipped>,
        pending: Option<ProvisionTarget>,
        key: Option<&IdempotencyKey>,
    ) -> ServiceResult<ProvisionOutcome>;

    /// Replaces the stored answer of `key`, which an earlier transaction of the same call
    /// claimed and answered: for a call that finishes its work after that transaction.
    async fn restate(&self, tenant: &str, key: &IdempotencyKey, answer: serde_json::Value) -> ServiceResult<()>;

    /// Stores `answer` as the answer of `key`, for a call whose work is not one transaction (it
    /// spans Langflow). `Some(json)`: the key was answered before (a concurrent retry): that
    /// answer stands. ALREADY_EXISTS when the key was used for another request.
    async fn remember(
        &self,
        tenant: &str,
        key: &IdempotencyKey,
        answer: serde_json::Value,
    ) -> ServiceResult<Option<String>>;

    /// Which of `workflow_ids` the tenant has provisioned (for dry runs).
    async fn provisioned(&self, tenant: &str, workflow_ids: &[Uuid]) -> ServiceResult<HashSet<Uuid>>;

    /// Imports `agent` (an agent of the platform, with its id, tenant and statistics) in one
    /// transaction: created when its id is new (and its snapshot's workflow then counts as
    /// provisioned for the tenant); when the tenant already has it, what it says of itself is
    /// overwritten with a new version only if it differs, and its statistics only if they
    /// differ; refused when the id is another tenant's agent's. `dry_run` rolls back.
    async fn import(&self, agent: &Agent, dry_run: bool) -> ServiceResult<ImportApplied>;

    /// Forgets idempotency keys older than `before`.
    async fn expire_idempotency_keys(&self, before: chrono::DateTime<chrono::Utc>, limit: i64) -> ServiceResult<u64>;
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

/// The agent repository of a dialect.
pub(super) struct SqlAgentRepository<D: Dialect> {
    pool: WarmPool<D::Db>,
    dialect: PhantomData<D>,
}

pub(super) type PostgresAgentRepository = SqlAgentRepository<dialect::Postgres>;
pub(super) type SqliteAgentRepository = SqlAgentRepository<dialect::Sqlite>;

impl<D: Dialect> SqlAgentRepository<D> {
    pub fn new(pool: WarmPool<D::Db>) -> Self {
        Self { pool, dialect: PhantomData }
    }
}

fn not_found(id: Uuid) -> ServiceError {
    ServiceError::not_found(format!("agent {id}"))
}

/// Binds what an agent says of itself, from `name` to `capabilities` in [`COLUMNS`]' order, as
/// the next fourteen parameters: an insert and an update write them alike.
fn bind_content<'q, DB: SqlDb>(query: SqlQuery<'q, DB>, a: &Agent) -> SqlQuery<'q, DB> {
    let snapshot = SnapshotColumns::of(a.snapshot.as_ref());
    query
        .arg(&a.name)
        .arg(&a.description)
        .arg(a.agent_type.as_str())
        .arg(a.status.as_str())
        .arg(&a.status_reason)
        .arg(&a.langflow_workflow_id)
        .arg(&a.langflow_deployment_id)
        .arg(snapshot.workflow_id)
        .arg(snapshot.version)
        .arg(snapshot.name)
        .arg(snapshot.category)
        .arg(snapshot.config)
        .json(&a.configuration)
        .json(&a.capabilities)
}

impl<D: AgentDialect> SqlAgentRepository<D> {
    /// The tenant's agent, locked for the rest of the transaction.
    async fn load_for_update(conn: &mut Conn<D>, tenant: &str, id: Uuid) -> ServiceResult<Agent> {
        let sql = format!("SELECT {COLUMNS} FROM agents WHERE id = $1 AND tenant_id = $2{}", D::LOCK);
        let row: Option<AgentRow> = sqlx::query::<D::Db>(sqlx::AssertSqlSafe(sql))
            .arg(SqlUuid(id))
            .arg(tenant)
            .fetch_optional_as(&mut *conn)
            .await?;
        row.ok_or_else(|| not_found(id))?.try_into()
    }

    async fn insert_agent(conn: &mut Conn<D>, a: &Agent) -> ServiceResult<()> {
        let sql = format!(
            "INSERT INTO agents ({COLUMNS}, scheduled) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
             $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28)"
        );
        let insert = sqlx::query::<D::Db>(sqlx::AssertSqlSafe(sql)).arg(SqlUuid(a.id)).arg(&a.tenant_id);
        bind_content(insert, a)
            .arg(a.total_executions)
            .arg(a.successful_executions)
            .arg(a.average_response_time_ms)
            .arg(a.version)
            .arg(a.created_at)
            .arg(a.updated_at)
            .arg(a.flow_origin.as_str())
            .arg(a.feedback_count)
            .arg(a.feedback_score_sum)
            .arg(a.usage.prompt_tokens)
            .arg(a.usage.completion_tokens)
            .arg(SnapshotColumns::scheduled(a.snapshot.as_ref()))
            .run(&mut *conn)
            .await?;
        Ok(())
    }

    /// Claims `workflow_id` as provisioned by `agent_id`; false when it was claimed before
    /// (by this or a concurrent transaction: the primary key decides).
    async fn claim_workflow(
        conn: &mut Conn<D>,
        tenant: &str,
        workflow_id: Uuid,
        agent_id: Uuid,
    ) -> ServiceResult<bool> {
        let inserted = sqlx::query::<D::Db>(
            "INSERT INTO provisioned_workflows (tenant_id, workflow_id, agent_id, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, workflow_id) DO NOTHING",
        )
        .arg(tenant)
        .arg(SqlUuid(workflow_id))
        .arg(SqlUuid(agent_id))
        .arg(now())
        .run(&mut *conn)
        .await?;
        Ok(D::rows_affected(&inserted) == 1)
    }
}

#[async_trait]
impl<D: AgentDialect> AgentRepository for SqlAgentRepository<D> {
    async fn replay(&self, tenant: &str, key: Option<&IdempotencyKey>) -> ServiceResult<Option<String>> {
        let _span = D::span("agents.replay");
        let Some(key) = key else { return Ok(None) };
        let stored: Option<(String, Option<String>)> = sqlx::query::<D::Db>(
            "SELECT fingerprint, response FROM idempotency_keys WHERE tenant_id = $1 AND request_id = $2",
        )
        .arg(tenant)
        .arg(&key.request_id)
        .fetch_optional_as(&self.pool)
        .await?;
        match stored {
            // A conflict, or a finished request: what the writing call would answer.
            Some((fingerprint, response)) if fingerprint != key.fingerprint || response.is_some() => {
                judge_replay(key, &fingerprint, response).map(Some)
            }
            _ => Ok(None),
        }
    }

    async fn create(&self, tenant: &str, new: NewAgent, key: Option<&IdempotencyKey>) -> ServiceResult<Agent> {
        let _span = D::span("agents.create");
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        if let Some(json) = dialect::claim_idempotency::<D>(&mut *tx, tenant, key).await? {
            return replayed(&json);
        }
        let agent = new.into_draft(tenant, now());
        if let Some(workflow_id) = agent.source_workflow_id() {
            // Made explicitly, so made even when the workflow has agents; the claim
            // only records that it has one, for ProvisionAgents.
            Self::claim_workflow(&mut *tx, tenant, workflow_id, agent.id).await?;
        }
        Self::insert_agent(&mut *tx, &agent).await?;
        dialect::complete_idempotency::<D::Db>(&mut *tx, tenant, key, &agent).await?;
        tx.commit().await?;
        Ok(agent)
    }

    async fn get(&self, tenant: &str, id: Uuid) -> ServiceResult<Agent> {
        let _span = D::span("agents.get");
        let sql = format!("SELECT {COLUMNS} FROM agents WHERE id = $1 AND tenant_id = $2");
        let row: Option<AgentRow> = sqlx::query::<D::Db>(sqlx::AssertSqlSafe(sql))
            .arg(SqlUuid(id))
            .arg(tenant)
            .fetch_optional_as(&self.pool)
            .await?;
        row.ok_or_else(|| not_found(id))?.try_into()
    }

    async fn agent_exists(&self, id: Uuid) -> ServiceResult<bool> {
        let found: Option<(SqlUuid,)> = sqlx::query::<D::Db>("SELECT id FROM agents WHERE id = $1")
            .arg(SqlUuid(id))
            .fetch_optional_as(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    async fn list(&self, tenant: &str, filter: &AgentFilter, page: &PageRequest) -> ServiceResult<Vec<Agent>> {
        let _span = D::span("agents.list");
        // One static statement: an empty filter parameter matches everything.
        let sql = format!(
            "SELECT {COLUMNS} FROM agents \
             WHERE tenant_id = $1 \
               AND ($2 = '' OR agent_type = $2) \
               AND ($3 = '' OR status = $3) \
               AND ($4 IS NULL OR source_workflow_id = $4) \
               AND ($5 = 0 OR (created_at, id) > ($6, $7)) \
             ORDER BY created_at, id LIMIT $8"
        );
        let rows: Vec<AgentRow> = sqlx::query::<D::Db>(sqlx::AssertSqlSafe(sql))
            .arg(tenant)
            .arg(filter.agent_type.map(|t| t.as_str()).unwrap_or(""))
            .arg(filter.status.map(|s| s.as_str()).unwrap_or(""))
            .arg(filter.workflow_id.map(SqlUuid))
            .bind_keyset(page)?
            .arg(i64::from(page.size))
            .fetch_all_as(&self.pool)
            .await?;
        rows.into_iter().map(Agent::try_from).collect()
    }

    async fn mutate(
        &self,
        tenant: &str,
        id: Uuid,
        key: Option<&IdempotencyKey>,
        mutation: Mutation,
        answer: Answer,
    ) -> ServiceResult<Mutated> {
        let _span = D::span("agents.mutate");
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        if let Some(json) = dialect::claim_idempotency::<D>(&mut *tx, tenant, key).await? {
            return Ok(Mutated::Replayed(json));
        }
        let mut agent = Self::load_for_update(&mut *tx, tenant, id).await?;
        let read_version = agent.version;
        mutation(&mut agent)?;
        agent.version = read_version + 1;
        agent.updated_at = now();
        let scheduled = SnapshotColumns::scheduled(agent.snapshot.as_ref());
        let update = sqlx::query::<D::Db>(
            "UPDATE agents SET name = $1, description = $2, agent_type = $3, status = $4, status_reason = $5, \
             langflow_workflow_id = $6, langflow_deployment_id = $7, source_workflow_id = $8, \
             source_workflow_version = $9, source_workflow_name = $10, source_workflow_category = $11, \
             source_workflow_config = $12, configuration = $13, capabilities = $14, version = $15, \
             updated_at = $16, flow_origin = $17, scheduled = $18, next_tick_at = NULL \
             WHERE id = $19 AND tenant_id = $20 AND version = $21",
        );
        let updated = bind_content(update, &agent)
            .arg(agent.version)
            .arg(agent.updated_at)
            .arg(agent.flow_origin.as_str())
            .arg(scheduled)
            .arg(SqlUuid(id))
            .arg(tenant)
            .arg(read_version)
            .run(&mut *tx)
            .await?;
        if D::rows_affected(&updated) != 1 {
            return Err(ServiceError::Aborted(format!("agent {id} changed concurrently; read it again")));
        }
        let response = answer(&agent)?;
        dialect::complete_idempotency::<D::Db>(&mut *tx, tenant, key, &response).await?;
        tx.commit().await?;
        Ok(Mutated::Done(Box::new(agent)))
    }

    async fn delete(
        &self,
        tenant: &str,
        id: Uuid,
        key: Option<&IdempotencyKey>,
        check: DeleteCheck,
    ) -> ServiceResult<Uuid> {
        let _span = D::span("agents.delete");
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        if let Some(json) = dialect::claim_idempotency::<D>(&mut *tx, tenant, key).await? {
            return replayed(&json);
        }
        let agent = Self::load_for_update(&mut *tx, tenant, id).await?;
        check(&agent)?;
        // Its claim (if it held one) goes with it, by the foreign key's cascade.
        sqlx::query::<D::Db>("DELETE FROM agents WHERE id = $1 AND tenant_id = $2")
            .arg(SqlUuid(id))
            .arg(tenant)
            .run(&mut *tx)
            .await?;
        if let Some(workflow_id) = agent.source_workflow_id() {
            // The workflow still has an agent if another was made from it: it keeps
            // the claim, so that provisioning does not make a duplicate.
            let heir: Option<(SqlUuid,)> = sqlx::query::<D::Db>(
                "SELECT id FROM agents WHERE tenant_id = $1 AND source_workflow_id = $2 \
                 ORDER BY created_at, id LIMIT 1",
            )
            .arg(tenant)
            .arg(SqlUuid(workflow_id))
            .fetch_optional_as(&mut *tx)
            .await?;
            if let Some((heir,)) = heir {
                Self::claim_workflow(&mut *tx, tenant, workflow_id, heir.0).await?;
            }
        }
        dialect::complete_idempotency::<D::Db>(&mut *tx, tenant, key, &id).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn provision(
        &self,
        tenant: &str,
        candidates: Vec<Candidate>,
        mut skipped: Vec<Skipped>,
        pending: Option<ProvisionTarget>,
        key: Option<&IdempotencyKey>,
    ) -> ServiceResult<ProvisionOutcome> {
        let _span = D::span("agents.provision");
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        if let Some(json) = dialect::claim_idempotency::<D>(&mut *tx, tenant, key).await? {
            return replayed(&json);
        }
        let created_at = now();
        let mut created = Vec::new();
        for candidate in candidates {
            let agent = candidate.agent.into_draft(tenant, created_at);
            if Self::claim_workflow(&mut *tx, tenant, candidate.workflow_id, agent.id).await? {
                Self::insert_agent(&mut *tx, &agent).await?;
                created.push(agent);
            } else {
                skipped.push(Skipped {
                    workflow_id: candidate.workflow_id,
                    workflow_name: candidate.workflow_name,
                    reason: SkipReason::AlreadyHasAgent,
                    detail: String::new(),
                });
            }
        }
        let mut outcome = ProvisionOutcome::new(created, skipped, false);
        outcome.pending = pending.filter(|_| !outcome.created.is_empty());
        dialect::complete_idempotency::<D::Db>(&mut *tx, tenant, key, &outcome).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    async fn restate(&self, tenant: &str, key: &IdempotencyKey, answer: serde_json::Value) -> ServiceResult<()> {
        let _span = D::span("agents.restate");
        let mut conn = self.pool.acquire().await?;
        dialect::complete_idempotency::<D::Db>(&mut *conn, tenant, Some(key), &answer).await
    }

    async fn remember(
        &self,
        tenant: &str,
        key: &IdempotencyKey,
        answer: serde_json::Value,
    ) -> ServiceResult<Option<String>> {
        let _span = D::span("agents.remember");
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        if let Some(json) = dialect::claim_idempotency::<D>(&mut *tx, tenant, Some(key)).await? {
            return Ok(Some(json));
        }
        dialect::complete_idempotency::<D::Db>(&mut *tx, tenant, Some(key), &answer).await?;
        tx.commit().await?;
        Ok(None)
    }

    async fn provisioned(&self, tenant: &str, workflow_ids: &[Uuid]) -> ServiceResult<HashSet<Uuid>> {
        let _span = D::span("agents.provisioned");
        if workflow_ids.is_empty() {
            return Ok(HashSet::new());
        }
        // Only the claims asked about (by the claims' primary key), not every claim of the tenant:
        // every ProvisionAgents asks, before it makes any flow.
        let sql = format!(
            "SELECT workflow_id FROM provisioned_workflows WHERE workflow_id IN ({}) AND tenant_id = $2",
            D::JSON_UUIDS
        );
        let rows: Vec<(SqlUuid,)> = sqlx::query::<D::Db>(sqlx::AssertSqlSafe(sql))
            .arg(json_strings(workflow_ids))
            .arg(tenant)
            .fetch_all_as(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|(id,)| id.0).collect())
    }

    async fn import(&self, agent: &Agent, dry_run: bool) -> ServiceResult<ImportApplied> {
        let _span = D::span("agents.import");
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        let owner: Option<(String,)> =
            sqlx::query::<D::Db>(sqlx::AssertSqlSafe(format!("SELECT tenant_id FROM agents WHERE id = $1{}", D::LOCK)))
                .arg(SqlUuid(agent.id))
                .fetch_optional_as(&mut *tx)
                .await?;
        let applied = match owner {
            Some((owner,)) if owner != agent.tenant_id => {
                ImportApplied::Refused("id: already the id of another tenant's agent".into())
            }
            None => {
                Self::insert_agent(&mut *tx, agent).await?;
                if let Some(workflow_id) = agent.source_workflow_id() {
                    // So that ProvisionAgents makes no second agent of the same workflow.
                    Self::claim_workflow(&mut *tx, &agent.tenant_id, workflow_id, agent.id).await?;
                }
                ImportApplied::Created
            }
            Some(_) => {
                let stored = Self::load_for_update(&mut *tx, &agent.tenant_id, agent.id).await?;
                let content = |a: &Agent| {
                    (
                        (a.name.clone(), a.description.clone(), a.agent_type, a.status, a.status_reason.clone()),
                        (a.langflow_workflow_id.clone(), a.langflow_deployment_id.clone(), a.flow_origin),
                        (a.snapshot.clone(), a.configuration.clone(), a.capabilities.clone()),
                    )
                };
                let mut changed = false;
                if content(&stored) != content(agent) {
                    let mut next = agent.clone();
                    next.version = stored.version + 1;
                    next.updated_at = now();
                    let update = sqlx::query::<D::Db>(
                        "UPDATE agents SET name = $1, description = $2, agent_type = $3, status = $4, \
                         status_reason = $5, langflow_workflow_id = $6, langflow_deployment_id = $7, \
                         source_workflow_id = $8, source_workflow_version = $9, source_workflow_name = $10, \
                         source_workflow_category = $11, source_workflow_config = $12, configuration = $13, \
                         capabilities = $14, version = $15, updated_at = $16, flow_origin = $17, scheduled = $18, \
                         next_tick_at = NULL WHERE id = $19 AND tenant_id = $20 AND version = $21",
                    );
                    bind_content(update, &next)
                        .arg(next.version)
                        .arg(next.updated_at)
                        .arg(next.flow_origin.as_str())
                        .arg(SnapshotColumns::scheduled(next.snapshot.as_ref()))
                        .arg(SqlUuid(agent.id))
                        .arg(&agent.tenant_id)
                        .arg(stored.version)
                        .run(&mut *tx)
                        .await?;
                    changed = true;
                }
                let statistics = |a: &Agent| (a.total_executions, a.successful_executions, a.average_response_time_ms);
                if statistics(&stored) != statistics(agent) {
                    sqlx::query::<D::Db>(
                        "UPDATE agents SET total_executions = $1, successful_executions = $2, \
                         average_response_time_ms = $3 WHERE id = $4",
                    )
                    .arg(agent.total_executions)
                    .arg(agent.successful_executions)
                    .arg(agent.average_response_time_ms)
                    .arg(SqlUuid(agent.id))
                    .run(&mut *tx)
                    .await?;
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

    async fn expire_idempotency_keys(&self, before: chrono::DateTime<chrono::Utc>, limit: i64) -> ServiceResult<u64> {
        dialect::expire_idempotency::<D>(&self.pool, before, limit).await
    }
}
