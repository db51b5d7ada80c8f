//! Scheduled triggers: the agents that have them, and the claim of each tick (the first process
//! to insert (agent, tick) fires it).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use engarde::kit::dialect::{SqlUuid, Statement};
use engarde::kit::error::ServiceResult;
use uuid::Uuid;

use super::AgentDialect;
use super::run_store::{FINAL, SqlRunRepository};
use crate::domain::now;
use crate::domain::run::{NewRun, ScheduledAgent, TickOutcome, has_scheduled_trigger};

#[async_trait]
pub trait ScheduleRepository: Send + Sync {
    /// The ACTIVE agents (of every tenant) whose snapshot has scheduled triggers and whose next
    /// tick is due at `at`, or not worked out yet.
    async fn scheduled_agents(&self, at: DateTime<Utc>) -> ServiceResult<Vec<ScheduledAgent>>;

    /// The (tenant, workflow) of every ACTIVE agent marked scheduled, due or not.
    async fn scheduled_workflows(&self) -> ServiceResult<Vec<(String, Uuid)>>;

    /// Writes when each agent's next tick comes: (agent, its version as read, the tick). An
    /// agent changed since it was read is left alone (its change cleared the tick, so that the
    /// next pass works it out again).
    async fn set_next_ticks(&self, next: &[(Uuid, i64, DateTime<Utc>)]) -> ServiceResult<()>;

    /// Claims the agent's tick and, unless one of its runs is still going, creates `run` in the
    /// same transaction.
    async fn fire_tick(&self, agent_id: Uuid, tick: DateTime<Utc>, run: NewRun) -> ServiceResult<TickOutcome>;
}

/// An active agent with a schedule, as stored.
#[derive(sqlx::FromRow)]
pub(super) struct ScheduledRow {
    tenant_id: String,
    id: SqlUuid,
    source_workflow_id: SqlUuid,
    updated_at: DateTime<Utc>,
    version: i64,
    source_workflow_config: Vec<u8>,
    langflow_workflow_id: String,
}

#[async_trait]
impl<D: AgentDialect> ScheduleRepository for SqlRunRepository<D> {
    async fn scheduled_agents(&self, at: DateTime<Utc>) -> ServiceResult<Vec<ScheduledAgent>> {
        use engarde::proto::workflow::v1 as workflow_pb;
        use prost::Message as _;
        let rows: Vec<ScheduledRow> = sqlx::query::<D::Db>(
            "SELECT tenant_id, id, source_workflow_id, updated_at, version, source_workflow_config, \
             langflow_workflow_id FROM agents \
             WHERE status = 'active' AND scheduled = TRUE AND source_workflow_config IS NOT NULL \
             AND (next_tick_at IS NULL OR next_tick_at <= $1)",
        )
        .arg(at)
        .fetch_all_as(&self.pool)
        .await?;
        let mut agents = Vec::new();
        for ScheduledRow {
            tenant_id,
            id: SqlUuid(agent_id),
            source_workflow_id: SqlUuid(workflow_id),
            updated_at,
            version,
            source_workflow_config: config,
            langflow_workflow_id: flow,
        } in rows
        {
            let Ok(config) = workflow_pb::WorkflowConfig::decode(config.as_slice()) else {
                tracing::warn!(%agent_id, "agent with a corrupt snapshot: its schedules are ignored");
                continue;
            };
            if has_scheduled_trigger(&config) {
                agents.push(ScheduledAgent {
                    tenant_id,
                    agent_id,
                    workflow_id,
                    updated_at,
                    version,
                    config,
                    has_flow: !flow.is_empty(),
                });
            } else {
                // A row from before the column was written: set it right once, unless
                // the agent has changed since it was read (that change wrote it).
                sqlx::query::<D::Db>("UPDATE agents SET scheduled = FALSE WHERE id = $1 AND version = $2")
                    .arg(SqlUuid(agent_id))
                    .arg(version)
                    .run(&self.pool)
                    .await?;
            }
        }
        Ok(agents)
    }

    async fn scheduled_workflows(&self) -> ServiceResult<Vec<(String, Uuid)>> {
        let rows: Vec<(SqlUuid, String)> = sqlx::query::<D::Db>(
            "SELECT DISTINCT source_workflow_id, tenant_id FROM agents \
             WHERE status = 'active' AND scheduled = TRUE AND source_workflow_id IS NOT NULL",
        )
        .fetch_all_as(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(SqlUuid(id), tenant)| (tenant, id)).collect())
    }

    async fn set_next_ticks(&self, next: &[(Uuid, i64, DateTime<Utc>)]) -> ServiceResult<()> {
        if next.is_empty() {
            return Ok(());
        }
        // One transaction for the pass (a first pass works out every agent's). Lost in a crash,
        // the ticks are only worked out again.
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        for (agent_id, version, tick) in next {
            sqlx::query::<D::Db>("UPDATE agents SET next_tick_at = $1 WHERE id = $2 AND version = $3")
                .arg(*tick)
                .arg(SqlUuid(*agent_id))
                .arg(*version)
                .run(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn fire_tick(&self, agent_id: Uuid, tick: DateTime<Utc>, run: NewRun) -> ServiceResult<TickOutcome> {
        let _span = D::span("schedules.fire_tick");
        let _announce = self.announcing(run.id);
        let at = now();
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        let sql = format!("SELECT COUNT(*) FROM runs WHERE agent_id = $1 AND status NOT IN {FINAL}");
        let (going,): (i64,) =
            sqlx::query::<D::Db>(sqlx::AssertSqlSafe(sql)).arg(SqlUuid(agent_id)).fetch_one_as(&mut *tx).await?;
        let run_id = (going == 0).then_some(run.id);
        // The claim: the first process to insert (agent, tick) fires it.
        let claimed = sqlx::query::<D::Db>(
            "INSERT INTO schedule_ticks (agent_id, tick_at, run_id, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (agent_id, tick_at) DO NOTHING",
        )
        .arg(SqlUuid(agent_id))
        .arg(tick)
        .arg(run_id.map(SqlUuid))
        .arg(at)
        .run(&mut *tx)
        .await?;
        if D::rows_affected(&claimed) == 0 {
            return Ok(TickOutcome::AlreadyClaimed);
        }
        let outcome = match run_id {
            Some(id) => {
                Self::insert_run(&mut *tx, &run, None, at).await?;
                TickOutcome::Started(id)
            }
            None => TickOutcome::SkippedOverlap,
        };
        tx.commit().await?;
        Ok(outcome)
    }
}
