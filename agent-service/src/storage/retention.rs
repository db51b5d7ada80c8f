//! The purges of agent-service's retention (see `engarde::kit::retention`): each deletes at most
//! `limit` expired rows, oldest first, in one short transaction. Counters already counted stay
//! (an agent's executions and feedback summary live on the agent's row, a workflow's in
//! workflow-service); only the rows themselves go.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use engarde::kit::db::DbPool;
use engarde::kit::dialect::{self, Dialect, SqlUuid, Statement};
use engarde::kit::error::ServiceResult;
use engarde::kit::warm_pool::WarmPool;
use uuid::Uuid;

use super::AgentDialect;

/// Deletes what is past its retention.
#[async_trait]
pub trait RetentionRepository: Send + Sync {
    /// Finished executions that finished before `cutoff` and have no report still waiting in
    /// the outbox (their feedback goes with them). A RUNNING execution is never deleted.
    async fn purge_executions(&self, cutoff: DateTime<Utc>, limit: i64) -> ServiceResult<u64>;
    /// Conversation messages written before `cutoff`; a session left with none is forgotten.
    async fn purge_session_messages(&self, cutoff: DateTime<Utc>, limit: i64) -> ServiceResult<u64>;
    /// Events written before `cutoff` of runs that have ended (a live run keeps its history).
    async fn purge_run_events(&self, cutoff: DateTime<Utc>, limit: i64) -> ServiceResult<u64>;
}

pub struct SqlRetentionRepository<D: Dialect> {
    pool: WarmPool<D::Db>,
    dialect: PhantomData<D>,
}

/// The retention repository for a pool.
pub fn retention_repository(pool: &DbPool) -> Arc<dyn RetentionRepository> {
    match pool {
        DbPool::Postgres(p) => {
            Arc::new(SqlRetentionRepository::<dialect::Postgres> { pool: p.clone(), dialect: PhantomData })
        }
        DbPool::Sqlite(p) => {
            Arc::new(SqlRetentionRepository::<dialect::Sqlite> { pool: p.clone(), dialect: PhantomData })
        }
    }
}

#[async_trait]
impl<D: AgentDialect> RetentionRepository for SqlRetentionRepository<D> {
    async fn purge_executions(&self, cutoff: DateTime<Utc>, limit: i64) -> ServiceResult<u64> {
        let _span = D::span("retention.purge_executions");
        let deleted = sqlx::query::<D::Db>(
            "DELETE FROM executions WHERE id IN (\
               SELECT e.id FROM executions e \
               WHERE e.status <> 'running' AND e.finished_at < $1 \
                 AND NOT EXISTS (SELECT 1 FROM execution_reports r WHERE r.execution_id = e.id) \
               ORDER BY e.finished_at LIMIT $2)",
        )
        .arg(cutoff)
        .arg(limit)
        .run(&self.pool)
        .await?;
        Ok(D::rows_affected(&deleted))
    }

    async fn purge_session_messages(&self, cutoff: DateTime<Utc>, limit: i64) -> ServiceResult<u64> {
        let _span = D::span("retention.purge_session_messages");
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        let gone: Vec<(SqlUuid, String)> = sqlx::query::<D::Db>(
            "DELETE FROM session_messages WHERE (agent_id, session_id, sequence) IN (\
               SELECT agent_id, session_id, sequence FROM session_messages WHERE created_at < $1 \
               ORDER BY created_at LIMIT $2) \
             RETURNING agent_id, session_id",
        )
        .arg(cutoff)
        .arg(limit)
        .fetch_all_as(&mut *tx)
        .await?;
        let mut per_session: BTreeMap<(Uuid, &str), i64> = BTreeMap::new();
        for (agent_id, session_id) in &gone {
            *per_session.entry((agent_id.0, session_id.as_str())).or_default() += 1;
        }
        // Sessions in key order: two purges (two replicas) lock them in the same order.
        for ((agent_id, session_id), count) in per_session {
            sqlx::query::<D::Db>(
                "UPDATE sessions SET message_count = CASE WHEN message_count > $1 THEN message_count - $1 ELSE 0 END \
                 WHERE agent_id = $2 AND session_id = $3",
            )
            .arg(count)
            .arg(SqlUuid(agent_id))
            .arg(session_id)
            .run(&mut *tx)
            .await?;
            sqlx::query::<D::Db>(
                "DELETE FROM sessions WHERE agent_id = $1 AND session_id = $2 \
                 AND message_count = 0 AND last_message_at < $3",
            )
            .arg(SqlUuid(agent_id))
            .arg(session_id)
            .arg(cutoff)
            .run(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(gone.len() as u64)
    }

    async fn purge_run_events(&self, cutoff: DateTime<Utc>, limit: i64) -> ServiceResult<u64> {
        let _span = D::span("retention.purge_run_events");
        let deleted = sqlx::query::<D::Db>(
            "DELETE FROM run_events WHERE (run_id, sequence) IN (\
               SELECT e.run_id, e.sequence FROM run_events e JOIN runs r ON r.id = e.run_id \
               WHERE e.created_at < $1 AND r.status IN ('succeeded', 'failed', 'rejected', 'cancelled') \
               ORDER BY e.created_at LIMIT $2)",
        )
        .arg(cutoff)
        .arg(limit)
        .run(&self.pool)
        .await?;
        Ok(D::rows_affected(&deleted))
    }
}
