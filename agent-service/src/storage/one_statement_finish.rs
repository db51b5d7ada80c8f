//! A finish of an execution in one statement, one round trip, where the database can: only
//! PostgreSQL (its data-modifying CTEs). The statements in [`super::executions`] do the same on
//! any database, and are what SQLite uses. Inside a group of finishes committed together the
//! statement leaves the agent's statistics alone: the group counts each agent once.

use std::sync::LazyLock;

use engarde::kit::dialect::{SqlUuid, Via};
use engarde::kit::error::ServiceResult;

use crate::domain::execution::{Finish, Finished, MessageRole};
use crate::storage::execution_rows::{EXECUTION_COLUMNS, ExecutionRow, unless_agent_gone};

/// A finish in one statement, one round trip, where the database can: PostgreSQL's
/// data-modifying CTEs make it possible; elsewhere the finish takes the statements of
/// [`ExecutionRepository::finish`](crate::storage::ExecutionRepository::finish).
#[async_trait::async_trait]
pub(super) trait OneStatementFinish: sqlx::Database {
    /// Runs on `via` (the pool: a transaction of its own; a transaction: a member of a group).
    /// `count`: whether it also counts the execution in its agent's statistics. `None`: this
    /// database has no such statement.
    async fn finish_in_one_statement(
        via: Via<'_, Self>,
        finish: &Finish,
        count: bool,
    ) -> ServiceResult<Option<Option<Finished>>>;
}

#[async_trait::async_trait]
impl OneStatementFinish for sqlx::Sqlite {
    async fn finish_in_one_statement(_: Via<'_, Self>, _: &Finish, _: bool) -> ServiceResult<Option<Option<Finished>>> {
        Ok(None)
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct FinishedRow {
    #[sqlx(flatten)]
    execution: ExecutionRow,
    report_workflow_id: Option<SqlUuid>,
}

/// The execution's outcome, the agent's statistics, the conversation and the report,
/// atomically, as the transaction does them (the statistics' running mean is
/// [`ExecutionStats::record`](crate::domain::execution::ExecutionStats::record) spelled in SQL,
/// so that concurrent finishes each add their own without locking the agent first). The
/// messages take their numbers from the session upsert, which locks the session as there. No
/// row: already finished. An execution never stored ([`Finish::unstored`]) is inserted finished
/// instead: one index entry per index, not the RUNNING row's and then the finished row's. No
/// row there: stored already (a retried finish whose first commit was lost in transit).
#[async_trait::async_trait]
impl OneStatementFinish for sqlx::Postgres {
    async fn finish_in_one_statement(
        via: Via<'_, Self>,
        finish: &Finish,
        count: bool,
    ) -> ServiceResult<Option<Option<Finished>>> {
        // Built once each: they are on every execution's path.
        static FINISH_RUNNING: LazyLock<String> = LazyLock::new(|| {
            finish_sql(
                "UPDATE executions AS e SET status = $1, output = $2, error = $3, error_code = $4, \
                   latency_ms = $5, finished_at = $6, prompt_tokens = $10, completion_tokens = $11 \
                 WHERE e.id = $7 AND e.status = 'running' \
                 RETURNING e.*",
            )
        });
        static STORE_FINISHED: LazyLock<String> = LazyLock::new(|| {
            finish_sql(
                "INSERT INTO executions AS e (id, status, output, error, error_code, latency_ms, finished_at, \
                   prompt_tokens, completion_tokens, tenant_id, agent_id, session_id, step_id, input, started_at, \
                   report_workflow_id) \
                 VALUES ($7, $1, $2, $3, $4, $5, $6, $10, $11, $13, $14, $15, $16, $17, $18, $19) \
                 ON CONFLICT (id) DO NOTHING \
                 RETURNING e.*",
            )
        });
        let book = finish.bookkeeping();
        let sql = if finish.unstored.is_some() { &STORE_FINISHED } else { &FINISH_RUNNING };
        let mut row = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(book.status.as_str())
            .bind(book.output)
            .bind(book.error)
            .bind(book.error_code())
            .bind(finish.latency_ms)
            .bind(finish.finished_at)
            .bind(SqlUuid(finish.execution_id))
            .bind(book.succeeded)
            .bind(book.remember.is_some())
            .bind(book.usage.map(|u| u.prompt_tokens))
            .bind(book.usage.map(|u| u.completion_tokens))
            .bind(count);
        if let Some(new) = &finish.unstored {
            row = row
                .bind(&new.tenant_id)
                .bind(SqlUuid(new.agent_id))
                .bind(&new.session_id)
                .bind(&new.step_id)
                .bind(&new.input)
                .bind(new.started_at)
                .bind(new.report_workflow_id.map(SqlUuid));
        }
        let row: Result<Option<FinishedRow>, sqlx::Error> = match via {
            Via::Conn(conn) => row.fetch_optional(conn).await,
            Via::Pool(pool) => row.fetch_optional(pool).await,
            Via::Warm(pool) => {
                let mut lease = pool.lease().await?;
                let done = row.fetch_optional(&mut *lease).await;
                lease.kept_if_ok(done)
            }
        };
        let row = match (row, &finish.unstored) {
            (Ok(row), _) => row,
            (Err(e), Some(new)) => return Err(unless_agent_gone(e, new.agent_id)),
            (Err(e), None) => return Err(e.into()),
        };
        let Some(row) = row else { return Ok(Some(None)) };
        let reported = row.report_workflow_id.is_some();
        Ok(Some(Some(Finished { execution: row.execution.try_into()?, reported })))
    }
}

/// The one-statement finish whose first step, `finished`, is `finished` (a statement returning
/// the execution's row as finished): the agent's statistics, the conversation and the report
/// follow from that row.
fn finish_sql(finished: &str) -> String {
    format!(
        "WITH finished AS ({finished}), \
         counted AS ( \
           UPDATE agents SET total_executions = total_executions + 1, \
             successful_executions = successful_executions + CASE WHEN $8 THEN 1 ELSE 0 END, \
             average_response_time_ms = \
               (average_response_time_ms * total_executions + $5) / (total_executions + 1), \
             prompt_tokens = agents.prompt_tokens + COALESCE($10, 0), \
             completion_tokens = agents.completion_tokens + COALESCE($11, 0) \
           FROM finished WHERE agents.id = finished.agent_id AND $12), \
         session AS ( \
           INSERT INTO sessions (agent_id, session_id, tenant_id, message_count, last_sequence, \
             last_message_at) \
           SELECT agent_id, session_id, tenant_id, 2, 2, $6 FROM finished WHERE $9 \
           ON CONFLICT (agent_id, session_id) DO UPDATE SET \
             message_count = sessions.message_count + 2, \
             last_sequence = sessions.last_sequence + 2, \
             last_message_at = excluded.last_message_at \
           RETURNING last_sequence), \
         remembered AS ( \
           INSERT INTO session_messages (agent_id, session_id, sequence, role, text, execution_id, \
             created_at) \
           SELECT f.agent_id, f.session_id, s.last_sequence + m.shift, m.role, m.text, f.id, $6 \
           FROM finished AS f CROSS JOIN session AS s \
           CROSS JOIN LATERAL (VALUES (-1, '{user}', f.input), (0, '{agent}', $2)) AS m (shift, role, text)), \
         reported AS ( \
           INSERT INTO execution_reports (execution_id, tenant_id, workflow_id, succeeded, \
             attempts, next_attempt_at) \
           SELECT id, tenant_id, report_workflow_id, $8, 0, $6 FROM finished \
           WHERE report_workflow_id IS NOT NULL \
           ON CONFLICT (execution_id) DO NOTHING) \
         SELECT {EXECUTION_COLUMNS}, report_workflow_id FROM finished",
        user = MessageRole::User.as_str(),
        agent = MessageRole::Agent.as_str(),
    )
}
