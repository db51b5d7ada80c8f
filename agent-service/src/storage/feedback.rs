//! Scores people give executions, summed on their agent in the same transaction.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use engarde::kit::dialect::{self, BindKeyset, SqlUuid, Statement};
use engarde::kit::error::{ServiceError, ServiceResult};
use engarde::kit::idempotency::IdempotencyKey;
use engarde::kit::pagination::PageRequest;
use uuid::Uuid;

use super::execution_store::{SqlExecutionRepository, execution_not_found};
use super::{AgentDialect, replayed};
use crate::domain::execution::{ExecutionStatus, Feedback};

/// A new feedback entry.
#[derive(Debug, Clone)]
pub struct NewFeedback {
    pub id: Uuid,
    pub execution_id: Uuid,
    pub score: i32,
    pub comment: String,
    pub created_at: DateTime<Utc>,
}

#[async_trait]
pub trait FeedbackRepository: Send + Sync {
    /// Stores feedback on a finished execution of the tenant and adds it to the agent's summary.
    async fn add_feedback(
        &self,
        tenant: &str,
        feedback: NewFeedback,
        key: Option<&IdempotencyKey>,
    ) -> ServiceResult<Feedback>;

    /// A page of the feedback on an agent's executions, newest first.
    async fn feedback(&self, tenant: &str, agent_id: Uuid, page: &PageRequest) -> ServiceResult<Vec<Feedback>>;
}

#[derive(sqlx::FromRow)]
pub(super) struct FeedbackRow {
    id: SqlUuid,
    execution_id: SqlUuid,
    agent_id: SqlUuid,
    score: i32,
    comment: String,
    created_at: DateTime<Utc>,
}

impl TryFrom<FeedbackRow> for Feedback {
    type Error = ServiceError;

    fn try_from(row: FeedbackRow) -> ServiceResult<Self> {
        Ok(Feedback {
            id: row.id.0,
            execution_id: row.execution_id.0,
            agent_id: row.agent_id.0,
            score: row.score,
            comment: row.comment,
            created_at: row.created_at,
        })
    }
}

#[async_trait]
impl<D: AgentDialect> FeedbackRepository for SqlExecutionRepository<D> {
    async fn add_feedback(
        &self,
        tenant: &str,
        new: NewFeedback,
        key: Option<&IdempotencyKey>,
    ) -> ServiceResult<Feedback> {
        let _span = D::span("feedback.add_feedback");
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        if let Some(json) = dialect::claim_idempotency::<D>(&mut *tx, tenant, key).await? {
            return replayed(&json);
        }
        let found: Option<(SqlUuid, String)> =
            sqlx::query::<D::Db>("SELECT agent_id, status FROM executions WHERE id = $1 AND tenant_id = $2")
                .arg(SqlUuid(new.execution_id))
                .arg(tenant)
                .fetch_optional_as(&mut *tx)
                .await?;
        let Some((agent_id, status)) = found else {
            return Err(execution_not_found(new.execution_id));
        };
        if status == ExecutionStatus::Running.as_str() {
            return Err(ServiceError::FailedPrecondition(format!(
                "execution {} is still running; give feedback once it has finished",
                new.execution_id
            )));
        }
        let agent_id = agent_id.0;
        sqlx::query::<D::Db>(
            "INSERT INTO feedback (id, tenant_id, agent_id, execution_id, score, comment, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .arg(SqlUuid(new.id))
        .arg(tenant)
        .arg(SqlUuid(agent_id))
        .arg(SqlUuid(new.execution_id))
        .arg(new.score)
        .arg(&new.comment)
        .arg(new.created_at)
        .run(&mut *tx)
        .await?;
        sqlx::query::<D::Db>(
            "UPDATE agents SET feedback_count = feedback_count + 1, \
             feedback_score_sum = feedback_score_sum + $1 WHERE id = $2",
        )
        .arg(i64::from(new.score))
        .arg(SqlUuid(agent_id))
        .run(&mut *tx)
        .await?;
        let feedback = Feedback {
            id: new.id,
            execution_id: new.execution_id,
            agent_id,
            score: new.score,
            comment: new.comment,
            created_at: new.created_at,
        };
        dialect::complete_idempotency::<D::Db>(&mut *tx, tenant, key, &feedback).await?;
        tx.commit().await?;
        Ok(feedback)
    }

    async fn feedback(&self, tenant: &str, agent_id: Uuid, page: &PageRequest) -> ServiceResult<Vec<Feedback>> {
        let _span = D::span("feedback.feedback");
        Self::ensure_agent(&self.pool, tenant, agent_id).await?;
        let rows: Vec<FeedbackRow> = sqlx::query::<D::Db>(
            "SELECT id, execution_id, agent_id, score, comment, created_at FROM feedback \
             WHERE agent_id = $1 AND tenant_id = $2 \
               AND ($3 = 0 OR (created_at, id) < ($4, $5)) \
             ORDER BY created_at DESC, id DESC LIMIT $6",
        )
        .arg(SqlUuid(agent_id))
        .arg(tenant)
        .bind_keyset(page)?
        .arg(i64::from(page.size))
        .fetch_all_as(&self.pool)
        .await?;
        rows.into_iter().map(Feedback::try_from).collect()
    }
}
