//! [`RunRepository`] in SQL both databases accept, written once over a [`Dialect`].
//!
//! Every transaction that changes a run locks the run's row first (PostgreSQL `FOR UPDATE`;
//! SQLite `BEGIN IMMEDIATE`, one writer), so that the events of a run are numbered without gaps
//! or duplicates and no two transactions change one run at once. Workers claim runs with
//! `FOR UPDATE SKIP LOCKED` on PostgreSQL, so that processes sharing a database never wait on
//! each other's claims; on SQLite one process owns the file.

use std::collections::HashMap;
use std::marker::PhantomData;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use engarde::kit::error::{ServiceError, ServiceResult, is_unique_violation};
use engarde::kit::idempotency::IdempotencyKey;
use engarde::kit::pagination::PageRequest;
use uuid::Uuid;

use crate::domain::now;
use crate::domain::run::{
    NewRun, ReviewDecision, RunFilter, RunRequestKey, ScheduledAgent, TickOutcome, has_scheduled_trigger,
};
use crate::domain::run::{
    Review, ReviewAction, ReviewStatus, Run, RunEvent, RunRules, RunStatus, RunStep, RunTrigger, StepKind, StepStatus,
};
use crate::domain::run_machine::{self, Change, Refusal, RunEventIn, RunState, Transition};
use crate::storage::runs::{Lease, RunRepository, StepOutcome, StepWork};
use crate::storage::{json_strings, replayed};
use engarde::kit::dialect::{self, BindKeyset, Dialect, SqlUuid};

/// The columns of `runs` every query reads, in [`RunRow`]'s order.
const RUN_COLUMNS: &str = "id, tenant_id, agent_id, status, trigger_kind, input, output, error, current_step, \
                           max_retries, approval_required, review_timeout_secs, review_default_action, \
                           scheduled_for, lease_owner, created_at, updated_at, finished_at";

const STEP_COLUMNS: &str = "step_index, step_id, kind, prompt, reviews_index, status, input, output, attempts, error, \
                            started_at, finished_at";

const REVIEW_COLUMNS: &str = "id, tenant_id, run_id, agent_id, step_index, step_id, status, output, edited_output, \
                              deadline, default_action, created_at, decided_at";

/// The longest detail an event carries (an excerpt of an output or an error).
const DETAIL_CHARS: usize = 200;

fn excerpt(text: &str) -> String {
    let mut out: String = text.chars().take(DETAIL_CHARS).collect();
    if text.chars().nth(DETAIL_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// The answer to a caller whose event the state machine refused.
fn refused(id: Uuid, refusal: Refusal) -> ServiceError {
    match refusal {
        Refusal::Ended(status) => {
            ServiceError::FailedPrecondition(format!("run {id} has already ended ({})", status.as_str()))
        }
        Refusal::ReviewNotPending(status) => {
            ServiceError::FailedPrecondition(format!("the review of run {id} is {}, not pending", status.as_str()))
        }
        Refusal::NotOurs | Refusal::StaleStep => {
            ServiceError::FailedPrecondition(format!("run {id} is not at that step any more"))
        }
    }
}

fn corrupt(what: &str, id: SqlUuid) -> ServiceError {
    ServiceError::internal(anyhow::anyhow!("run {}: corrupt {what} in database", id.0))
}

#[derive(sqlx::FromRow)]
pub(super) struct RunRow {
    id: SqlUuid,
    tenant_id: String,
    agent_id: SqlUuid,
    status: String,
    trigger_kind: String,
    input: String,
    output: String,
    error: String,
    current_step: i32,
    max_retries: i32,
    approval_required: bool,
    review_timeout_secs: i64,
    review_default_action: String,
    scheduled_for: Option<DateTime<Utc>>,
    lease_owner: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

impl RunRow {
    fn status(&self) -> Result<RunStatus, ServiceError> {
        RunStatus::parse(&self.status).ok_or_else(|| corrupt("status", self.id))
    }

    fn rules(&self) -> Result<RunRules, ServiceError> {
        Ok(RunRules {
            max_retries: self.max_retries,
            approval_required: self.approval_required,
            review_timeout_secs: self.review_timeout_secs,
            review_default_action: ReviewAction::parse(&self.review_default_action)
                .ok_or_else(|| corrupt("review_default_action", self.id))?,
        })
    }

    fn holds(&self, token: &str) -> bool {
        self.lease_owner.as_deref() == Some(token)
    }

    /// The run as the state machine sees it; `lease_token`: the worker's, for worker events.
    fn state<'a>(&'a self, steps: &'a [RunStep], lease_token: Option<&str>) -> Result<RunState<'a>, ServiceError> {
        Ok(RunState {
            status: self.status()?,
            holds_lease: lease_token.is_some_and(|token| self.holds(token)),
            current_step: self.current_step,
            input: &self.input,
            rules: self.rules()?,
            steps,
        })
    }

    fn into_run(self, steps: Vec<RunStep>) -> Result<Run, ServiceError> {
        Ok(Run {
            id: self.id.0,
            agent_id: self.agent_id.0,
            status: self.status()?,
            trigger: RunTrigger::parse(&self.trigger_kind).ok_or_else(|| corrupt("trigger_kind", self.id))?,
            tenant_id: self.tenant_id,
            input: self.input,
            output: self.output,
            error: self.error,
            current_step: self.current_step,
            scheduled_for: self.scheduled_for,
            created_at: self.created_at,
            updated_at: self.updated_at,
            finished_at: self.finished_at,
            steps,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct StepRow {
    step_index: i32,
    step_id: String,
    kind: String,
    prompt: String,
    reviews_index: Option<i32>,
    status: String,
    input: String,
    output: String,
    attempts: i32,
    error: String,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

impl StepRow {
    fn into_step(self, run_id: SqlUuid) -> Result<RunStep, ServiceError> {
        Ok(RunStep {
            index: self.step_index,
            kind: StepKind::parse(&self.kind).ok_or_else(|| corrupt("step kind", run_id))?,
            status: StepStatus::parse(&self.status).ok_or_else(|| corrupt("step status", run_id))?,
            step_id: self.step_id,
            prompt: self.prompt,
            reviews_index: self.reviews_index,
            input: self.input,
            output: self.output,
            attempts: self.attempts,
            error: self.error,
            started_at: self.started_at,
            finished_at: self.finished_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct EventRow {
    run_id: SqlUuid,
    sequence: i64,
    kind: String,
    step_id: String,
    detail: String,
    created_at: DateTime<Utc>,
}

impl EventRow {
    fn into_event(self) -> Result<RunEvent, ServiceError> {
        Ok(RunEvent {
            run_id: self.run_id.0,
            sequence: self.sequence,
            kind: self.kind,
            step_id: self.step_id,
            detail: self.detail,
            created_at: self.created_at,
        })
    }
}

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

/// A connection of the dialect's database.
type Conn<D> = <<D as Dialect>::Db as sqlx::Database>::Connection;
/// A row of the dialect's database.
type Row<D> = <<D as Dialect>::Db as sqlx::Database>::Row;

/// A step of a page of runs, with the run it belongs to.
#[derive(sqlx::FromRow)]
pub(super) struct PageStepRow {
    run_id: SqlUuid,
    #[sqlx(flatten)]
    step: StepRow,
}

/// Run statuses that have ended, as an SQL list.
const FINAL: &str = "('succeeded', 'failed', 'rejected', 'cancelled')";

fn not_found(id: Uuid) -> ServiceError {
    ServiceError::not_found(format!("run {id}"))
}

/// The run repository of a dialect.
pub(super) struct SqlRunRepository<D: Dialect> {
    pool: sqlx::Pool<D::Db>,
    dialect: PhantomData<D>,
}

pub(super) type PostgresRunRepository = SqlRunRepository<dialect::Postgres>;
pub(super) type SqliteRunRepository = SqlRunRepository<dialect::Sqlite>;

impl<D: Dialect> SqlRunRepository<D> {
    pub fn new(pool: sqlx::Pool<D::Db>) -> Self {
        Self { pool, dialect: PhantomData }
    }
}

impl<D> SqlRunRepository<D>
where
    D: Dialect,
    for<'c> &'c mut Conn<D>: sqlx::Executor<'c, Database = D::Db>,
    <D::Db as sqlx::Database>::Arguments: sqlx::IntoArguments<D::Db>,
    for<'a> &'a str: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> String: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> i32: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> i64: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> bool: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> DateTime<Utc>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> Option<&'a str>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> Option<String>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> SqlUuid: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> Option<SqlUuid>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> Option<i32>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> Option<DateTime<Utc>>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'r> RunRow: sqlx::FromRow<'r, Row<D>>,
    for<'r> StepRow: sqlx::FromRow<'r, Row<D>>,
    for<'r> PageStepRow: sqlx::FromRow<'r, Row<D>>,
    for<'r> EventRow: sqlx::FromRow<'r, Row<D>>,
    for<'r> ReviewRow: sqlx::FromRow<'r, Row<D>>,
    for<'r> (i64,): sqlx::FromRow<'r, Row<D>>,
    for<'r> (SqlUuid,): sqlx::FromRow<'r, Row<D>>,
    for<'r> (SqlUuid, String): sqlx::FromRow<'r, Row<D>>,
    for<'r> (String, i64): sqlx::FromRow<'r, Row<D>>,
    for<'r> (SqlUuid, Option<String>): sqlx::FromRow<'r, Row<D>>,
    for<'r> (String, Option<String>): sqlx::FromRow<'r, Row<D>>,
    for<'r> (String, SqlUuid, DateTime<Utc>, i64, Vec<u8>, String): sqlx::FromRow<'r, Row<D>>,
{
    /// The run's row, locked for the rest of the transaction (PostgreSQL; SQLite's
    /// transaction holds the write lock already).
    async fn lock_run(conn: &mut Conn<D>, id: Uuid) -> ServiceResult<Option<RunRow>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1{}", D::LOCK);
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(SqlUuid(id)).fetch_optional(conn).await?)
    }

    async fn read_run_row(conn: &mut Conn<D>, tenant: &str, id: Uuid) -> ServiceResult<Option<RunRow>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1 AND tenant_id = $2");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(SqlUuid(id)).bind(tenant).fetch_optional(conn).await?)
    }

    async fn steps(conn: &mut Conn<D>, run_id: SqlUuid) -> ServiceResult<Vec<RunStep>> {
        let sql = format!("SELECT {STEP_COLUMNS} FROM run_steps WHERE run_id = $1 ORDER BY step_index");
        let rows: Vec<StepRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(run_id).fetch_all(conn).await?;
        rows.into_iter().map(|r| r.into_step(run_id)).collect()
    }

    async fn with_steps(conn: &mut Conn<D>, row: RunRow) -> ServiceResult<Run> {
        let steps = Self::steps(conn, row.id).await?;
        row.into_run(steps)
    }

    async fn read_run(conn: &mut Conn<D>, tenant: &str, id: Uuid) -> ServiceResult<Run> {
        let row = Self::read_run_row(conn, tenant, id).await?.ok_or_else(|| not_found(id))?;
        Self::with_steps(conn, row).await
    }

    /// Appends an event: number 1 + the run's last. Callers hold the run's lock.
    async fn event(
        conn: &mut Conn<D>,
        run_id: SqlUuid,
        kind: &str,
        step_id: &str,
        detail: &str,
        at: DateTime<Utc>,
    ) -> ServiceResult<()> {
        sqlx::query(
            "INSERT INTO run_events (run_id, sequence, kind, step_id, detail, created_at) \
             SELECT $1, COALESCE(MAX(sequence), 0) + 1, $2, $3, $4, $5 FROM run_events WHERE run_id = $1",
        )
        .bind(run_id)
        .bind(kind)
        .bind(step_id)
        .bind(excerpt(detail))
        .bind(at)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn set_step(
        conn: &mut Conn<D>,
        run_id: SqlUuid,
        index: i32,
        status: StepStatus,
        output: Option<&str>,
        error: &str,
        finished: Option<DateTime<Utc>>,
    ) -> ServiceResult<()> {
        sqlx::query(
            "UPDATE run_steps SET status = $1, output = COALESCE($2, output), error = $3, \
             finished_at = COALESCE($4, finished_at) WHERE run_id = $5 AND step_index = $6",
        )
        .bind(status.as_str())
        .bind(output)
        .bind(error)
        .bind(finished)
        .bind(run_id)
        .bind(index)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Ends the run in `status` (FAILED, REJECTED, CANCELLED) with `error`; its steps not
    /// done are SKIPPED and its pending reviews EXPIRED.
    async fn end_run(
        conn: &mut Conn<D>,
        run_id: SqlUuid,
        status: RunStatus,
        error: &str,
        at: DateTime<Utc>,
    ) -> ServiceResult<()> {
        sqlx::query(
            "UPDATE runs SET status = $1, error = $2, finished_at = $3, updated_at = $3, \
             lease_owner = NULL, lease_expires_at = NULL WHERE id = $4",
        )
        .bind(status.as_str())
        .bind(error)
        .bind(at)
        .bind(run_id)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "UPDATE run_steps SET status = 'skipped', finished_at = CASE WHEN status = 'pending' \
             THEN finished_at ELSE $1 END WHERE run_id = $2 AND status IN ('pending', 'running', 'waiting_review')",
        )
        .bind(at)
        .bind(run_id)
        .execute(&mut *conn)
        .await?;
        sqlx::query("UPDATE reviews SET status = 'expired', decided_at = $1 WHERE run_id = $2 AND status = 'pending'")
            .bind(at)
            .bind(run_id)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Pauses the run on step `index` until a person (or the deadline) decides on `text`.
    async fn request_review(
        conn: &mut Conn<D>,
        run: &RunRow,
        index: i32,
        step_id: &str,
        text: &str,
        at: DateTime<Utc>,
    ) -> ServiceResult<()> {
        let rules = run.rules()?;
        Self::set_step(conn, run.id, index, StepStatus::WaitingReview, Some(text), "", None).await?;
        let review_id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO reviews (id, tenant_id, run_id, agent_id, step_index, step_id, status, output, \
             deadline, default_action, created_at) VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8, $9, $10)",
        )
        .bind(SqlUuid(review_id))
        .bind(&run.tenant_id)
        .bind(run.id)
        .bind(run.agent_id)
        .bind(index)
        .bind(step_id)
        .bind(text)
        .bind(at + chrono::Duration::seconds(rules.review_timeout_secs))
        .bind(rules.review_default_action.as_str())
        .bind(at)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "UPDATE runs SET status = 'waiting_review', updated_at = $1, lease_owner = NULL, \
             lease_expires_at = NULL WHERE id = $2",
        )
        .bind(at)
        .bind(run.id)
        .execute(&mut *conn)
        .await?;
        Self::event(conn, run.id, "review_requested", step_id, &format!("review {review_id}"), at).await
    }

    /// Writes what the state machine decided, in its order. Callers hold the run's lock;
    /// `review` is the review a decision is about.
    async fn apply(
        conn: &mut Conn<D>,
        run: &RunRow,
        review: Option<&Review>,
        changes: Vec<Change>,
        at: DateTime<Utc>,
    ) -> ServiceResult<()> {
        let run_id = run.id;
        for change in changes {
            match change {
                Change::RunStarted => {
                    sqlx::query("UPDATE runs SET status = 'running', updated_at = $1 WHERE id = $2")
                        .bind(at)
                        .bind(run_id)
                        .execute(&mut *conn)
                        .await?;
                }
                Change::StepStarted { index, status, input } => {
                    sqlx::query(
                        "UPDATE run_steps SET status = $1, attempts = attempts + 1, input = $2, error = '', \
                         started_at = $3, finished_at = NULL WHERE run_id = $4 AND step_index = $5",
                    )
                    .bind(status.as_str())
                    .bind(input)
                    .bind(at)
                    .bind(run_id)
                    .bind(index)
                    .execute(&mut *conn)
                    .await?;
                }
                Change::SetStep { index, status, output, error, finished } => {
                    let finished = finished.then_some(at);
                    Self::set_step(conn, run_id, index, status, output.as_deref(), &error, finished).await?;
                }
                Change::RunOutput(output) => {
                    sqlx::query("UPDATE runs SET output = $1 WHERE id = $2")
                        .bind(output)
                        .bind(run_id)
                        .execute(&mut *conn)
                        .await?;
                }
                Change::Event { kind, step_id, detail } => {
                    Self::event(conn, run_id, kind, &step_id, &detail, at).await?
                }
                Change::MoveTo { next } => {
                    sqlx::query(
                        "UPDATE runs SET status = 'running', current_step = $1, next_attempt_at = $2, updated_at = $2, \
                         lease_owner = NULL, lease_expires_at = NULL WHERE id = $3",
                    )
                    .bind(next)
                    .bind(at)
                    .bind(run_id)
                    .execute(&mut *conn)
                    .await?;
                }
                Change::Succeed { current_step, output } => {
                    sqlx::query(
                        "UPDATE runs SET status = 'succeeded', output = $1, current_step = $2, finished_at = $3, \
                         updated_at = $3, lease_owner = NULL, lease_expires_at = NULL WHERE id = $4",
                    )
                    .bind(output)
                    .bind(current_step)
                    .bind(at)
                    .bind(run_id)
                    .execute(&mut *conn)
                    .await?;
                }
                Change::RequestReview { index, step_id, text } => {
                    Self::request_review(conn, run, index, &step_id, &text, at).await?
                }
                Change::RetryLater { delay } => {
                    sqlx::query(
                        "UPDATE runs SET next_attempt_at = $1, updated_at = $2, lease_owner = NULL, \
                         lease_expires_at = NULL WHERE id = $3",
                    )
                    .bind(at + delay)
                    .bind(at)
                    .bind(run_id)
                    .execute(&mut *conn)
                    .await?;
                }
                Change::DecideReview { status, edited_output } => {
                    let review = review.ok_or_else(|| {
                        ServiceError::internal(anyhow::anyhow!("run {run_id}: a review decision without a review"))
                    })?;
                    sqlx::query("UPDATE reviews SET status = $1, edited_output = $2, decided_at = $3 WHERE id = $4")
                        .bind(status.as_str())
                        .bind(edited_output)
                        .bind(at)
                        .bind(SqlUuid(review.id))
                        .execute(&mut *conn)
                        .await?;
                }
                Change::End { status, error } => Self::end_run(conn, run_id, status, &error, at).await?,
            }
        }
        Ok(())
    }

    /// Loads the run's steps and asks the state machine what `happened` changes.
    async fn transition(
        conn: &mut Conn<D>,
        run: &RunRow,
        lease: Option<&Lease>,
        happened: RunEventIn<'_>,
    ) -> ServiceResult<Result<Transition, Refusal>> {
        let steps = Self::steps(conn, run.id).await?;
        let state = run.state(&steps, lease.map(|l| l.token.as_str()))?;
        Ok(run_machine::decide(&state, happened))
    }

    async fn review_by_id(conn: &mut Conn<D>, tenant: &str, id: Uuid) -> ServiceResult<Option<Review>> {
        let sql = format!("SELECT {REVIEW_COLUMNS} FROM reviews WHERE id = $1 AND tenant_id = $2");
        let row: Option<ReviewRow> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(SqlUuid(id)).bind(tenant).fetch_optional(conn).await?;
        row.map(ReviewRow::into_review).transpose()
    }

    /// Inserts a new run, its steps and its first event.
    async fn insert_run(
        conn: &mut Conn<D>,
        run: &NewRun,
        key: Option<&RunRequestKey>,
        at: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        let rules = run.plan.rules;
        sqlx::query(
            "INSERT INTO runs (id, tenant_id, agent_id, status, trigger_kind, input, max_retries, \
             approval_required, review_timeout_secs, review_default_action, request_id, fingerprint, \
             scheduled_for, next_attempt_at, created_at, updated_at) \
             VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $13)",
        )
        .bind(SqlUuid(run.id))
        .bind(&run.tenant_id)
        .bind(SqlUuid(run.agent_id))
        .bind(run.trigger.as_str())
        .bind(&run.input)
        .bind(rules.max_retries)
        .bind(rules.approval_required)
        .bind(rules.review_timeout_secs)
        .bind(rules.review_default_action.as_str())
        .bind(key.map(|k| k.request_id.as_str()))
        .bind(key.map(|k| k.fingerprint.as_str()))
        .bind(run.scheduled_for)
        .bind(at)
        .execute(&mut *conn)
        .await?;
        for (i, step) in run.plan.steps.iter().enumerate() {
            sqlx::query(
                "INSERT INTO run_steps (run_id, step_index, step_id, kind, prompt, reviews_index, status) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'pending')",
            )
            .bind(SqlUuid(run.id))
            .bind(i as i32)
            .bind(&step.step_id)
            .bind(step.kind.as_str())
            .bind(&step.prompt)
            .bind(step.reviews_index)
            .execute(&mut *conn)
            .await?;
        }
        let detail = match run.scheduled_for {
            Some(tick) => format!("scheduled for {}", tick.to_rfc3339()),
            None => String::new(),
        };
        sqlx::query(
            "INSERT INTO run_events (run_id, sequence, kind, step_id, detail, created_at) \
             VALUES ($1, 1, 'run_queued', '', $2, $3)",
        )
        .bind(SqlUuid(run.id))
        .bind(detail)
        .bind(at)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// The run a request key started, or ALREADY_EXISTS when it was another request's.
    async fn run_of_key(conn: &mut Conn<D>, tenant: &str, key: &RunRequestKey) -> ServiceResult<Option<Run>> {
        let found: Option<(SqlUuid, Option<String>)> =
            sqlx::query_as("SELECT id, fingerprint FROM runs WHERE tenant_id = $1 AND request_id = $2")
                .bind(tenant)
                .bind(&key.request_id)
                .fetch_optional(&mut *conn)
                .await?;
        let Some((id, fingerprint)) = found else { return Ok(None) };
        if fingerprint.as_deref() != Some(key.fingerprint.as_str()) {
            return Err(ServiceError::AlreadyExists(format!(
                "request_id {:?} was already used for a different request",
                key.request_id
            )));
        }
        Self::read_run(conn, tenant, id.0).await.map(Some)
    }
}

#[async_trait]
impl<D> RunRepository for SqlRunRepository<D>
where
    D: Dialect,
    for<'c> &'c mut Conn<D>: sqlx::Executor<'c, Database = D::Db>,
    <D::Db as sqlx::Database>::Arguments: sqlx::IntoArguments<D::Db>,
    for<'a> &'a str: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> String: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> i32: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> i64: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> bool: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> DateTime<Utc>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> Option<&'a str>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> Option<String>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> SqlUuid: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> Option<SqlUuid>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> Option<i32>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> Option<DateTime<Utc>>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'r> RunRow: sqlx::FromRow<'r, Row<D>>,
    for<'r> StepRow: sqlx::FromRow<'r, Row<D>>,
    for<'r> PageStepRow: sqlx::FromRow<'r, Row<D>>,
    for<'r> EventRow: sqlx::FromRow<'r, Row<D>>,
    for<'r> ReviewRow: sqlx::FromRow<'r, Row<D>>,
    for<'r> (i64,): sqlx::FromRow<'r, Row<D>>,
    for<'r> (SqlUuid,): sqlx::FromRow<'r, Row<D>>,
    for<'r> (SqlUuid, String): sqlx::FromRow<'r, Row<D>>,
    for<'r> (String, i64): sqlx::FromRow<'r, Row<D>>,
    for<'r> (SqlUuid, Option<String>): sqlx::FromRow<'r, Row<D>>,
    for<'r> (String, Option<String>): sqlx::FromRow<'r, Row<D>>,
    for<'r> (String, SqlUuid, DateTime<Utc>, i64, Vec<u8>, String): sqlx::FromRow<'r, Row<D>>,
{
    async fn counts(&self) -> ServiceResult<(Vec<(String, i64)>, i64)> {
        let runs: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM runs GROUP BY status").fetch_all(&self.pool).await?;
        let (pending,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM reviews WHERE status = 'pending'").fetch_one(&self.pool).await?;
        Ok((runs, pending))
    }

    async fn create(&self, run: NewRun, key: Option<&RunRequestKey>) -> ServiceResult<Run> {
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        if let Some(key) = key
            && let Some(existing) = Self::run_of_key(&mut *tx, &run.tenant_id, key).await?
        {
            return Ok(existing);
        }
        match Self::insert_run(&mut *tx, &run, key, now()).await {
            Ok(()) => {}
            // A concurrent retry with the same key won the race: answer its run.
            Err(e) if is_unique_violation(&e) && key.is_some() => {
                drop(tx);
                let mut conn = self.pool.acquire().await?;
                if let Some(key) = key
                    && let Some(existing) = Self::run_of_key(&mut *conn, &run.tenant_id, key).await?
                {
                    return Ok(existing);
                }
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        }
        let created = Self::read_run(&mut *tx, &run.tenant_id, run.id).await?;
        tx.commit().await?;
        Ok(created)
    }

    async fn get(&self, tenant: &str, id: Uuid) -> ServiceResult<Run> {
        let mut conn = self.pool.acquire().await?;
        Self::read_run(&mut *conn, tenant, id).await
    }

    async fn status(&self, tenant: &str, id: Uuid) -> ServiceResult<Option<RunStatus>> {
        let mut conn = self.pool.acquire().await?;
        Self::read_run_row(&mut *conn, tenant, id).await?.map(|r| r.status()).transpose()
    }

    async fn list(&self, tenant: &str, filter: &RunFilter, page: &PageRequest) -> ServiceResult<Vec<Run>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE tenant_id = $1 AND ($2 IS NULL OR agent_id = $2) \
             AND ($3 = '' OR status = $3) AND ($4 = 0 OR (created_at, id) < ($5, $6)) \
             ORDER BY created_at DESC, id DESC LIMIT $7"
        );
        let mut conn = self.pool.acquire().await?;
        let rows: Vec<RunRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(filter.agent_id.map(SqlUuid))
            .bind(filter.status.map(|s| s.as_str()).unwrap_or(""))
            .bind_keyset(page)?
            .bind(i64::from(page.size))
            .fetch_all(&mut *conn)
            .await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        // The page's steps in one query, not one per run.
        let sql = format!(
            "SELECT run_id, {STEP_COLUMNS} FROM run_steps WHERE run_id IN ({}) ORDER BY run_id, step_index",
            D::JSON_UUIDS
        );
        let steps: Vec<PageStepRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(json_strings(rows.iter().map(|r| r.id.0)))
            .fetch_all(&mut *conn)
            .await?;
        let mut steps_of: HashMap<SqlUuid, Vec<RunStep>> = HashMap::with_capacity(rows.len());
        for PageStepRow { run_id, step } in steps {
            let step = step.into_step(run_id)?;
            steps_of.entry(run_id).or_default().push(step);
        }
        rows.into_iter()
            .map(|row| {
                let steps = steps_of.remove(&row.id).unwrap_or_default();
                row.into_run(steps)
            })
            .collect()
    }

    async fn cancel(&self, tenant: &str, id: Uuid, reason: &str, key: Option<&IdempotencyKey>) -> ServiceResult<Run> {
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        if let Some(json) = dialect::claim_idempotency::<D>(&mut *tx, tenant, key).await? {
            return replayed(&json);
        }
        let run = Self::lock_run(&mut *tx, id).await?.filter(|r| r.tenant_id == tenant).ok_or_else(|| not_found(id))?;
        match Self::transition(&mut *tx, &run, None, RunEventIn::Cancel { reason: reason.to_string() }).await? {
            Ok(t) => Self::apply(&mut *tx, &run, None, t.changes, now()).await?,
            Err(refusal) => return Err(refused(id, refusal)),
        }
        let cancelled = Self::read_run(&mut *tx, tenant, id).await?;
        dialect::complete_idempotency::<D::Db>(&mut *tx, tenant, key, &cancelled).await?;
        tx.commit().await?;
        Ok(cancelled)
    }

    async fn events(&self, run_id: Uuid, from: i64, limit: i64) -> ServiceResult<Vec<RunEvent>> {
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT run_id, sequence, kind, step_id, detail, created_at FROM run_events \
             WHERE run_id = $1 AND sequence >= $2 ORDER BY sequence LIMIT $3",
        )
        .bind(SqlUuid(run_id))
        .bind(from)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(EventRow::into_event).collect()
    }

    async fn pending_reviews(
        &self,
        tenant: &str,
        agent: Option<Uuid>,
        page: &PageRequest,
    ) -> ServiceResult<Vec<Review>> {
        let sql = format!(
            "SELECT {REVIEW_COLUMNS} FROM reviews WHERE tenant_id = $1 AND status = 'pending' \
             AND ($2 IS NULL OR agent_id = $2) AND ($3 = 0 OR (created_at, id) > ($4, $5)) \
             ORDER BY created_at, id LIMIT $6"
        );
        let rows: Vec<ReviewRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(agent.map(SqlUuid))
            .bind_keyset(page)?
            .bind(i64::from(page.size))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(ReviewRow::into_review).collect()
    }

    async fn decide(&self, tenant: &str, decision: ReviewDecision, key: Option<&IdempotencyKey>) -> ServiceResult<Run> {
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
        let due: Vec<(SqlUuid, String)> = sqlx::query_as(
            "SELECT id, tenant_id FROM reviews WHERE status = 'pending' AND deadline <= $1 \
             ORDER BY deadline LIMIT $2",
        )
        .bind(at)
        .bind(limit)
        .fetch_all(&self.pool)
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
        Ok(expired)
    }

    async fn claim(&self, lease: &Lease) -> ServiceResult<Option<Uuid>> {
        let at = now();
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        let sql = format!(
            "SELECT id FROM runs WHERE status IN ('queued', 'running') AND next_attempt_at <= $1 \
             AND (lease_expires_at IS NULL OR lease_expires_at < $1) ORDER BY created_at LIMIT 1{}",
            D::SKIP_LOCKED
        );
        let found: Option<(SqlUuid,)> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(at).fetch_optional(&mut *tx).await?;
        let Some((id,)) = found else { return Ok(None) };
        sqlx::query("UPDATE runs SET lease_owner = $1, lease_expires_at = $2 WHERE id = $3")
            .bind(&lease.token)
            .bind(at + lease.duration)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(id.0))
    }

    async fn renew(&self, run_id: Uuid, lease: &Lease) -> ServiceResult<bool> {
        let renewed = sqlx::query(
            "UPDATE runs SET lease_expires_at = $1 WHERE id = $2 AND lease_owner = $3 AND status = 'running'",
        )
        .bind(now() + lease.duration)
        .bind(SqlUuid(run_id))
        .bind(&lease.token)
        .execute(&self.pool)
        .await?;
        Ok(D::rows_affected(&renewed) == 1)
    }

    async fn start_step(&self, run_id: Uuid, lease: &Lease) -> ServiceResult<StepWork> {
        let at = now();
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        let Some(run) = Self::lock_run(&mut *tx, run_id).await? else { return Ok(StepWork::Done) };
        // Cancelled, ended, or taken over after our lease expired: hands off.
        let Ok(t) = Self::transition(&mut *tx, &run, Some(lease), RunEventIn::Take).await? else {
            return Ok(StepWork::Done);
        };
        Self::apply(&mut *tx, &run, None, t.changes, at).await?;
        let work = match t.call {
            Some(call) => StepWork::Llm {
                tenant_id: run.tenant_id.clone(),
                agent_id: run.agent_id.0,
                step_index: call.step_index,
                step_id: call.step_id,
                prompt: call.prompt,
                input: call.input,
                attempts: call.attempts,
            },
            None => StepWork::Done,
        };
        tx.commit().await?;
        Ok(work)
    }

    async fn finish_step(
        &self,
        run_id: Uuid,
        lease: &Lease,
        step_index: i32,
        outcome: StepOutcome,
    ) -> ServiceResult<()> {
        let at = now();
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        let Some(run) = Self::lock_run(&mut *tx, run_id).await? else { return Ok(()) };
        let happened = match outcome {
            StepOutcome::Succeeded(output) => RunEventIn::StepSucceeded { index: step_index, output },
            StepOutcome::Failed { error, retriable } => RunEventIn::StepFailed { index: step_index, error, retriable },
        };
        match Self::transition(&mut *tx, &run, Some(lease), happened).await? {
            Ok(t) => Self::apply(&mut *tx, &run, None, t.changes, at).await?,
            // Cancelled while Langflow worked, or taken over: the result is not ours to
            // record (a cancelled run's steps are SKIPPED already).
            Err(Refusal::NotOurs) => {
                tracing::info!(run_id = %run_id, step_index, "step result ignored: the run is no longer this worker's");
                return Ok(());
            }
            Err(_) => return Ok(()),
        }
        tx.commit().await?;
        Ok(())
    }

    async fn scheduled_agents(&self) -> ServiceResult<Vec<ScheduledAgent>> {
        use engarde::proto::workflow::v1 as workflow_pb;
        use prost::Message as _;
        let rows: Vec<(String, SqlUuid, DateTime<Utc>, i64, Vec<u8>, String)> = sqlx::query_as(
            "SELECT tenant_id, id, updated_at, version, source_workflow_config, langflow_workflow_id \
             FROM agents WHERE status = 'active' AND scheduled = TRUE AND source_workflow_config IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut agents = Vec::new();
        for (tenant_id, SqlUuid(agent_id), updated_at, version, config, flow) in rows {
            let Ok(config) = workflow_pb::WorkflowConfig::decode(config.as_slice()) else {
                tracing::warn!(%agent_id, "agent with a corrupt snapshot: its schedules are ignored");
                continue;
            };
            if has_scheduled_trigger(&config) {
                agents.push(ScheduledAgent { tenant_id, agent_id, updated_at, config, has_flow: !flow.is_empty() });
            } else {
                // A row from before the column was written: set it right once, unless
                // the agent has changed since it was read (that change wrote it).
                sqlx::query("UPDATE agents SET scheduled = FALSE WHERE id = $1 AND version = $2")
                    .bind(SqlUuid(agent_id))
                    .bind(version)
                    .execute(&self.pool)
                    .await?;
            }
        }
        Ok(agents)
    }

    async fn fire_tick(&self, agent_id: Uuid, tick: DateTime<Utc>, run: NewRun) -> ServiceResult<TickOutcome> {
        let at = now();
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        let sql = format!("SELECT COUNT(*) FROM runs WHERE agent_id = $1 AND status NOT IN {FINAL}");
        let (going,): (i64,) =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(SqlUuid(agent_id)).fetch_one(&mut *tx).await?;
        let run_id = (going == 0).then_some(run.id);
        // The claim: the first process to insert (agent, tick) fires it.
        let claimed = sqlx::query(
            "INSERT INTO schedule_ticks (agent_id, tick_at, run_id, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (agent_id, tick_at) DO NOTHING",
        )
        .bind(SqlUuid(agent_id))
        .bind(tick)
        .bind(run_id.map(SqlUuid))
        .bind(at)
        .execute(&mut *tx)
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
