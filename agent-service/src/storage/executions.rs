//! Where executions, conversation memory, feedback and the outbox of execution reports live:
//! one interface, implemented for PostgreSQL and SQLite in [`super::executions_sql`].

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use engarde::kit::error::ServiceResult;
use engarde::kit::idempotency::IdempotencyKey;
use engarde::kit::pagination::PageRequest;
use uuid::Uuid;

use crate::domain::execution::{
    Execution, ExecutionFilter, Feedback, Finish, Finished, NewExecution, Report, Session, SessionMessage,
};

/// What storing a new execution found.
#[derive(Debug, Clone)]
pub enum Started {
    /// Stored, RUNNING: the caller runs it.
    New(Execution),
    /// Its request id started an execution before (running or finished): the caller answers
    /// that one and runs nothing.
    Existing(Execution),
}

/// A new feedback entry.
#[derive(Debug, Clone)]
pub struct NewFeedback {
    pub id: Uuid,
    pub execution_id: Uuid,
    pub score: i32,
    pub comment: String,
    pub created_at: DateTime<Utc>,
}

/// Storage of executions and what hangs off them. Every read and write of a caller is scoped to
/// its tenant: another tenant's execution, agent or session is NOT_FOUND.
#[async_trait]
pub trait ExecutionRepository: Send + Sync {
    /// The execution a request id started, if any. ALREADY_EXISTS when the id was used for a
    /// different request.
    async fn find_by_request(&self, tenant: &str, key: &IdempotencyKey) -> ServiceResult<Option<Execution>>;

    /// Stores a RUNNING execution, unless its request id started one before (then that one).
    async fn start(&self, new: &NewExecution) -> ServiceResult<Started>;

    /// In one transaction: finishes a RUNNING execution, counts it in its agent's statistics,
    /// appends the conversation's two messages (when it succeeded), queues its report to
    /// workflow-service (when its agent has a source workflow) and, when its flow is gone, moves
    /// the agent to ERROR. `None` when it was no longer running (finished by someone else, e.g.
    /// the janitor): nothing is changed, nothing counted twice.
    async fn finish(&self, finish: &Finish) -> ServiceResult<Option<Finished>>;

    /// Executions of any tenant still RUNNING that started before `before` (at most `limit`).
    async fn stale(&self, before: DateTime<Utc>, limit: i64) -> ServiceResult<Vec<Execution>>;

    /// One execution of the tenant.
    async fn get(&self, tenant: &str, id: Uuid) -> ServiceResult<Execution>;

    /// A page of the tenant's executions, newest first (by start time, then id).
    async fn list(&self, tenant: &str, filter: &ExecutionFilter, page: &PageRequest) -> ServiceResult<Vec<Execution>>;

    /// A page of an agent's sessions, most recently active first.
    async fn sessions(&self, tenant: &str, agent_id: Uuid, page: &PageRequest) -> ServiceResult<Vec<Session>>;

    /// A page of a session's messages, oldest first.
    async fn messages(
        &self,
        tenant: &str,
        agent_id: Uuid,
        session_id: &str,
        page: &PageRequest,
    ) -> ServiceResult<Vec<SessionMessage>>;

    /// Forgets a session's messages; answers how many there were. The executions stay.
    async fn clear_session(
        &self,
        tenant: &str,
        agent_id: Uuid,
        session_id: &str,
        key: Option<&IdempotencyKey>,
    ) -> ServiceResult<i64>;

    /// Stores feedback on a finished execution of the tenant and adds it to the agent's summary.
    async fn add_feedback(
        &self,
        tenant: &str,
        feedback: NewFeedback,
        key: Option<&IdempotencyKey>,
    ) -> ServiceResult<Feedback>;

    /// A page of the feedback on an agent's executions, newest first.
    async fn feedback(&self, tenant: &str, agent_id: Uuid, page: &PageRequest) -> ServiceResult<Vec<Feedback>>;

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
