//! The run store: the struct every run repository ([`super::runs`], [`super::reviews`],
//! [`super::schedules`]) is implemented on, the rows of `runs`, `run_steps` and `run_events`, and
//! how a decision of the state machine ([`run_machine`](crate::domain::run_machine)) is loaded,
//! locked and applied: every state change and the event that records it in one transaction,
//! under the run's row lock, so that a process dying at any moment leaves a consistent run to
//! resume. Also the worker's side of a claim (its lease, the work it is given, its outcome).

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use engarde::kit::dialect::{self, Conn, Dialect, SqlUuid, Statement};
use engarde::kit::error::{ServiceError, ServiceResult};
use engarde::kit::warm_pool::WarmPool;
use uuid::Uuid;

use super::AgentDialect;
use crate::domain::run::{NewRun, RunRequestKey};
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

/// The columns of `runs` every query reads, in [`RunRow`]'s order.
pub(super) const RUN_COLUMNS: &str = "id, tenant_id, agent_id, status, trigger_kind, input, output, error, current_step, \
                           max_retries, approval_required, review_timeout_secs, review_default_action, \
                           scheduled_for, lease_owner, created_at, updated_at, finished_at";

pub(super) const STEP_COLUMNS: &str = "step_index, step_id, kind, prompt, reviews_index, status, input, output, attempts, error, \
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
    pub(super) id: SqlUuid,
    pub(super) tenant_id: String,
    pub(super) agent_id: SqlUuid,
    pub(super) status: String,
    pub(super) trigger_kind: String,
    pub(super) input: String,
    pub(super) output: String,
    pub(super) error: String,
    pub(super) current_step: i32,
    pub(super) max_retries: i32,
    pub(super) approval_required: bool,
    pub(super) review_timeout_secs: i64,
    pub(super) review_default_action: String,
    pub(super) scheduled_for: Option<DateTime<Utc>>,
    pub(super) lease_owner: Option<String>,
    pub(super) created_at: DateTime<Utc>,
    pub(super) updated_at: DateTime<Utc>,
    pub(super) finished_at: Option<DateTime<Utc>>,
}

impl RunRow {
    pub(super) fn status(&self) -> Result<RunStatus, ServiceError> {
        RunStatus::parse(&self.status).ok_or_else(|| corrupt("status", self.id))
    }

    pub(super) fn rules(&self) -> Result<RunRules, ServiceError> {
        Ok(RunRules {
            max_retries: self.max_retries,
            approval_required: self.approval_required,
            review_timeout_secs: self.review_timeout_secs,
            review_default_action: ReviewAction::parse(&self.review_default_action)
                .ok_or_else(|| corrupt("review_default_action", self.id))?,
        })
    }

    pub(super) fn holds(&self, token: &str) -> bool {
        self.lease_owner.as_deref() == Some(token)
    }

    /// The run as the state machine sees it; `lease_token`: the worker's, for worker events.
    pub(super) fn state<'a>(
        &'a self,
        steps: &'a [RunStep],
        lease_token: Option<&str>,
    ) -> Result<RunState<'a>, ServiceError> {
        Ok(RunState {
            status: self.status()?,
            holds_lease: lease_token.is_some_and(|token| self.holds(token)),
            current_step: self.current_step,
            input: &self.input,
            rules: self.rules()?,
            steps,
        })
    }

    pub(super) fn into_run(self, steps: Vec<RunStep>) -> Result<Run, ServiceError> {
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
    pub(super) step_index: i32,
    pub(super) step_id: String,
    pub(super) kind: String,
    pub(super) prompt: String,
    pub(super) reviews_index: Option<i32>,
    pub(super) status: String,
    pub(super) input: String,
    pub(super) output: String,
    pub(super) attempts: i32,
    pub(super) error: String,
    pub(super) started_at: Option<DateTime<Utc>>,
    pub(super) finished_at: Option<DateTime<Utc>>,
}

impl StepRow {
    pub(super) fn into_step(self, run_id: SqlUuid) -> Result<RunStep, ServiceError> {
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
    pub(super) run_id: SqlUuid,
    pub(super) sequence: i64,
    pub(super) kind: String,
    pub(super) step_id: String,
    pub(super) detail: String,
    pub(super) created_at: DateTime<Utc>,
}

impl EventRow {
    pub(super) fn into_event(self) -> Result<RunEvent, ServiceError> {
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
    pub(super) run_id: SqlUuid,
    #[sqlx(flatten)]
    pub(super) step: StepRow,
}

/// Run statuses that have ended, as an SQL list.
pub(super) const FINAL: &str = "('succeeded', 'failed', 'rejected', 'cancelled')";

pub(super) fn not_found(id: Uuid) -> ServiceError {
    ServiceError::not_found(format!("run {id}"))
}

/// The run repository of a dialect.
pub(super) struct SqlRunRepository<D: Dialect> {
    pub(super) pool: WarmPool<D::Db>,
    /// Told of runs with new committed events where the database does not tell the process
    /// itself (SQLite; PostgreSQL's trigger notifies every process).
    announcer: Option<Arc<dyn RunAnnouncer>>,
    dialect: PhantomData<D>,
}

pub(super) type PostgresRunRepository = SqlRunRepository<dialect::Postgres>;
pub(super) type SqliteRunRepository = SqlRunRepository<dialect::Sqlite>;

impl<D: Dialect> SqlRunRepository<D> {
    /// `announcer`: where the database does not announce committed events itself.
    pub fn new(pool: WarmPool<D::Db>, announcer: Option<Arc<dyn RunAnnouncer>>) -> Self {
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

    pub(super) async fn read_run_row(conn: &mut Conn<D>, tenant: &str, id: Uuid) -> ServiceResult<Option<RunRow>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1 AND tenant_id = $2");
        Ok(sqlx::query::<D::Db>(sqlx::AssertSqlSafe(sql)).arg(SqlUuid(id)).arg(tenant).fetch_optional_as(conn).await?)
    }

    pub(super) async fn steps(conn: &mut Conn<D>, run_id: SqlUuid) -> ServiceResult<Vec<RunStep>> {
        let sql = format!("SELECT {STEP_COLUMNS} FROM run_steps WHERE run_id = $1 ORDER BY step_index");
        let rows: Vec<StepRow> = sqlx::query::<D::Db>(sqlx::AssertSqlSafe(sql)).arg(run_id).fetch_all_as(conn).await?;
        rows.into_iter().map(|r| r.into_step(run_id)).collect()
    }

    pub(super) async fn with_steps(conn: &mut Conn<D>, row: RunRow) -> ServiceResult<Run> {
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

    pub(super) async fn set_step(
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
    pub(super) async fn end_run(
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
    pub(super) async fn request_review(
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
    pub(super) async fn run_of_key(
        conn: &mut Conn<D>,
        tenant: &str,
        key: &RunRequestKey,
    ) -> ServiceResult<Option<Run>> {
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
