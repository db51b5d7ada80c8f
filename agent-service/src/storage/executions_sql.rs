//! The execution repository (executions, sessions, feedback and the report outbox) in SQL both
//! databases accept, written once over a [`Dialect`].
//!
//! Where the databases differ the dialect says so: PostgreSQL locks the rows it is about to
//! change (`FOR UPDATE`) and lets outbox claimers skip each other's rows (`SKIP LOCKED`); SQLite
//! takes its single write lock up front (`BEGIN IMMEDIATE`), which serialises writers anyway.
//! PostgreSQL's one-statement finish is its own ([`super::one_statement_finish`]).
//!
//! Locks are always taken in the same order (execution, agent, session) so that concurrent
//! finishes, feedback and session clearing cannot deadlock.

use std::marker::PhantomData;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use engarde::kit::error::{ServiceError, ServiceResult};
use engarde::kit::idempotency::IdempotencyKey;
use engarde::kit::pagination::PageRequest;
use uuid::Uuid;

use crate::domain::execution::{
    Execution, ExecutionFilter, ExecutionStats, ExecutionStatus, Feedback, Finish, Finished, MessageRole, NewExecution,
    Report, Session, SessionMessage,
};
use crate::domain::{Agent, AgentStatus, lifecycle};
use crate::storage::execution_rows::{EXECUTION_COLUMNS, ExecutionRow, FeedbackRow, MessageRow, ReportRow, SessionRow};
use crate::storage::executions::{ExecutionRepository, NewFeedback, Started};
use crate::storage::one_statement_finish::OneStatementFinish;
use crate::storage::row::{AgentRow, COLUMNS as AGENT_COLUMNS};
use crate::storage::{json_strings, replayed};
use engarde::kit::dialect::{self, BindKeyset, Dialect, SqlUuid};

/// A connection of the dialect's database.
type Conn<D> = <<D as Dialect>::Db as sqlx::Database>::Connection;
/// A row of the dialect's database.
type Row<D> = <<D as Dialect>::Db as sqlx::Database>::Row;

#[derive(sqlx::FromRow)]
pub(super) struct ExecutionRowWithFingerprint {
    #[sqlx(flatten)]
    execution: ExecutionRow,
    fingerprint: Option<String>,
}

#[derive(sqlx::FromRow)]
pub(super) struct RunningRow {
    #[sqlx(flatten)]
    execution: ExecutionRow,
    report_workflow_id: Option<SqlUuid>,
    report_credentials: String,
}

fn execution_not_found(id: Uuid) -> ServiceError {
    ServiceError::not_found(format!("execution {id}"))
}

/// The execution repository of a dialect.
pub(super) struct SqlExecutionRepository<D: Dialect> {
    pool: sqlx::Pool<D::Db>,
    dialect: PhantomData<D>,
}

pub(super) type PostgresExecutionRepository = SqlExecutionRepository<dialect::Postgres>;
pub(super) type SqliteExecutionRepository = SqlExecutionRepository<dialect::Sqlite>;

impl<D: Dialect> SqlExecutionRepository<D> {
    pub fn new(pool: sqlx::Pool<D::Db>) -> Self {
        Self { pool, dialect: PhantomData }
    }
}

impl<D> SqlExecutionRepository<D>
where
    D: Dialect,
    D::Db: OneStatementFinish,
    for<'c> &'c mut Conn<D>: sqlx::Executor<'c, Database = D::Db>,
    <D::Db as sqlx::Database>::Arguments: sqlx::IntoArguments<D::Db>,
    for<'a> &'a str: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> String: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> i32: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> i64: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> f64: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> bool: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> DateTime<Utc>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> Option<String>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> SqlUuid: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> Option<SqlUuid>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'r> AgentRow: sqlx::FromRow<'r, Row<D>>,
    for<'r> ExecutionRow: sqlx::FromRow<'r, Row<D>>,
    for<'r> ExecutionRowWithFingerprint: sqlx::FromRow<'r, Row<D>>,
    for<'r> RunningRow: sqlx::FromRow<'r, Row<D>>,
    for<'r> SessionRow: sqlx::FromRow<'r, Row<D>>,
    for<'r> MessageRow: sqlx::FromRow<'r, Row<D>>,
    for<'r> FeedbackRow: sqlx::FromRow<'r, Row<D>>,
    for<'r> ReportRow: sqlx::FromRow<'r, Row<D>>,
    for<'r> (i64,): sqlx::FromRow<'r, Row<D>>,
    for<'r> (SqlUuid,): sqlx::FromRow<'r, Row<D>>,
    for<'r> (SqlUuid, String): sqlx::FromRow<'r, Row<D>>,
    for<'r> (String, Option<String>): sqlx::FromRow<'r, Row<D>>,
    for<'r> (i64, i64, f64): sqlx::FromRow<'r, Row<D>>,
{
    /// NOT_FOUND unless the tenant has this agent.
    async fn ensure_agent<'e, E>(executor: E, tenant: &str, agent_id: Uuid) -> ServiceResult<()>
    where
        E: sqlx::Executor<'e, Database = D::Db>,
    {
        let found: Option<(SqlUuid,)> = sqlx::query_as("SELECT id FROM agents WHERE id = $1 AND tenant_id = $2")
            .bind(SqlUuid(agent_id))
            .bind(tenant)
            .fetch_optional(executor)
            .await?;
        found.map(drop).ok_or_else(|| ServiceError::not_found(format!("agent {agent_id}")))
    }

    async fn by_request<'e, E>(executor: E, tenant: &str, key: &IdempotencyKey) -> ServiceResult<Option<Execution>>
    where
        E: sqlx::Executor<'e, Database = D::Db>,
    {
        let sql =
            format!("SELECT {EXECUTION_COLUMNS}, fingerprint FROM executions WHERE tenant_id = $1 AND request_id = $2");
        let row: Option<ExecutionRowWithFingerprint> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(&key.request_id)
            .fetch_optional(executor)
            .await?;
        let Some(row) = row else { return Ok(None) };
        if row.fingerprint.as_deref() != Some(key.fingerprint.as_str()) {
            return Err(ServiceError::AlreadyExists(format!(
                "request_id {:?} was already used for a different request",
                key.request_id
            )));
        }
        Ok(Some(row.execution.try_into()?))
    }

    /// The running execution, locked, with where to report it; `None` once finished.
    async fn running_for_update(
        tx: &mut Conn<D>,
        id: Uuid,
    ) -> ServiceResult<Option<(Execution, Option<SqlUuid>, String)>> {
        let sql = format!(
            "SELECT {EXECUTION_COLUMNS}, report_workflow_id, report_credentials FROM executions \
             WHERE id = $1 AND status = 'running'{}",
            D::LOCK
        );
        let row: Option<RunningRow> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(SqlUuid(id)).fetch_optional(&mut *tx).await?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Some((r.execution.try_into()?, r.report_workflow_id, r.report_credentials))),
        }
    }

    /// Numbers and stores the two messages of a successful execution. The upsert of the
    /// session row locks it, so concurrent executions of one session take turns here.
    async fn remember(tx: &mut Conn<D>, execution: &Execution, output: &str, at: DateTime<Utc>) -> ServiceResult<()> {
        let (last,): (i64,) = sqlx::query_as(
            "INSERT INTO sessions (agent_id, session_id, tenant_id, message_count, last_sequence, last_message_at) \
             VALUES ($1, $2, $3, 2, 2, $4) \
             ON CONFLICT (agent_id, session_id) DO UPDATE SET \
               message_count = sessions.message_count + 2, \
               last_sequence = sessions.last_sequence + 2, \
               last_message_at = excluded.last_message_at \
             RETURNING last_sequence",
        )
        .bind(SqlUuid(execution.agent_id))
        .bind(&execution.session_id)
        .bind(&execution.tenant_id)
        .bind(at)
        .fetch_one(&mut *tx)
        .await?;
        for (sequence, role, text) in
            [(last - 1, MessageRole::User, execution.input.as_str()), (last, MessageRole::Agent, output)]
        {
            sqlx::query(
                "INSERT INTO session_messages (agent_id, session_id, sequence, role, text, execution_id, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(SqlUuid(execution.agent_id))
            .bind(&execution.session_id)
            .bind(sequence)
            .bind(role.as_str())
            .bind(text)
            .bind(SqlUuid(execution.id))
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }

    /// Moves the agent to ERROR because its flow `flow_id` is gone, unless it has been
    /// given another flow since the run started (or is already in ERROR).
    async fn fail_agent(
        tx: &mut Conn<D>,
        execution: &Execution,
        flow_id: &str,
        at: DateTime<Utc>,
    ) -> ServiceResult<()> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1 AND tenant_id = $2{}", D::LOCK);
        let row: Option<AgentRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(SqlUuid(execution.agent_id))
            .bind(&execution.tenant_id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else { return Ok(()) };
        let mut agent = Agent::try_from(row)?;
        if agent.langflow_workflow_id != flow_id || agent.status == AgentStatus::Error {
            return Ok(());
        }
        lifecycle::fail(&mut agent, &format!("its Langflow flow {flow_id} no longer exists"));
        sqlx::query(
            "UPDATE agents SET status = $1, status_reason = $2, version = version + 1, updated_at = $3 \
             WHERE id = $4 AND tenant_id = $5",
        )
        .bind(agent.status.as_str())
        .bind(&agent.status_reason)
        .bind(at)
        .bind(SqlUuid(agent.id))
        .bind(&agent.tenant_id)
        .execute(&mut *tx)
        .await?;
        tracing::warn!(agent_id = %agent.id, flow_id, "agent moved to error: its flow is gone");
        Ok(())
    }
}

#[async_trait]
impl<D> ExecutionRepository for SqlExecutionRepository<D>
where
    D: Dialect,
    D::Db: OneStatementFinish,
    for<'c> &'c mut Conn<D>: sqlx::Executor<'c, Database = D::Db>,
    <D::Db as sqlx::Database>::Arguments: sqlx::IntoArguments<D::Db>,
    for<'a> &'a str: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> String: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> i32: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> i64: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> f64: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> bool: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> DateTime<Utc>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> Option<String>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> SqlUuid: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> Option<SqlUuid>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'r> AgentRow: sqlx::FromRow<'r, Row<D>>,
    for<'r> ExecutionRow: sqlx::FromRow<'r, Row<D>>,
    for<'r> ExecutionRowWithFingerprint: sqlx::FromRow<'r, Row<D>>,
    for<'r> RunningRow: sqlx::FromRow<'r, Row<D>>,
    for<'r> SessionRow: sqlx::FromRow<'r, Row<D>>,
    for<'r> MessageRow: sqlx::FromRow<'r, Row<D>>,
    for<'r> FeedbackRow: sqlx::FromRow<'r, Row<D>>,
    for<'r> ReportRow: sqlx::FromRow<'r, Row<D>>,
    for<'r> (i64,): sqlx::FromRow<'r, Row<D>>,
    for<'r> (SqlUuid,): sqlx::FromRow<'r, Row<D>>,
    for<'r> (SqlUuid, String): sqlx::FromRow<'r, Row<D>>,
    for<'r> (String, Option<String>): sqlx::FromRow<'r, Row<D>>,
    for<'r> (i64, i64, f64): sqlx::FromRow<'r, Row<D>>,
{
    async fn find_by_request(&self, tenant: &str, key: &IdempotencyKey) -> ServiceResult<Option<Execution>> {
        Self::by_request(&self.pool, tenant, key).await
    }

    async fn start(&self, new: &NewExecution) -> ServiceResult<Started> {
        // The RUNNING row acknowledges nothing: if a crash loses it, the caller got
        // no answer and retries. So its commit need not wait for the disk, which
        // saves an execution one of its two flushes. One statement, one round trip
        // (`WHERE true` keeps SQLite from reading the upsert's ON as a join's).
        let inserted = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO executions (id, tenant_id, agent_id, session_id, step_id, input, status, \
             request_id, fingerprint, started_at, report_workflow_id, report_credentials) \
             SELECT $1, $2, $3, $4, $5, $6, 'running', $7, $8, $9, $10, $11 FROM {} \
             WHERE true ON CONFLICT (tenant_id, request_id) DO NOTHING",
            D::RELAXED_FROM
        )))
        .bind(SqlUuid(new.id))
        .bind(&new.tenant_id)
        .bind(SqlUuid(new.agent_id))
        .bind(&new.session_id)
        .bind(&new.step_id)
        .bind(&new.input)
        .bind(new.request.as_ref().map(|k| k.request_id.clone()))
        .bind(new.request.as_ref().map(|k| k.fingerprint.clone()))
        .bind(new.started_at)
        .bind(new.report_workflow_id.map(SqlUuid))
        .bind(&new.report_credentials)
        .execute(&self.pool)
        .await;
        let inserted = match inserted {
            Ok(done) => D::rows_affected(&done),
            // The agent was deleted since it was read.
            Err(sqlx::Error::Database(e)) if e.kind() == sqlx::error::ErrorKind::ForeignKeyViolation => {
                return Err(ServiceError::not_found(format!("agent {}", new.agent_id)));
            }
            Err(e) => return Err(e.into()),
        };
        if inserted == 1 {
            return Ok(Started::New(new.running()));
        }
        let Some(key) = &new.request else {
            return Err(ServiceError::internal(anyhow::anyhow!("execution {} was not stored", new.id)));
        };
        match Self::by_request(&self.pool, &new.tenant_id, key).await? {
            Some(existing) => Ok(Started::Existing(existing)),
            None => {
                Err(ServiceError::Aborted(format!("request_id {:?} is being used concurrently; retry", key.request_id)))
            }
        }
    }

    async fn finish(&self, finish: &Finish) -> ServiceResult<Option<Finished>> {
        // The rare finish that also fails the agent takes the transaction below.
        if finish.flow_gone.is_none()
            && let Some(done) = <D::Db as OneStatementFinish>::finish_in_one_statement(&self.pool, finish).await?
        {
            return Ok(done);
        }
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        let Some((execution, report_workflow_id, credentials)) =
            Self::running_for_update(&mut *tx, finish.execution_id).await?
        else {
            return Ok(None);
        };
        let book = finish.bookkeeping();
        sqlx::query(
            "UPDATE executions SET status = $1, output = $2, error = $3, error_code = $4, latency_ms = $5, \
             finished_at = $6, report_credentials = '' WHERE id = $7",
        )
        .bind(book.status.as_str())
        .bind(book.output)
        .bind(book.error)
        .bind(book.error_code())
        .bind(finish.latency_ms)
        .bind(finish.finished_at)
        .bind(SqlUuid(execution.id))
        .execute(&mut *tx)
        .await?;
        // The agent's row locked (after the execution's, as everywhere), so that
        // concurrent finishes each add their own, none lost.
        let sql = format!(
            "SELECT total_executions, successful_executions, average_response_time_ms FROM agents \
             WHERE id = $1{}",
            D::LOCK
        );
        let stats: Option<(i64, i64, f64)> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(SqlUuid(execution.agent_id)).fetch_optional(&mut *tx).await?;
        if let Some((total, successful, average_response_time_ms)) = stats {
            let stats = ExecutionStats { total, successful, average_response_time_ms }
                .record(book.succeeded, finish.latency_ms);
            sqlx::query(
                "UPDATE agents SET total_executions = $1, successful_executions = $2, \
                 average_response_time_ms = $3 WHERE id = $4",
            )
            .bind(stats.total)
            .bind(stats.successful)
            .bind(stats.average_response_time_ms)
            .bind(SqlUuid(execution.agent_id))
            .execute(&mut *tx)
            .await?;
        }
        if let Some(output) = book.remember {
            Self::remember(&mut *tx, &execution, output, finish.finished_at).await?;
        }
        let reported = match report_workflow_id {
            None => false,
            Some(workflow_id) => {
                sqlx::query(
                    "INSERT INTO execution_reports (execution_id, tenant_id, workflow_id, succeeded, \
                     credentials, attempts, next_attempt_at) VALUES ($1, $2, $3, $4, $5, 0, $6) \
                     ON CONFLICT (execution_id) DO NOTHING",
                )
                .bind(SqlUuid(execution.id))
                .bind(&execution.tenant_id)
                .bind(workflow_id)
                .bind(book.succeeded)
                .bind(credentials)
                .bind(finish.finished_at)
                .execute(&mut *tx)
                .await?;
                true
            }
        };
        if let Some(flow_id) = &finish.flow_gone {
            Self::fail_agent(&mut *tx, &execution, flow_id, finish.finished_at).await?;
        }
        tx.commit().await?;
        Ok(Some(Finished { execution: execution.finished(finish), reported }))
    }

    async fn stale(&self, before: DateTime<Utc>, limit: i64) -> ServiceResult<Vec<Execution>> {
        let sql = format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions WHERE status = 'running' AND started_at < $1 \
             ORDER BY started_at LIMIT $2"
        );
        let rows: Vec<ExecutionRow> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(before).bind(limit).fetch_all(&self.pool).await?;
        rows.into_iter().map(Execution::try_from).collect()
    }

    async fn get(&self, tenant: &str, id: Uuid) -> ServiceResult<Execution> {
        let sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = $1 AND tenant_id = $2");
        let row: Option<ExecutionRow> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(SqlUuid(id)).bind(tenant).fetch_optional(&self.pool).await?;
        row.ok_or_else(|| execution_not_found(id))?.try_into()
    }

    async fn list(&self, tenant: &str, filter: &ExecutionFilter, page: &PageRequest) -> ServiceResult<Vec<Execution>> {
        if let Some(agent_id) = filter.agent_id {
            Self::ensure_agent(&self.pool, tenant, agent_id).await?;
        }
        // One static statement: an empty filter parameter matches everything.
        let sql = format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions \
             WHERE tenant_id = $1 \
               AND ($2 IS NULL OR agent_id = $2) \
               AND ($3 = '' OR session_id = $3) \
               AND ($4 = '' OR status = $4) \
               AND ($5 = 0 OR (started_at, id) < ($6, $7)) \
             ORDER BY started_at DESC, id DESC LIMIT $8"
        );
        let rows: Vec<ExecutionRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(filter.agent_id.map(SqlUuid))
            .bind(filter.session_id.clone().unwrap_or_default())
            .bind(filter.status.map(|s| s.as_str()).unwrap_or(""))
            .bind_keyset(page)?
            .bind(i64::from(page.size))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(Execution::try_from).collect()
    }

    async fn sessions(&self, tenant: &str, agent_id: Uuid, page: &PageRequest) -> ServiceResult<Vec<Session>> {
        Self::ensure_agent(&self.pool, tenant, agent_id).await?;
        let rows: Vec<SessionRow> = sqlx::query_as(
            "SELECT session_id, message_count, last_message_at FROM sessions \
             WHERE agent_id = $1 AND tenant_id = $2 \
               AND ($3 = 0 OR (last_message_at, session_id) < ($4, $5)) \
             ORDER BY last_message_at DESC, session_id DESC LIMIT $6",
        )
        .bind(SqlUuid(agent_id))
        .bind(tenant)
        .bind_time_text_keyset(page)?
        .bind(i64::from(page.size))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Session::from).collect())
    }

    async fn messages(
        &self,
        tenant: &str,
        agent_id: Uuid,
        session_id: &str,
        page: &PageRequest,
    ) -> ServiceResult<Vec<SessionMessage>> {
        Self::ensure_agent(&self.pool, tenant, agent_id).await?;
        let after = page.number_cursor()?;
        let rows: Vec<MessageRow> = sqlx::query_as(
            "SELECT sequence, role, text, execution_id, created_at FROM session_messages \
             WHERE agent_id = $1 AND session_id = $2 AND sequence > $3 ORDER BY sequence LIMIT $4",
        )
        .bind(SqlUuid(agent_id))
        .bind(session_id)
        .bind(after)
        .bind(i64::from(page.size))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(SessionMessage::try_from).collect()
    }

    async fn clear_session(
        &self,
        tenant: &str,
        agent_id: Uuid,
        session_id: &str,
        key: Option<&IdempotencyKey>,
    ) -> ServiceResult<i64> {
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        if let Some(json) = dialect::claim_idempotency::<D>(&mut *tx, tenant, key).await? {
            return replayed(&json);
        }
        Self::ensure_agent(&mut *tx, tenant, agent_id).await?;
        // The session row first: it is the lock a finishing execution holds while it
        // numbers its messages, so none is added between the two deletes.
        sqlx::query("DELETE FROM sessions WHERE agent_id = $1 AND session_id = $2")
            .bind(SqlUuid(agent_id))
            .bind(session_id)
            .execute(&mut *tx)
            .await?;
        let cleared = sqlx::query("DELETE FROM session_messages WHERE agent_id = $1 AND session_id = $2")
            .bind(SqlUuid(agent_id))
            .bind(session_id)
            .execute(&mut *tx)
            .await?;
        let cleared = i64::try_from(D::rows_affected(&cleared)).map_err(ServiceError::internal)?;
        dialect::complete_idempotency::<D::Db>(&mut *tx, tenant, key, &cleared).await?;
        tx.commit().await?;
        Ok(cleared)
    }

    async fn add_feedback(
        &self,
        tenant: &str,
        new: NewFeedback,
        key: Option<&IdempotencyKey>,
    ) -> ServiceResult<Feedback> {
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        if let Some(json) = dialect::claim_idempotency::<D>(&mut *tx, tenant, key).await? {
            return replayed(&json);
        }
        let found: Option<(SqlUuid, String)> =
            sqlx::query_as("SELECT agent_id, status FROM executions WHERE id = $1 AND tenant_id = $2")
                .bind(SqlUuid(new.execution_id))
                .bind(tenant)
                .fetch_optional(&mut *tx)
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
        sqlx::query(
            "INSERT INTO feedback (id, tenant_id, agent_id, execution_id, score, comment, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(SqlUuid(new.id))
        .bind(tenant)
        .bind(SqlUuid(agent_id))
        .bind(SqlUuid(new.execution_id))
        .bind(new.score)
        .bind(&new.comment)
        .bind(new.created_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE agents SET feedback_count = feedback_count + 1, \
             feedback_score_sum = feedback_score_sum + $1 WHERE id = $2",
        )
        .bind(i64::from(new.score))
        .bind(SqlUuid(agent_id))
        .execute(&mut *tx)
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
        Self::ensure_agent(&self.pool, tenant, agent_id).await?;
        let rows: Vec<FeedbackRow> = sqlx::query_as(
            "SELECT id, execution_id, agent_id, score, comment, created_at FROM feedback \
             WHERE agent_id = $1 AND tenant_id = $2 \
               AND ($3 = 0 OR (created_at, id) < ($4, $5)) \
             ORDER BY created_at DESC, id DESC LIMIT $6",
        )
        .bind(SqlUuid(agent_id))
        .bind(tenant)
        .bind_keyset(page)?
        .bind(i64::from(page.size))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Feedback::try_from).collect()
    }

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
             RETURNING execution_id, tenant_id, workflow_id, succeeded, credentials, attempts",
            D::SKIP_LOCKED,
            D::RELAXED_FROM
        );
        let rows: Vec<ReportRow> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(until).bind(now).bind(limit).fetch_all(&self.pool).await?;
        rows.into_iter().map(Report::try_from).collect()
    }

    async fn reports_delivered(&self, execution_ids: &[Uuid]) -> ServiceResult<()> {
        if execution_ids.is_empty() {
            return Ok(());
        }
        // Losing this delete in a crash only delivers the reports again, which
        // workflow-service counts once: no need to wait for the disk.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM execution_reports WHERE execution_id IN ({}) AND EXISTS (SELECT 1 FROM {})",
            D::JSON_UUIDS,
            D::RELAXED_FROM
        )))
        .bind(json_strings(execution_ids))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn pending_reports(&self) -> ServiceResult<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM execution_reports").fetch_one(&self.pool).await?;
        Ok(n)
    }

    async fn report_failed(&self, execution_id: Uuid, error: &str, retry_at: DateTime<Utc>) -> ServiceResult<()> {
        sqlx::query(
            "UPDATE execution_reports SET attempts = attempts + 1, last_error = $1, next_attempt_at = $2 \
             WHERE execution_id = $3",
        )
        .bind(error)
        .bind(retry_at)
        .bind(SqlUuid(execution_id))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
