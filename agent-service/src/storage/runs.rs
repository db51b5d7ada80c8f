//! Walker runs: runs, their steps and events, in SQL both databases accept, written once over a
//! [`Dialect`]. Every state change and the event that records it are written in one
//! transaction, under the run's row lock, so that a process dying at any moment leaves a
//! consistent run to resume. What the state machine decides is
//! [`run_machine`](crate::domain::run_machine)'s; storage loads, locks and applies it. Reviews
//! ([`super::reviews`]) and schedule ticks ([`super::schedules`]) have files of their own; the
//! one struct below implements them all.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use engarde::kit::dialect::{self, BindKeyset, Conn, Dialect, SqlUuid, Statement};
use engarde::kit::error::{ServiceError, ServiceResult, is_unique_violation};
use engarde::kit::idempotency::IdempotencyKey;
use engarde::kit::pagination::PageRequest;
use uuid::Uuid;

use super::reviews::ReviewRepository;
use super::schedules::ScheduleRepository;
use super::{AgentDialect, json_strings, replayed};
use crate::domain::now;
use crate::domain::run::{NewRun, RunFilter, RunRequestKey};
use crate::domain::run::{
    Review, ReviewAction, Run, RunEvent, RunRules, RunStatus, RunStep, RunTrigger, StepKind, StepStatus,
};
use crate::domain::run_machine::{self, Change, Refusal, RunEventIn, RunState, Transition};

/// A worker's hold on a run: a token of its own per claim, renewed while it works.
#[derive(Debug, Clone)]
pub struct Lease {
    pub token: String,
    pub duration: Duration,
}

/// What a worker is to do after starting the run's next step.
#[derive(Debug, Clone, PartialEq)]
pub enum StepWork {
    /// Nothing more under this claim: the step was done inside the transaction (an output
    /// step), the run now waits for a review, ended, or is no longer this worker's.
    Done,
    /// Call the agent's flow for this llm step, then report with `finish_step`.
    Llm {
        tenant_id: String,
        agent_id: Uuid,
        step_index: i32,
        step_id: String,
        prompt: String,
        input: String,
        attempts: i32,
    },
}

/// How an llm step's call went.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    Succeeded(String),
    /// `retriable`: whether the rules' retries apply (a missing flow is not worth retrying).
    Failed {
        error: String,
        retriable: bool,
    },
}

/// Hears of runs with new committed events where the database does not tell it itself (on
/// SQLite; PostgreSQL's trigger notifies every process). The walker's watch hub implements it;
/// storage knows only this.
pub trait RunAnnouncer: Send + Sync {
    /// `run` has new committed events.
    fn announce(&self, run: Uuid);
    /// Some runs have new committed events (which ones is not known).
    fn announce_all(&self);
}

#[async_trait]
pub trait RunRepository: ReviewRepository + ScheduleRepository {
    /// How many runs there are in each status, and how many reviews are pending (all tenants:
    /// for metrics).
    async fn counts(&self) -> ServiceResult<(Vec<(String, i64)>, i64)>;

    /// Creates the run QUEUED with its steps PENDING and a `run_queued` event. With a key, a
    /// retry answers the run the key started; another request with it is ALREADY_EXISTS.
    async fn create(&self, run: NewRun, key: Option<&RunRequestKey>) -> ServiceResult<Run>;

    /// One run of the tenant, with its steps.
    async fn get(&self, tenant: &str, id: Uuid) -> ServiceResult<Run>;

    /// The run's status, `None` when the tenant has no such run.
    async fn status(&self, tenant: &str, id: Uuid) -> ServiceResult<Option<RunStatus>>;

    /// One page of the tenant's runs, newest first (sort key: created_at, id).
    async fn list(&self, tenant: &str, filter: &RunFilter, page: &PageRequest) -> ServiceResult<Vec<Run>>;

    /// Cancels a run that has not ended: its unfinished steps are SKIPPED and its pending reviews
    /// EXPIRED, atomically. FAILED_PRECONDITION when it has ended.
    async fn cancel(&self, tenant: &str, id: Uuid, reason: &str, key: Option<&IdempotencyKey>) -> ServiceResult<Run>;

    /// The run's events with sequence >= `from`, in order, at most `limit`.
    async fn events(&self, run_id: Uuid, from: i64, limit: i64) -> ServiceResult<Vec<RunEvent>>;

    /// Takes the oldest runnable run (QUEUED or RUNNING, due, with no live lease) under `lease`.
    async fn claim(&self, lease: &Lease) -> ServiceResult<Option<Uuid>>;

    /// Starts the run's next step under the lease, re-checking that the run is still ours and
    /// not cancelled.
    async fn start_step(&self, run_id: Uuid, lease: &Lease) -> ServiceResult<StepWork>;

    /// Extends the lease; false when the run is no longer ours (cancelled, or taken over).
    async fn renew(&self, run_id: Uuid, lease: &Lease) -> ServiceResult<bool>;

    /// Records an llm step's outcome (ignored when the run is no longer ours) and releases the
    /// lease.
    async fn finish_step(
        &self,
        run_id: Uuid,
        lease: &Lease,
        step_index: i32,
        outcome: StepOutcome,
    ) -> ServiceResult<()>;
}

/// The columns of `runs` every query reads, in [`RunRow`]'s order.
const RUN_COLUMNS: &str = "id, tenant_id, agent_id, status, trigger_kind, input, output, error, current_step, \
                           max_retries, approval_required, review_timeout_secs, review_default_action, \
                           scheduled_for, lease_owner, created_at, updated_at, finished_at";

const STEP_COLUMNS: &str = "step_index, step_id, kind, prompt, reviews_index, status, input, output, attempts, error, \
                            started_at, finished_at";

/// The longest detail an event carries (an excerpt of an output or an error).
const DETAIL_CHARS: usize = 200;

pub(super) fn excerpt(text: &str) -> String {
    let mut out: String = text.chars().take(DETAIL_CHARS).collect();
    if text.chars().nth(DETAIL_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// The answer to a caller whose event the state machine refused.
pub(super) fn refused(id: Uuid, refusal: Refusal) -> ServiceError {
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

pub(super) fn corrupt(what: &str, id: SqlUuid) -> ServiceError {
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

/// A step of a page of runs, with the run it belongs to.
#[derive(sqlx::FromRow)]
pub(super) struct PageStepRow {
    run_id: SqlUuid,
    #[sqlx(flatten)]
    step: StepRow,
}

/// Run statuses that have ended, as an SQL list.
pub(super) const FINAL: &str = "('succeeded', 'failed', 'rejected', 'cancelled')";

pub(super) fn not_found(id: Uuid) -> ServiceError {
    ServiceError::not_found(format!("run {id}"))
}

/// The run repository of a dialect.
pub(super) struct SqlRunRepository<D: Dialect> {
    pub(super) pool: sqlx::Pool<D::Db>,
    /// Told of runs with new committed events where the database does not tell the process
    /// itself (SQLite; PostgreSQL's trigger notifies every process).
    announcer: Option<Arc<dyn RunAnnouncer>>,
    dialect: PhantomData<D>,
}

pub(super) type PostgresRunRepository = SqlRunRepository<dialect::Postgres>;
pub(super) type SqliteRunRepository = SqlRunRepository<dialect::Sqlite>;

impl<D: Dialect> SqlRunRepository<D> {
    /// `announcer`: where the database does not announce committed events itself.
    pub fn new(pool: sqlx::Pool<D::Db>, announcer: Option<Arc<dyn RunAnnouncer>>) -> Self {
        Self { pool, announcer, dialect: PhantomData }
    }

    /// Announces `run` when dropped, after the call that may have added events to it returns,
    /// whatever it answers (a needless announcement costs a watcher one read). Processes
    /// sharing one SQLite file do not see each other's events live; a watcher still reads them
    /// when woken for another reason, or when it starts.
    pub(super) fn announcing(&self, run: Uuid) -> Announcing<'_> {
        Announcing { announcer: self.announcer.as_deref(), run: Some(run) }
    }

    /// Announces that some runs (which is not known) have new committed events.
    pub(super) fn announce_all(&self) {
        if let Some(announcer) = &self.announcer {
            announcer.announce_all();
        }
    }
}

/// See [`SqlRunRepository::announcing`].
pub(super) struct Announcing<'a> {
    announcer: Option<&'a dyn RunAnnouncer>,
    run: Option<Uuid>,
}

impl Drop for Announcing<'_> {
    fn drop(&mut self) {
        if let (Some(announcer), Some(run)) = (self.announcer, self.run.take()) {
            announcer.announce(run);
        }
    }
}

impl<D: AgentDialect> SqlRunRepository<D> {
    /// The run's row, locked for the rest of the transaction (PostgreSQL; SQLite's
    /// transaction holds the write lock already).
    pub(super) async fn lock_run(conn: &mut Conn<D>, id: Uuid) -> ServiceResult<Option<RunRow>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1{}", D::LOCK);
        Ok(sqlx::query::<D::Db>(sqlx::AssertSqlSafe(sql)).arg(SqlUuid(id)).fetch_optional_as(conn).await?)
    }

    async fn read_run_row(conn: &mut Conn<D>, tenant: &str, id: Uuid) -> ServiceResult<Option<RunRow>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1 AND tenant_id = $2");
        Ok(sqlx::query::<D::Db>(sqlx::AssertSqlSafe(sql)).arg(SqlUuid(id)).arg(tenant).fetch_optional_as(conn).await?)
    }

    async fn steps(conn: &mut Conn<D>, run_id: SqlUuid) -> ServiceResult<Vec<RunStep>> {
        let sql = format!("SELECT {STEP_COLUMNS} FROM run_steps WHERE run_id = $1 ORDER BY step_index");
        let rows: Vec<StepRow> = sqlx::query::<D::Db>(sqlx::AssertSqlSafe(sql)).arg(run_id).fetch_all_as(conn).await?;
        rows.into_iter().map(|r| r.into_step(run_id)).collect()
    }

    async fn with_steps(conn: &mut Conn<D>, row: RunRow) -> ServiceResult<Run> {
        let steps = Self::steps(conn, row.id).await?;
        row.into_run(steps)
    }

    pub(super) async fn read_run(conn: &mut Conn<D>, tenant: &str, id: Uuid) -> ServiceResult<Run> {
        let row = Self::read_run_row(conn, tenant, id).await?.ok_or_else(|| not_found(id))?;
        Self::with_steps(conn, row).await
    }

    /// Appends an event: number 1 + the run's last. Callers hold the run's lock.
    pub(super) async fn event(
        conn: &mut Conn<D>,
        run_id: SqlUuid,
        kind: &str,
        step_id: &str,
        detail: &str,
        at: DateTime<Utc>,
    ) -> ServiceResult<()> {
        sqlx::query::<D::Db>(
            "INSERT INTO run_events (run_id, sequence, kind, step_id, detail, created_at) \
             SELECT $1, COALESCE(MAX(sequence), 0) + 1, $2, $3, $4, $5 FROM run_events WHERE run_id = $1",
        )
        .arg(run_id)
        .arg(kind)
        .arg(step_id)
        .arg(excerpt(detail))
        .arg(at)
        .run(conn)
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
        sqlx::query::<D::Db>(
            "UPDATE run_steps SET status = $1, output = COALESCE($2, output), error = $3, \
             finished_at = COALESCE($4, finished_at) WHERE run_id = $5 AND step_index = $6",
        )
        .arg(status.as_str())
        .arg(output)
        .arg(error)
        .arg(finished)
        .arg(run_id)
        .arg(index)
        .run(conn)
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
        sqlx::query::<D::Db>(
            "UPDATE runs SET status = $1, error = $2, finished_at = $3, updated_at = $3, \
             lease_owner = NULL, lease_expires_at = NULL WHERE id = $4",
        )
        .arg(status.as_str())
        .arg(error)
        .arg(at)
        .arg(run_id)
        .run(&mut *conn)
        .await?;
        sqlx::query::<D::Db>(
            "UPDATE run_steps SET status = 'skipped', finished_at = CASE WHEN status = 'pending' \
             THEN finished_at ELSE $1 END WHERE run_id = $2 AND status IN ('pending', 'running', 'waiting_review')",
        )
        .arg(at)
        .arg(run_id)
        .run(&mut *conn)
        .await?;
        sqlx::query::<D::Db>(
            "UPDATE reviews SET status = 'expired', decided_at = $1 WHERE run_id = $2 AND status = 'pending'",
        )
        .arg(at)
        .arg(run_id)
        .run(conn)
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
        sqlx::query::<D::Db>(
            "INSERT INTO reviews (id, tenant_id, run_id, agent_id, step_index, step_id, status, output, \
             deadline, default_action, created_at) VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8, $9, $10)",
        )
        .arg(SqlUuid(review_id))
        .arg(&run.tenant_id)
        .arg(run.id)
        .arg(run.agent_id)
        .arg(index)
        .arg(step_id)
        .arg(text)
        .arg(at + chrono::Duration::seconds(rules.review_timeout_secs))
        .arg(rules.review_default_action.as_str())
        .arg(at)
        .run(&mut *conn)
        .await?;
        sqlx::query::<D::Db>(
            "UPDATE runs SET status = 'waiting_review', updated_at = $1, lease_owner = NULL, \
             lease_expires_at = NULL WHERE id = $2",
        )
        .arg(at)
        .arg(run.id)
        .run(&mut *conn)
        .await?;
        Self::event(conn, run.id, "review_requested", step_id, &format!("review {review_id}"), at).await
    }

    /// Writes what the state machine decided, in its order. Callers hold the run's lock;
    /// `review` is the review a decision is about.
    pub(super) async fn apply(
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
                    sqlx::query::<D::Db>("UPDATE runs SET status = 'running', updated_at = $1 WHERE id = $2")
                        .arg(at)
                        .arg(run_id)
                        .run(&mut *conn)
                        .await?;
                }
                Change::StepStarted { index, status, input } => {
                    sqlx::query::<D::Db>(
                        "UPDATE run_steps SET status = $1, attempts = attempts + 1, input = $2, error = '', \
                         started_at = $3, finished_at = NULL WHERE run_id = $4 AND step_index = $5",
                    )
                    .arg(status.as_str())
                    .arg(input)
                    .arg(at)
                    .arg(run_id)
                    .arg(index)
                    .run(&mut *conn)
                    .await?;
                }
                Change::SetStep { index, status, output, error, finished } => {
                    let finished = finished.then_some(at);
                    Self::set_step(conn, run_id, index, status, output.as_deref(), &error, finished).await?;
                }
                Change::RunOutput(output) => {
                    sqlx::query::<D::Db>("UPDATE runs SET output = $1 WHERE id = $2")
                        .arg(output)
                        .arg(run_id)
                        .run(&mut *conn)
                        .await?;
                }
                Change::Event { kind, step_id, detail } => {
                    Self::event(conn, run_id, kind, &step_id, &detail, at).await?
                }
                Change::MoveTo { next } => {
                    sqlx::query::<D::Db>(
                        "UPDATE runs SET status = 'running', current_step = $1, next_attempt_at = $2, updated_at = $2, \
                         lease_owner = NULL, lease_expires_at = NULL WHERE id = $3",
                    )
                    .arg(next)
                    .arg(at)
                    .arg(run_id)
                    .run(&mut *conn)
                    .await?;
                }
                Change::Succeed { current_step, output } => {
                    sqlx::query::<D::Db>(
                        "UPDATE runs SET status = 'succeeded', output = $1, current_step = $2, finished_at = $3, \
                         updated_at = $3, lease_owner = NULL, lease_expires_at = NULL WHERE id = $4",
                    )
                    .arg(output)
                    .arg(current_step)
                    .arg(at)
                    .arg(run_id)
                    .run(&mut *conn)
                    .await?;
                }
                Change::RequestReview { index, step_id, text } => {
                    Self::request_review(conn, run, index, &step_id, &text, at).await?
                }
                Change::RetryLater { delay } => {
                    sqlx::query::<D::Db>(
                        "UPDATE runs SET next_attempt_at = $1, updated_at = $2, lease_owner = NULL, \
                         lease_expires_at = NULL WHERE id = $3",
                    )
                    .arg(at + delay)
                    .arg(at)
                    .arg(run_id)
                    .run(&mut *conn)
                    .await?;
                }
                Change::DecideReview { status, edited_output } => {
                    let review = review.ok_or_else(|| {
                        ServiceError::internal(anyhow::anyhow!("run {run_id}: a review decision without a review"))
                    })?;
                    sqlx::query::<D::Db>(
                        "UPDATE reviews SET status = $1, edited_output = $2, decided_at = $3 WHERE id = $4",
                    )
                    .arg(status.as_str())
                    .arg(edited_output)
                    .arg(at)
                    .arg(SqlUuid(review.id))
                    .run(&mut *conn)
                    .await?;
                }
                Change::End { status, error } => Self::end_run(conn, run_id, status, &error, at).await?,
            }
        }
        Ok(())
    }

    /// Loads the run's steps and asks the state machine what `happened` changes.
    pub(super) async fn transition(
        conn: &mut Conn<D>,
        run: &RunRow,
        lease: Option<&Lease>,
        happened: RunEventIn<'_>,
    ) -> ServiceResult<Result<Transition, Refusal>> {
        let steps = Self::steps(conn, run.id).await?;
        let state = run.state(&steps, lease.map(|l| l.token.as_str()))?;
        Ok(run_machine::decide(&state, happened))
    }

    /// Inserts a new run, its steps and its first event.
    pub(super) async fn insert_run(
        conn: &mut Conn<D>,
        run: &NewRun,
        key: Option<&RunRequestKey>,
        at: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        let rules = run.plan.rules;
        sqlx::query::<D::Db>(
            "INSERT INTO runs (id, tenant_id, agent_id, status, trigger_kind, input, max_retries, \
             approval_required, review_timeout_secs, review_default_action, request_id, fingerprint, \
             scheduled_for, next_attempt_at, created_at, updated_at) \
             VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $13)",
        )
        .arg(SqlUuid(run.id))
        .arg(&run.tenant_id)
        .arg(SqlUuid(run.agent_id))
        .arg(run.trigger.as_str())
        .arg(&run.input)
        .arg(rules.max_retries)
        .arg(rules.approval_required)
        .arg(rules.review_timeout_secs)
        .arg(rules.review_default_action.as_str())
        .arg(key.map(|k| k.request_id.as_str()))
        .arg(key.map(|k| k.fingerprint.as_str()))
        .arg(run.scheduled_for)
        .arg(at)
        .run(&mut *conn)
        .await?;
        for (i, step) in run.plan.steps.iter().enumerate() {
            sqlx::query::<D::Db>(
                "INSERT INTO run_steps (run_id, step_index, step_id, kind, prompt, reviews_index, status) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'pending')",
            )
            .arg(SqlUuid(run.id))
            .arg(i as i32)
            .arg(&step.step_id)
            .arg(step.kind.as_str())
            .arg(&step.prompt)
            .arg(step.reviews_index)
            .run(&mut *conn)
            .await?;
        }
        let detail = match run.scheduled_for {
            Some(tick) => format!("scheduled for {}", tick.to_rfc3339()),
            None => String::new(),
        };
        sqlx::query::<D::Db>(
            "INSERT INTO run_events (run_id, sequence, kind, step_id, detail, created_at) \
             VALUES ($1, 1, 'run_queued', '', $2, $3)",
        )
        .arg(SqlUuid(run.id))
        .arg(detail)
        .arg(at)
        .run(conn)
        .await?;
        Ok(())
    }

    /// The run a request key started, or ALREADY_EXISTS when it was another request's.
    async fn run_of_key(conn: &mut Conn<D>, tenant: &str, key: &RunRequestKey) -> ServiceResult<Option<Run>> {
        let found: Option<(SqlUuid, Option<String>)> =
            sqlx::query::<D::Db>("SELECT id, fingerprint FROM runs WHERE tenant_id = $1 AND request_id = $2")
                .arg(tenant)
                .arg(&key.request_id)
                .fetch_optional_as(&mut *conn)
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
impl<D: AgentDialect> RunRepository for SqlRunRepository<D> {
    async fn counts(&self) -> ServiceResult<(Vec<(String, i64)>, i64)> {
        let runs: Vec<(String, i64)> =
            sqlx::query::<D::Db>("SELECT status, COUNT(*) FROM runs GROUP BY status").fetch_all_as(&self.pool).await?;
        let (pending,): (i64,) = sqlx::query::<D::Db>("SELECT COUNT(*) FROM reviews WHERE status = 'pending'")
            .fetch_one_as(&self.pool)
            .await?;
        Ok((runs, pending))
    }

    async fn create(&self, run: NewRun, key: Option<&RunRequestKey>) -> ServiceResult<Run> {
        let _announce = self.announcing(run.id);
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
        let rows: Vec<RunRow> = sqlx::query::<D::Db>(sqlx::AssertSqlSafe(sql))
            .arg(tenant)
            .arg(filter.agent_id.map(SqlUuid))
            .arg(filter.status.map(|s| s.as_str()).unwrap_or(""))
            .bind_keyset(page)?
            .arg(i64::from(page.size))
            .fetch_all_as(&mut *conn)
            .await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        // The page's steps in one query, not one per run.
        let sql = format!(
            "SELECT run_id, {STEP_COLUMNS} FROM run_steps WHERE run_id IN ({}) ORDER BY run_id, step_index",
            D::JSON_UUIDS
        );
        let steps: Vec<PageStepRow> = sqlx::query::<D::Db>(sqlx::AssertSqlSafe(sql))
            .arg(json_strings(rows.iter().map(|r| r.id.0)))
            .fetch_all_as(&mut *conn)
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
        let _announce = self.announcing(id);
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
        let rows: Vec<EventRow> = sqlx::query::<D::Db>(
            "SELECT run_id, sequence, kind, step_id, detail, created_at FROM run_events \
             WHERE run_id = $1 AND sequence >= $2 ORDER BY sequence LIMIT $3",
        )
        .arg(SqlUuid(run_id))
        .arg(from)
        .arg(limit)
        .fetch_all_as(&self.pool)
        .await?;
        rows.into_iter().map(EventRow::into_event).collect()
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
            sqlx::query::<D::Db>(sqlx::AssertSqlSafe(sql)).arg(at).fetch_optional_as(&mut *tx).await?;
        let Some((id,)) = found else { return Ok(None) };
        sqlx::query::<D::Db>("UPDATE runs SET lease_owner = $1, lease_expires_at = $2 WHERE id = $3")
            .arg(&lease.token)
            .arg(at + lease.duration)
            .arg(id)
            .run(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(id.0))
    }

    async fn renew(&self, run_id: Uuid, lease: &Lease) -> ServiceResult<bool> {
        let renewed = sqlx::query::<D::Db>(
            "UPDATE runs SET lease_expires_at = $1 WHERE id = $2 AND lease_owner = $3 AND status = 'running'",
        )
        .arg(now() + lease.duration)
        .arg(SqlUuid(run_id))
        .arg(&lease.token)
        .run(&self.pool)
        .await?;
        Ok(D::rows_affected(&renewed) == 1)
    }

    async fn start_step(&self, run_id: Uuid, lease: &Lease) -> ServiceResult<StepWork> {
        let _announce = self.announcing(run_id);
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
        let _announce = self.announcing(run_id);
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
}
