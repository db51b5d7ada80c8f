//! Human reviews of walker steps: listed, decided (approve, reject, edit) and expired here; a
//! decision moves its run through the state machine in the same transaction.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use engarde::kit::dialect::{self, BindKeyset, Conn, SqlUuid, Statement};
use engarde::kit::error::{ServiceError, ServiceResult};
use engarde::kit::idempotency::IdempotencyKey;
use engarde::kit::pagination::PageRequest;
use uuid::Uuid;

use super::run_store::{SqlRunRepository, corrupt, not_found, refused};
use super::{AgentDialect, replayed};
use crate::domain::now;
use crate::domain::run::ReviewDecision;
use crate::domain::run::{Review, ReviewAction, ReviewStatus, Run};
use crate::domain::run_machine::{Refusal, RunEventIn};

#[async_trait]
pub trait ReviewRepository: Send + Sync {
    /// One page of the tenant's pending reviews, oldest first (sort key: created_at, id).
    async fn pending_reviews(
        &self,
        tenant: &str,
        agent: Option<Uuid>,
        page: &PageRequest,
    ) -> ServiceResult<Vec<Review>>;

    /// Applies a person's decision to a pending review and answers the run.
    async fn decide(&self, tenant: &str, decision: ReviewDecision, key: Option<&IdempotencyKey>) -> ServiceResult<Run>;

    /// Applies the default action to at most `limit` reviews past their deadline (they become
    /// EXPIRED); answers how many.
    async fn expire_reviews(&self, now: DateTime<Utc>, limit: i64) -> ServiceResult<usize>;
}

const REVIEW_COLUMNS: &str = "id, tenant_id, run_id, agent_id, step_index, step_id, status, output, edited_output, \
                              deadline, default_action, created_at, decided_at";

#[derive(sqlx::FromRow)]
pub(super) struct ReviewRow {
    id: SqlUuid,
    tenant_id: String,
    run_id: SqlUuid,
    agent_id: SqlUuid,
    step_index: i32,
    step_id: String,
    status: String,
    output: String,
    edited_output: Option<String>,
    deadline: DateTime<Utc>,
    default_action: String,
    created_at: DateTime<Utc>,
    decided_at: Option<DateTime<Utc>>,
}

impl ReviewRow {
    fn into_review(self) -> Result<Review, ServiceError> {
        let bad = |what: &str| corrupt(what, self.run_id);
        Ok(Review {
            id: self.id.0,
            run_id: self.run_id.0,
            agent_id: self.agent_id.0,
            status: ReviewStatus::parse(&self.status).ok_or_else(|| bad("review status"))?,
            default_action: ReviewAction::parse(&self.default_action).ok_or_else(|| bad("review default_action"))?,
            tenant_id: self.tenant_id,
            step_index: self.step_index,
            step_id: self.step_id,
            output: self.output,
            edited_output: self.edited_output,
            deadline: self.deadline,
            created_at: self.created_at,
            decided_at: self.decided_at,
        })
    }
}

impl<D: AgentDialect> SqlRunRepository<D> {
    pub(super) async fn review_by_id(conn: &mut Conn<D>, tenant: &str, id: Uuid) -> ServiceResult<Option<Review>> {
        let sql = format!("SELECT {REVIEW_COLUMNS} FROM reviews WHERE id = $1 AND tenant_id = $2");
        let row: Option<ReviewRow> =
            sqlx::query::<D::Db>(sqlx::AssertSqlSafe(sql)).arg(SqlUuid(id)).arg(tenant).fetch_optional_as(conn).await?;
        row.map(ReviewRow::into_review).transpose()
    }
}

#[async_trait]
impl<D: AgentDialect> ReviewRepository for SqlRunRepository<D> {
    async fn pending_reviews(
        &self,
        tenant: &str,
        agent: Option<Uuid>,
        page: &PageRequest,
    ) -> ServiceResult<Vec<Review>> {
        let _span = D::span("reviews.pending_reviews");
        let sql = format!(
            "SELECT {REVIEW_COLUMNS} FROM reviews WHERE tenant_id = $1 AND status = 'pending' \
             AND ($2 IS NULL OR agent_id = $2) AND ($3 = 0 OR (created_at, id) > ($4, $5)) \
             ORDER BY created_at, id LIMIT $6"
        );
        let rows: Vec<ReviewRow> = sqlx::query::<D::Db>(sqlx::AssertSqlSafe(sql))
            .arg(tenant)
            .arg(agent.map(SqlUuid))
            .bind_keyset(page)?
            .arg(i64::from(page.size))
            .fetch_all_as(&self.pool)
            .await?;
        rows.into_iter().map(ReviewRow::into_review).collect()
    }

    async fn decide(&self, tenant: &str, decision: ReviewDecision, key: Option<&IdempotencyKey>) -> ServiceResult<Run> {
        let _span = D::span("reviews.decide");
        let _announce = self.announcing(decision.run_id);
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        if let Some(json) = dialect::claim_idempotency::<D>(&mut *tx, tenant, key).await? {
            return replayed(&json);
        }
        let review_id = decision.review_id;
        let review = Self::review_by_id(&mut *tx, tenant, review_id)
            .await?
            .ok_or_else(|| ServiceError::not_found(format!("review {review_id}")))?;
        if review.run_id != decision.run_id {
            return Err(ServiceError::FailedPrecondition(format!(
                "run_id does not match: review {review_id} is of run {}, not {}",
                review.run_id, decision.run_id
            )));
        }
        if review.step_id != decision.step_id {
            return Err(ServiceError::FailedPrecondition(format!(
                "step_id does not match: review {review_id} is of step {:?}, not {:?}",
                review.step_id, decision.step_id
            )));
        }
        // The run's lock first, as every change of a run takes it; then the review
        // as it is now.
        let run = Self::lock_run(&mut *tx, review.run_id).await?.ok_or_else(|| not_found(review.run_id))?;
        let review = Self::review_by_id(&mut *tx, tenant, review_id)
            .await?
            .ok_or_else(|| ServiceError::not_found(format!("review {review_id}")))?;
        let happened = RunEventIn::ReviewDecided { review: &review, verdict: decision.verdict };
        match Self::transition(&mut *tx, &run, None, happened).await? {
            Ok(t) => Self::apply(&mut *tx, &run, Some(&review), t.changes, now()).await?,
            Err(Refusal::ReviewNotPending(status)) => {
                return Err(ServiceError::FailedPrecondition(format!(
                    "review {review_id} is {}, not pending",
                    status.as_str()
                )));
            }
            Err(refusal) => return Err(refused(review.run_id, refusal)),
        }
        let run = Self::read_run(&mut *tx, tenant, review.run_id).await?;
        dialect::complete_idempotency::<D::Db>(&mut *tx, tenant, key, &run).await?;
        tx.commit().await?;
        Ok(run)
    }

    async fn expire_reviews(&self, at: DateTime<Utc>, limit: i64) -> ServiceResult<usize> {
        let due: Vec<(SqlUuid, String)> = sqlx::query::<D::Db>(
            "SELECT id, tenant_id FROM reviews WHERE status = 'pending' AND deadline <= $1 \
             ORDER BY deadline LIMIT $2",
        )
        .arg(at)
        .arg(limit)
        .fetch_all_as(&self.pool)
        .await?;
        let mut expired = 0;
        for (SqlUuid(id), tenant) in due {
            let mut tx = self.pool.begin_with(D::BEGIN).await?;
            let Some(review) = Self::review_by_id(&mut *tx, &tenant, id).await? else { continue };
            let Some(run) = Self::lock_run(&mut *tx, review.run_id).await? else { continue };
            // Another process may have decided it meanwhile: read it again under the lock.
            let Some(review) = Self::review_by_id(&mut *tx, &tenant, id).await? else { continue };
            let Ok(t) = Self::transition(&mut *tx, &run, None, RunEventIn::ReviewExpired { review: &review }).await?
            else {
                continue;
            };
            Self::apply(&mut *tx, &run, Some(&review), t.changes, now()).await?;
            tx.commit().await?;
            expired += 1;
        }
        // Which runs is not answered: rare enough to wake every watcher.
        if expired > 0 {
            self.announce_all();
        }
        Ok(expired)
    }
}
