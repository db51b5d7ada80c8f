//! Where walker runs live: runs, their steps and events, reviews and schedule ticks. Every
//! state change and the event that records it are written in one transaction, under the run's
//! row lock, so that a process dying at any moment leaves a consistent run to resume.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use engarde::kit::error::ServiceResult;
use engarde::kit::idempotency::IdempotencyKey;
use engarde::kit::pagination::PageRequest;
use uuid::Uuid;

use crate::domain::run::{
    NewRun, Review, ReviewDecision, Run, RunEvent, RunFilter, RunRequestKey, RunStatus, ScheduledAgent, TickOutcome,
};

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
pub trait RunRepository: Send + Sync {
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

    /// The ACTIVE agents (of every tenant) whose snapshot has scheduled triggers.
    async fn scheduled_agents(&self) -> ServiceResult<Vec<ScheduledAgent>>;

    /// Claims the agent's tick and, unless one of its runs is still going, creates `run` in the
    /// same transaction.
    async fn fire_tick(&self, agent_id: Uuid, tick: DateTime<Utc>, run: NewRun) -> ServiceResult<TickOutcome>;
}
