//! The rows of the execution repository's tables as the database returns them, and their
//! conversion to domain values (a value that does not parse is a corrupt row: INTERNAL). Used by
//! the repository written over any dialect and by PostgreSQL's one-statement finish.

use chrono::{DateTime, Utc};
use engarde::kit::dialect::SqlUuid;
use engarde::kit::error::{ServiceError, ServiceResult};

use crate::domain::execution::{
    Execution, ExecutionStatus, FailureKind, Feedback, MessageRole, Report, Session, SessionMessage,
};
/// The columns of an execution, in [`ExecutionRow`]'s order.
pub(super) const EXECUTION_COLUMNS: &str = "id, tenant_id, agent_id, session_id, step_id, input, output, status, error, error_code, latency_ms, started_at, \
     finished_at";

#[derive(sqlx::FromRow)]
pub(super) struct ExecutionRow {
    id: SqlUuid,
    tenant_id: String,
    agent_id: SqlUuid,
    session_id: String,
    step_id: String,
    input: String,
    output: String,
    status: String,
    error: String,
    error_code: String,
    latency_ms: f64,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

fn corrupt(what: &str, id: SqlUuid) -> ServiceError {
    ServiceError::internal(anyhow::anyhow!("execution {}: corrupt {what} in database", id.0))
}

impl TryFrom<ExecutionRow> for Execution {
    type Error = ServiceError;

    fn try_from(row: ExecutionRow) -> ServiceResult<Self> {
        let failure = match row.error_code.as_str() {
            "" => None,
            code => Some(FailureKind::parse(code).ok_or_else(|| corrupt("error_code", row.id))?),
        };
        Ok(Execution {
            id: row.id.0,
            agent_id: row.agent_id.0,
            status: ExecutionStatus::parse(&row.status).ok_or_else(|| corrupt("status", row.id))?,
            failure,
            tenant_id: row.tenant_id,
            session_id: row.session_id,
            step_id: row.step_id,
            input: row.input,
            output: row.output,
            error: row.error,
            latency_ms: row.latency_ms,
            started_at: row.started_at,
            finished_at: row.finished_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct SessionRow {
    session_id: String,
    message_count: i64,
    last_message_at: DateTime<Utc>,
}

impl From<SessionRow> for Session {
    fn from(row: SessionRow) -> Self {
        Session { session_id: row.session_id, message_count: row.message_count, last_message_at: row.last_message_at }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct MessageRow {
    sequence: i64,
    role: String,
    text: String,
    execution_id: SqlUuid,
    created_at: DateTime<Utc>,
}

impl TryFrom<MessageRow> for SessionMessage {
    type Error = ServiceError;

    fn try_from(row: MessageRow) -> ServiceResult<Self> {
        Ok(SessionMessage {
            sequence: row.sequence,
            role: MessageRole::parse(&row.role).ok_or_else(|| corrupt("message role", row.execution_id))?,
            execution_id: row.execution_id.0,
            text: row.text,
            created_at: row.created_at,
        })
    }
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

#[derive(sqlx::FromRow)]
pub(super) struct ReportRow {
    execution_id: SqlUuid,
    tenant_id: String,
    workflow_id: SqlUuid,
    succeeded: bool,
    credentials: String,
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
            credentials: row.credentials,
            attempts: row.attempts,
        })
    }
}
