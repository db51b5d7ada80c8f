//! [`AgentRepository`] in SQL both databases accept, written once over a [`Dialect`].
//!
//! Where the databases differ the dialect says so: PostgreSQL locks the row it is about to change
//! (`FOR UPDATE`); SQLite takes its single write lock up front (`BEGIN IMMEDIATE`).

use std::collections::HashSet;
use std::marker::PhantomData;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use engarde::kit::error::{ServiceError, ServiceResult};
use engarde::kit::idempotency::{IdempotencyKey, judge_replay};
use engarde::kit::pagination::PageRequest;
use sqlx::types::Json;
use uuid::Uuid;

use crate::domain::provisioning::{Candidate, ProvisionOutcome, SkipReason, Skipped};
use crate::domain::{Agent, AgentConfig, AgentFilter, NewAgent, now};
use crate::storage::row::{AgentRow, COLUMNS, SnapshotColumns};
use crate::storage::{AgentRepository, Answer, DeleteCheck, Mutated, Mutation, replayed};
use engarde::kit::dialect::{self, BindKeyset, Dialect, SqlUuid};

/// A connection of the dialect's database.
type Conn<D> = <<D as Dialect>::Db as sqlx::Database>::Connection;

/// The agent repository of a dialect.
pub struct SqlAgentRepository<D: Dialect> {
    pool: sqlx::Pool<D::Db>,
    dialect: PhantomData<D>,
}

pub type PostgresAgentRepository = SqlAgentRepository<dialect::Postgres>;
pub type SqliteAgentRepository = SqlAgentRepository<dialect::Sqlite>;

impl<D: Dialect> SqlAgentRepository<D> {
    pub fn new(pool: sqlx::Pool<D::Db>) -> Self {
        Self { pool, dialect: PhantomData }
    }
}

fn not_found(id: Uuid) -> ServiceError {
    ServiceError::not_found(format!("agent {id}"))
}

impl<D> SqlAgentRepository<D>
where
    D: Dialect,
    for<'c> &'c mut Conn<D>: sqlx::Executor<'c, Database = D::Db>,
    <D::Db as sqlx::Database>::Arguments: sqlx::IntoArguments<D::Db>,
    for<'a> &'a str: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> String: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> i64: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> f64: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> bool: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> SqlUuid: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> Option<SqlUuid>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> Vec<u8>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> DateTime<Utc>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> Option<&'a str>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> Option<String>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> Option<i64>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> Option<Vec<u8>>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> Json<&'a AgentConfig>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> Json<&'a Vec<String>>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'r> AgentRow: sqlx::FromRow<'r, <D::Db as sqlx::Database>::Row>,
    for<'r> (SqlUuid,): sqlx::FromRow<'r, <D::Db as sqlx::Database>::Row>,
    for<'r> (String, Option<String>): sqlx::FromRow<'r, <D::Db as sqlx::Database>::Row>,
{
    /// The tenant's agent, locked for the rest of the transaction.
    async fn load_for_update(conn: &mut Conn<D>, tenant: &str, id: Uuid) -> ServiceResult<Agent> {
        let sql = format!("SELECT {COLUMNS} FROM agents WHERE id = $1 AND tenant_id = $2{}", D::LOCK);
        let row: Option<AgentRow> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(SqlUuid(id)).bind(tenant).fetch_optional(&mut *conn).await?;
        row.ok_or_else(|| not_found(id))?.try_into()
    }

    async fn insert_agent(conn: &mut Conn<D>, a: &Agent) -> ServiceResult<()> {
        let snapshot = SnapshotColumns::of(a.snapshot.as_ref());
        let sql = format!(
            "INSERT INTO agents ({COLUMNS}, scheduled) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
             $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26)"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(SqlUuid(a.id))
            .bind(&a.tenant_id)
            .bind(&a.name)
            .bind(&a.description)
            .bind(a.agent_type.as_str())
            .bind(a.status.as_str())
            .bind(&a.status_reason)
            .bind(&a.langflow_workflow_id)
            .bind(&a.langflow_deployment_id)
            .bind(snapshot.workflow_id)
            .bind(snapshot.version)
            .bind(snapshot.name)
            .bind(snapshot.category)
            .bind(snapshot.config)
            .bind(Json(&a.configuration))
            .bind(Json(&a.capabilities))
            .bind(a.total_executions)
            .bind(a.successful_executions)
            .bind(a.average_response_time_ms)
            .bind(a.version)
            .bind(a.created_at)
            .bind(a.updated_at)
            .bind(a.flow_origin.as_str())
            .bind(a.feedback_count)
            .bind(a.feedback_score_sum)
            .bind(snapshot.scheduled)
            .execute(&mut *conn)
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
        let inserted = sqlx::query(
            "INSERT INTO provisioned_workflows (tenant_id, workflow_id, agent_id, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, workflow_id) DO NOTHING",
        )
        .bind(tenant)
        .bind(SqlUuid(workflow_id))
        .bind(SqlUuid(agent_id))
        .bind(now())
        .execute(&mut *conn)
        .await?;
        Ok(D::rows_affected(&inserted) == 1)
    }
}

#[async_trait]
impl<D> AgentRepository for SqlAgentRepository<D>
where
    D: Dialect,
    for<'c> &'c mut Conn<D>: sqlx::Executor<'c, Database = D::Db>,
    <D::Db as sqlx::Database>::Arguments: sqlx::IntoArguments<D::Db>,
    for<'a> &'a str: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> String: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> i64: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> f64: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> bool: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> SqlUuid: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> Option<SqlUuid>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> Vec<u8>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> DateTime<Utc>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> Option<&'a str>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> Option<String>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> Option<i64>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> Option<Vec<u8>>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> Json<&'a AgentConfig>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> Json<&'a Vec<String>>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'r> AgentRow: sqlx::FromRow<'r, <D::Db as sqlx::Database>::Row>,
    for<'r> (SqlUuid,): sqlx::FromRow<'r, <D::Db as sqlx::Database>::Row>,
    for<'r> (String, Option<String>): sqlx::FromRow<'r, <D::Db as sqlx::Database>::Row>,
{
    async fn replay(&self, tenant: &str, key: Option<&IdempotencyKey>) -> ServiceResult<Option<String>> {
        let Some(key) = key else { return Ok(None) };
        let stored: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT fingerprint, response FROM idempotency_keys WHERE tenant_id = $1 AND request_id = $2",
        )
        .bind(tenant)
        .bind(&key.request_id)
        .fetch_optional(&self.pool)
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
        let sql = format!("SELECT {COLUMNS} FROM agents WHERE id = $1 AND tenant_id = $2");
        let row: Option<AgentRow> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(SqlUuid(id)).bind(tenant).fetch_optional(&self.pool).await?;
        row.ok_or_else(|| not_found(id))?.try_into()
    }

    async fn agent_exists(&self, id: Uuid) -> ServiceResult<bool> {
        let found: Option<(SqlUuid,)> =
            sqlx::query_as("SELECT id FROM agents WHERE id = $1").bind(SqlUuid(id)).fetch_optional(&self.pool).await?;
        Ok(found.is_some())
    }

    async fn list(&self, tenant: &str, filter: &AgentFilter, page: &PageRequest) -> ServiceResult<Vec<Agent>> {
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
        let rows: Vec<AgentRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(filter.agent_type.map(|t| t.as_str()).unwrap_or(""))
            .bind(filter.status.map(|s| s.as_str()).unwrap_or(""))
            .bind(filter.workflow_id.map(SqlUuid))
            .bind_keyset(page)?
            .bind(i64::from(page.size))
            .fetch_all(&self.pool)
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
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        if let Some(json) = dialect::claim_idempotency::<D>(&mut *tx, tenant, key).await? {
            return Ok(Mutated::Replayed(json));
        }
        let mut agent = Self::load_for_update(&mut *tx, tenant, id).await?;
        let read_version = agent.version;
        mutation(&mut agent)?;
        agent.version = read_version + 1;
        agent.updated_at = now();
        let snapshot = SnapshotColumns::of(agent.snapshot.as_ref());
        let updated = sqlx::query(
            "UPDATE agents SET name = $1, description = $2, agent_type = $3, status = $4, status_reason = $5, \
             langflow_workflow_id = $6, langflow_deployment_id = $7, source_workflow_id = $8, \
             source_workflow_version = $9, source_workflow_name = $10, source_workflow_category = $11, \
             source_workflow_config = $12, configuration = $13, capabilities = $14, version = $15, \
             updated_at = $16, flow_origin = $17, scheduled = $18 \
             WHERE id = $19 AND tenant_id = $20 AND version = $21",
        )
        .bind(&agent.name)
        .bind(&agent.description)
        .bind(agent.agent_type.as_str())
        .bind(agent.status.as_str())
        .bind(&agent.status_reason)
        .bind(&agent.langflow_workflow_id)
        .bind(&agent.langflow_deployment_id)
        .bind(snapshot.workflow_id)
        .bind(snapshot.version)
        .bind(snapshot.name)
        .bind(snapshot.category)
        .bind(snapshot.config)
        .bind(Json(&agent.configuration))
        .bind(Json(&agent.capabilities))
        .bind(agent.version)
        .bind(agent.updated_at)
        .bind(agent.flow_origin.as_str())
        .bind(snapshot.scheduled)
        .bind(SqlUuid(id))
        .bind(tenant)
        .bind(read_version)
        .execute(&mut *tx)
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
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        if let Some(json) = dialect::claim_idempotency::<D>(&mut *tx, tenant, key).await? {
            return replayed(&json);
        }
        let agent = Self::load_for_update(&mut *tx, tenant, id).await?;
        check(&agent)?;
        // Its claim (if it held one) goes with it, by the foreign key's cascade.
        sqlx::query("DELETE FROM agents WHERE id = $1 AND tenant_id = $2")
            .bind(SqlUuid(id))
            .bind(tenant)
            .execute(&mut *tx)
            .await?;
        if let Some(workflow_id) = agent.source_workflow_id() {
            // The workflow still has an agent if another was made from it: it keeps
            // the claim, so that provisioning does not make a duplicate.
            let heir: Option<(SqlUuid,)> = sqlx::query_as(
                "SELECT id FROM agents WHERE tenant_id = $1 AND source_workflow_id = $2 \
                 ORDER BY created_at, id LIMIT 1",
            )
            .bind(tenant)
            .bind(SqlUuid(workflow_id))
            .fetch_optional(&mut *tx)
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
        key: Option<&IdempotencyKey>,
    ) -> ServiceResult<ProvisionOutcome> {
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
        let outcome = ProvisionOutcome::new(created, skipped, false);
        dialect::complete_idempotency::<D::Db>(&mut *tx, tenant, key, &outcome).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    async fn provisioned(&self, tenant: &str, workflow_ids: &[Uuid]) -> ServiceResult<HashSet<Uuid>> {
        let rows: Vec<(SqlUuid,)> =
            sqlx::query_as("SELECT workflow_id FROM provisioned_workflows WHERE tenant_id = $1")
                .bind(tenant)
                .fetch_all(&self.pool)
                .await?;
        let wanted: HashSet<Uuid> = workflow_ids.iter().copied().collect();
        Ok(rows.into_iter().map(|(id,)| id.0).filter(|id| wanted.contains(id)).collect())
    }

    async fn expire_idempotency_keys(&self, before: chrono::DateTime<chrono::Utc>) -> ServiceResult<u64> {
        dialect::expire_idempotency::<D>(&self.pool, before).await
    }
}
