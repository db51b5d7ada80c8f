//! The rows of the execution repository's tables as the database returns them, and their
//! conversion to domain values (a value that does not parse is a corrupt row: INTERNAL). Used by
//! the repository written over any dialect and by PostgreSQL's one-statement finish.

use chrono::{DateTime, Utc};
use engarde::kit::dialect::SqlUuid;
use engarde::kit::error::{ServiceError, ServiceResult};

use crate::domain::execution::{Execution, ExecutionStatus, FailureKind, TokenUsage};

/// The columns of an execution, in [`ExecutionRow`]'s order.
pub(super) const EXECUTION_COLUMNS: &str = "id, tenant_id, agent_id, session_id, step_id, input, output, status, error, error_code, latency_ms, started_at, \
     finished_at, prompt_tokens, completion_tokens";

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
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
}

pub(super) fn corrupt(what: &str, id: SqlUuid) -> ServiceError {
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
            usage: match (row.prompt_tokens, row.completion_tokens) {
                (None, None) => None,
                (prompt, completion) => {
                    Some(TokenUsage { prompt_tokens: prompt.unwrap_or(0), completion_tokens: completion.unwrap_or(0) })
                }
            },
            started_at: row.started_at,
            finished_at: row.finished_at,
        })
    }
}

/// A database error of a write that stores an execution of `agent_id`: a broken foreign key
/// means the agent was deleted since it was read (NOT_FOUND); anything else is as it is.
pub(super) fn unless_agent_gone(error: sqlx::Error, agent_id: uuid::Uuid) -> ServiceError {
    match error {
        sqlx::Error::Database(e) if e.kind() == sqlx::error::ErrorKind::ForeignKeyViolation => {
            ServiceError::not_found(format!("agent {agent_id}"))
        }
        e => e.into(),
    }
}
