//! The outbox of execution reports to workflow-service: written by an execution's finish in the
//! same transaction ([`super::executions`]), claimed, delivered and retried from here.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use engarde::kit::dialect::{SqlUuid, Statement};
use engarde::kit::error::{ServiceError, ServiceResult};
use uuid::Uuid;

use super::execution_store::SqlExecutionRepository;
use super::{AgentDialect, json_strings};
use crate::domain::execution::Report;

#[async_trait]
pub trait OutboxRepository: Send + Sync {
    /// Claims up to `limit` reports that are due, hiding them from other claimers for `lease`
    /// (the time a delivery may take; a claimer that dies mid-delivery leaves them due again).
    async fn claim_reports(&self, limit: i64, lease: Duration) -> ServiceResult<Vec<Report>>;

    /// Forgets delivered reports (a batch's, in one statement).
    async fn reports_delivered(&self, execution_ids: &[Uuid]) -> ServiceResult<()>;

    /// How many reports the outbox holds (due or not).
    async fn pending_reports(&self) -> ServiceResult<i64>;

    /// Records a failed delivery; the report is due again at `retry_at`.
    async fn report_failed(&self, execution_id: Uuid, error: &str, retry_at: DateTime<Utc>) -> ServiceResult<()>;
}

#[derive(sqlx::FromRow)]
pub(super) struct ReportRow {
    execution_id: SqlUuid,
    tenant_id: String,
    workflow_id: SqlUuid,
    succeeded: bool,
    attempts: i32,
}

impl TryFrom<ReportRow> for Report {
    type Error = ServiceError;

    fn try_from(row: ReportRow) -> ServiceResult<Self> {
        Ok(Report {
            execution_id: row.execution_id.0,
            workflow_id: row.workflow_id.0,
            tenant_id: row.tenant_id,
            succeeded: row.succeeded,
            attempts: row.attempts,
        })
    }
}

#[async_trait]
impl<D: AgentDialect> OutboxRepository for SqlExecutionRepository<D> {
    async fn claim_reports(&self, limit: i64, lease: Duration) -> ServiceResult<Vec<Report>> {
        let now = crate::domain::now();
        let until = now + chrono::Duration::from_std(lease).map_err(ServiceError::internal)?;
        // Pushing next_attempt_at past the lease is the claim: other claimers (other
        // replicas) see the rows as not due until the lease runs out. A claim lost in
        // a crash only lets the reports be delivered twice, which workflow-service
        // counts once: no need to wait for the disk.
        let sql = format!(
            "UPDATE execution_reports SET next_attempt_at = $1 WHERE execution_id IN \
             (SELECT execution_id FROM execution_reports WHERE next_attempt_at <= $2 \
              ORDER BY next_attempt_at LIMIT $3{}) AND EXISTS (SELECT 1 FROM {}) \
             RETURNING execution_id, tenant_id, workflow_id, succeeded, attempts",
            D::SKIP_LOCKED,
            D::RELAXED_FROM
        );
        let rows: Vec<ReportRow> = sqlx::query::<D::Db>(sqlx::AssertSqlSafe(sql))
            .arg(until)
            .arg(now)
            .arg(limit)
            .fetch_all_as(&self.pool)
            .await?;
        rows.into_iter().map(Report::try_from).collect()
    }

    async fn reports_delivered(&self, execution_ids: &[Uuid]) -> ServiceResult<()> {
        if execution_ids.is_empty() {
            return Ok(());
        }
        // Losing this delete in a crash only delivers the reports again, which
        // workflow-service counts once: no need to wait for the disk.
        sqlx::query::<D::Db>(sqlx::AssertSqlSafe(format!(
            "DELETE FROM execution_reports WHERE execution_id IN ({}) AND EXISTS (SELECT 1 FROM {})",
            D::JSON_UUIDS,
            D::RELAXED_FROM
        )))
        .arg(json_strings(execution_ids))
        .run(&self.pool)
        .await?;
        Ok(())
    }

    async fn pending_reports(&self) -> ServiceResult<i64> {
        let (n,): (i64,) =
            sqlx::query::<D::Db>("SELECT count(*) FROM execution_reports").fetch_one_as(&self.pool).await?;
        Ok(n)
    }

    async fn report_failed(&self, execution_id: Uuid, error: &str, retry_at: DateTime<Utc>) -> ServiceResult<()> {
        sqlx::query::<D::Db>(
            "UPDATE execution_reports SET attempts = attempts + 1, last_error = $1, next_attempt_at = $2 \
             WHERE execution_id = $3",
        )
        .arg(error)
        .arg(retry_at)
        .arg(SqlUuid(execution_id))
        .run(&self.pool)
        .await?;
        Ok(())
    }
}
