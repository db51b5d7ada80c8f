//! Executions of agents: one interface, and its implementation in SQL both databases accept,
//! written once over a [`Dialect`]. What hangs off an execution has a file of its own:
//! conversation memory ([`super::sessions`]), feedback ([`super::feedback`]) and the outbox of
//! reports to workflow-service ([`super::outbox`]); the one struct below implements them all.
//!
//! Where the databases differ the dialect says so: PostgreSQL locks the rows it is about to
//! change (`FOR UPDATE`); SQLite takes its single write lock up front (`BEGIN IMMEDIATE`), which
//! serialises writers anyway. PostgreSQL's one-statement finish is its own
//! ([`super::one_statement_finish`]).
//!
//! Locks are always taken in the same order (execution, agent, session) so that concurrent
//! finishes, feedback and session clearing cannot deadlock.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use engarde::kit::dialect::{BindKeyset, Conn, SqlUuid, Statement, Via};
use engarde::kit::error::{ServiceError, ServiceResult};
use engarde::kit::idempotency::IdempotencyKey;
use engarde::kit::pagination::PageRequest;
use uuid::Uuid;

use super::AgentDialect;
use super::execution_rows::{EXECUTION_COLUMNS, ExecutionRow, unless_agent_gone};
use super::execution_store::{SqlExecutionRepository, execution_not_found};
use super::feedback::FeedbackRepository;
use super::one_statement_finish::OneStatementFinish;
use super::outbox::OutboxRepository;
use super::row::{AgentRow, COLUMNS as AGENT_COLUMNS};
use super::sessions::SessionRepository;
use crate::domain::execution::{
    Execution, ExecutionFilter, ExecutionStats, Finish, Finished, MessageRole, NewExecution, Tally,
};
use crate::domain::{Agent, AgentStatus, lifecycle};

/// What storing a new execution found.
#[derive(Debug, Clone)]
pub enum Started {
    /// Stored, RUNNING: the caller runs it.
    New(Execution),
    /// Its request id started an execution before (running or finished): the caller answers
    /// that one and runs nothing.
    Existing(Execution),
}

/// Storage of executions; what hangs off them (sessions, feedback, the report outbox) is in its
/// supertraits, one file each. Every read and write of a caller is scoped to
/// its tenant: another tenant's execution, agent or session is NOT_FOUND.
#[async_trait]
pub trait ExecutionRepository: SessionRepository + FeedbackRepository + OutboxRepository {
    /// The execution a request id started, if any. ALREADY_EXISTS when the id was used for a
    /// different request.
    async fn find_by_request(&self, tenant: &str, key: &IdempotencyKey) -> ServiceResult<Option<Execution>>;

    /// Stores a RUNNING execution, unless its request id started one before (then that one).
    async fn start(&self, new: &NewExecution) -> ServiceResult<Started>;

    /// In one transaction: finishes a RUNNING execution (or stores it finished when it was never
    /// stored, [`Finish::unstored`]: NOT_FOUND when its agent is gone), counts it in its agent's
    /// statistics, appends the conversation's two messages (when it succeeded), queues its report to
    /// workflow-service (when its agent has a source workflow) and, when its flow is gone, moves
    /// the agent to ERROR. `None` when it was no longer running (finished by someone else, e.g.
    /// the janitor) or, never stored, is stored already (a retry of a finish whose commit was
    /// lost in transit): nothing is changed, nothing counted twice.
    async fn finish(&self, finish: &Finish) -> ServiceResult<Option<Finished>>;

    /// [`Self::finish`] of each, all in one transaction with one commit (each agent's
    /// statistics updated once, by the sum of its executions): the answers in `finishes`'
    /// order. An error fails them all and writes nothing.
    async fn finish_together(&self, finishes: &[Finish]) -> ServiceResult<Vec<Option<Finished>>>;

    /// Executions of any tenant still RUNNING that started before `before` (at most `limit`).
    async fn stale(&self, before: DateTime<Utc>, limit: i64) -> ServiceResult<Vec<Execution>>;

    /// One execution of the tenant.
    async fn get(&self, tenant: &str, id: Uuid) -> ServiceResult<Execution>;

    /// A page of the tenant's executions, newest first (by start time, then id).
    async fn list(&self, tenant: &str, filter: &ExecutionFilter, page: &PageRequest) -> ServiceResult<Vec<Execution>>;
}

/// The columns a new execution gives, in [`SqlExecutionRepository::bind_new`]'s order.
const NEW_COLUMNS: &str =
    "id, tenant_id, agent_id, session_id, step_id, input, request_id, fingerprint, started_at, report_workflow_id";

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
}

impl<D: AgentDialect> SqlExecutionRepository<D> {
    async fn by_request(
        executor: impl Into<Via<'_, D::Db>>,
        tenant: &str,
        key: &IdempotencyKey,
    ) -> ServiceResult<Option<Execution>> {
        let sql =
            format!("SELECT {EXECUTION_COLUMNS}, fingerprint FROM executions WHERE tenant_id = $1 AND request_id = $2");
        let row: Option<ExecutionRowWithFingerprint> = sqlx::query::<D::Db>(sqlx::AssertSqlSafe(sql))
            .arg(tenant)
            .arg(&key.request_id)
            .fetch_optional_as(executor)
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
    async fn running_for_update(tx: &mut Conn<D>, id: Uuid) -> ServiceResult<Option<(Execution, Option<SqlUuid>)>> {
        let sql = format!(
            "SELECT {EXECUTION_COLUMNS}, report_workflow_id FROM executions \
             WHERE id = $1 AND status = 'running'{}",
            D::LOCK
        );
        let row: Option<RunningRow> =
            sqlx::query::<D::Db>(sqlx::AssertSqlSafe(sql)).arg(SqlUuid(id)).fetch_optional_as(&mut *tx).await?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Some((r.execution.try_into()?, r.report_workflow_id))),
        }
    }

    /// Stores an execution that was never stored RUNNING as `finish` ended it: one row, written
    /// once. False when it is stored already (a retry of a finish whose commit was lost in
    /// transit: nothing more is written). NOT_FOUND when its agent was deleted since it was read.
    async fn store_finished(tx: &mut Conn<D>, new: &NewExecution, finish: &Finish) -> ServiceResult<bool> {
        let insert = sqlx::query::<D::Db>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO executions (status, output, error, error_code, latency_ms, finished_at, prompt_tokens, \
             completion_tokens, {NEW_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
             ON CONFLICT (id) DO NOTHING"
        )));
        let inserted = Self::bind_new(Self::bind_outcome(insert, finish), new)
            .run(&mut *tx)
            .await
            .map_err(|e| unless_agent_gone(e, new.agent_id))?;
        Ok(D::rows_affected(&inserted) == 1)
    }

    /// Binds the next ten parameters to a new execution's [`NEW_COLUMNS`], in their order.
    fn bind_new<S: Statement<D::Db>>(statement: S, new: &NewExecution) -> S {
        statement
            .arg(SqlUuid(new.id))
            .arg(&new.tenant_id)
            .arg(SqlUuid(new.agent_id))
            .arg(&new.session_id)
            .arg(&new.step_id)
            .arg(&new.input)
            .arg(new.request.as_ref().map(|k| k.request_id.clone()))
            .arg(new.request.as_ref().map(|k| k.fingerprint.clone()))
            .arg(new.started_at)
            .arg(new.report_workflow_id.map(SqlUuid))
    }

    /// Binds, as `$1`–`$8`, the columns a finish writes: status, output, error, error_code,
    /// latency_ms, finished_at, prompt_tokens, completion_tokens.
    fn bind_outcome<S: Statement<D::Db>>(statement: S, finish: &Finish) -> S {
        let book = finish.bookkeeping();
        statement
            .arg(book.status.as_str())
            .arg(book.output)
            .arg(book.error)
            .arg(book.error_code())
            .arg(finish.latency_ms)
            .arg(finish.finished_at)
            .arg(book.usage.map(|u| u.prompt_tokens))
            .arg(book.usage.map(|u| u.completion_tokens))
    }

    /// Numbers and stores the two messages of a successful execution. The upsert of the
    /// session row locks it, so concurrent executions of one session take turns here.
    async fn remember(tx: &mut Conn<D>, execution: &Execution, output: &str, at: DateTime<Utc>) -> ServiceResult<()> {
        let (last,): (i64,) = sqlx::query::<D::Db>(
            "INSERT INTO sessions (agent_id, session_id, tenant_id, message_count, last_sequence, last_message_at) \
             VALUES ($1, $2, $3, 2, 2, $4) \
             ON CONFLICT (agent_id, session_id) DO UPDATE SET \
               message_count = sessions.message_count + 2, \
               last_sequence = sessions.last_sequence + 2, \
               last_message_at = excluded.last_message_at \
             RETURNING last_sequence",
        )
        .arg(SqlUuid(execution.agent_id))
        .arg(&execution.session_id)
        .arg(&execution.tenant_id)
        .arg(at)
        .fetch_one_as(&mut *tx)
        .await?;
        for (sequence, role, text) in
            [(last - 1, MessageRole::User, execution.input.as_str()), (last, MessageRole::Agent, output)]
        {
            sqlx::query::<D::Db>(
                "INSERT INTO session_messages (agent_id, session_id, sequence, role, text, execution_id, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .arg(SqlUuid(execution.agent_id))
            .arg(&execution.session_id)
            .arg(sequence)
            .arg(role.as_str())
            .arg(text)
            .arg(SqlUuid(execution.id))
            .arg(at)
            .run(&mut *tx)
            .await?;
        }
        Ok(())
    }

    /// Records how a running execution ended (or stores it finished, when it was never stored
    /// RUNNING), in the caller's transaction: its row, the conversation (when it succeeded) and
    /// its report to workflow-service (when its agent has a source workflow); not the agent's
    /// statistics, which [`Self::count`] adds. `None` when it was no longer running: nothing is
    /// written.
    async fn record_outcome(tx: &mut Conn<D>, finish: &Finish) -> ServiceResult<Option<Finished>> {
        if let Some(done) =
            <D::Db as OneStatementFinish>::finish_in_one_statement((&mut *tx).into(), finish, false).await?
        {
            return Ok(done);
        }
        let book = finish.bookkeeping();
        let (execution, report_workflow_id) = match &finish.unstored {
            Some(new) => {
                if !Self::store_finished(&mut *tx, new, finish).await? {
                    return Ok(None);
                }
                (new.running(), new.report_workflow_id.map(SqlUuid))
            }
            None => {
                let Some(running) = Self::running_for_update(&mut *tx, finish.execution_id).await? else {
                    return Ok(None);
                };
                let update = sqlx::query::<D::Db>(
                    "UPDATE executions SET status = $1, output = $2, error = $3, error_code = $4, latency_ms = $5, \
                     finished_at = $6, prompt_tokens = $7, completion_tokens = $8 WHERE id = $9",
                );
                Self::bind_outcome(update, finish).arg(SqlUuid(finish.execution_id)).run(&mut *tx).await?;
                running
            }
        };
        if let Some(output) = book.remember {
            Self::remember(&mut *tx, &execution, output, finish.finished_at).await?;
        }
        let reported = match report_workflow_id {
            None => false,
            Some(workflow_id) => {
                sqlx::query::<D::Db>(
                    "INSERT INTO execution_reports (execution_id, tenant_id, workflow_id, succeeded, \
                     attempts, next_attempt_at) VALUES ($1, $2, $3, $4, 0, $5) \
                     ON CONFLICT (execution_id) DO NOTHING",
                )
                .arg(SqlUuid(execution.id))
                .arg(&execution.tenant_id)
                .arg(workflow_id)
                .arg(book.succeeded)
                .arg(finish.finished_at)
                .run(&mut *tx)
                .await?;
                true
            }
        };
        Ok(Some(Finished { execution: execution.finished(finish), reported }))
    }

    /// Adds `tally` (finished executions of the agent) to the agent's statistics: its row
    /// locked, read, and written once, whatever the number of executions.
    async fn count(tx: &mut Conn<D>, agent_id: Uuid, tally: &Tally) -> ServiceResult<()> {
        let sql = format!(
            "SELECT total_executions, successful_executions, average_response_time_ms FROM agents \
             WHERE id = $1{}",
            D::LOCK
        );
        let stats: Option<(i64, i64, f64)> =
            sqlx::query::<D::Db>(sqlx::AssertSqlSafe(sql)).arg(SqlUuid(agent_id)).fetch_optional_as(&mut *tx).await?;
        // An agent deleted meanwhile took its executions with it: nothing to count.
        let Some((total, successful, average_response_time_ms)) = stats else { return Ok(()) };
        let stats = ExecutionStats { total, successful, average_response_time_ms }.record_tally(tally);
        sqlx::query::<D::Db>(
            "UPDATE agents SET total_executions = $1, successful_executions = $2, \
             average_response_time_ms = $3, prompt_tokens = prompt_tokens + $4, \
             completion_tokens = completion_tokens + $5 WHERE id = $6",
        )
        .arg(stats.total)
        .arg(stats.successful)
        .arg(stats.average_response_time_ms)
        .arg(tally.usage.prompt_tokens)
        .arg(tally.usage.completion_tokens)
        .arg(SqlUuid(agent_id))
        .run(&mut *tx)
        .await?;
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
        let row: Option<AgentRow> = sqlx::query::<D::Db>(sqlx::AssertSqlSafe(sql))
            .arg(SqlUuid(execution.agent_id))
            .arg(&execution.tenant_id)
            .fetch_optional_as(&mut *tx)
            .await?;
        let Some(row) = row else { return Ok(()) };
        let mut agent = Agent::try_from(row)?;
        if agent.langflow_workflow_id != flow_id || agent.status == AgentStatus::Error {
            return Ok(());
        }
        lifecycle::fail(&mut agent, &format!("its Langflow flow {flow_id} no longer exists"));
        sqlx::query::<D::Db>(
            "UPDATE agents SET status = $1, status_reason = $2, version = version + 1, updated_at = $3 \
             WHERE id = $4 AND tenant_id = $5",
        )
        .arg(agent.status.as_str())
        .arg(&agent.status_reason)
        .arg(at)
        .arg(SqlUuid(agent.id))
        .arg(&agent.tenant_id)
        .run(&mut *tx)
        .await?;
        tracing::warn!(agent_id = %agent.id, flow_id, "agent moved to error: its flow is gone");
        Ok(())
    }
}

#[async_trait]
impl<D: AgentDialect> ExecutionRepository for SqlExecutionRepository<D> {
    async fn find_by_request(&self, tenant: &str, key: &IdempotencyKey) -> ServiceResult<Option<Execution>> {
        let _span = D::span("executions.find_by_request");
        Self::by_request(&self.pool, tenant, key).await
    }

    async fn start(&self, new: &NewExecution) -> ServiceResult<Started> {
        let _span = D::span("executions.start");
        // The RUNNING row acknowledges nothing: if a crash loses it, the caller got
        // no answer and retries. So its commit need not wait for the disk, which
        // saves an execution one of its two flushes. One statement, one round trip
        // (`WHERE true` keeps SQLite from reading the upsert's ON as a join's).
        let insert = sqlx::query::<D::Db>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO executions ({NEW_COLUMNS}, status) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'running' FROM {} \
             WHERE true ON CONFLICT (tenant_id, request_id) DO NOTHING",
            D::RELAXED_FROM
        )));
        let inserted = Self::bind_new(insert, new).run(&self.pool).await;
        let inserted = D::rows_affected(&inserted.map_err(|e| unless_agent_gone(e, new.agent_id))?);
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
        let _span = D::span("executions.finish");
        // The rare finish that also fails the agent takes the transaction below.
        if finish.flow_gone.is_none()
            && let Some(done) =
                <D::Db as OneStatementFinish>::finish_in_one_statement((&self.pool).into(), finish, true).await?
        {
            return Ok(done);
        }
        Ok(self.finish_together(std::slice::from_ref(finish)).await?.pop().flatten())
    }

    async fn finish_together(&self, finishes: &[Finish]) -> ServiceResult<Vec<Option<Finished>>> {
        let _span = D::span("executions.finish_together");
        // Executions in the order of their ids, then agents in theirs: groups that overlap
        // (another replica's) lock what they share in the same order.
        let mut order: Vec<usize> = (0..finishes.len()).collect();
        order.sort_by_key(|&i| finishes[i].execution_id);
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        let mut done: Vec<Option<Finished>> = vec![None; finishes.len()];
        for i in order {
            done[i] = Self::record_outcome(&mut *tx, &finishes[i]).await?;
        }
        let mut tallies: BTreeMap<Uuid, Tally> = BTreeMap::new();
        for finished in done.iter().flatten() {
            tallies.entry(finished.execution.agent_id).or_default().add(&finished.execution);
        }
        for (agent_id, tally) in &tallies {
            Self::count(&mut *tx, *agent_id, tally).await?;
        }
        for (finish, finished) in finishes.iter().zip(&done) {
            if let (Some(flow_id), Some(finished)) = (&finish.flow_gone, finished) {
                Self::fail_agent(&mut *tx, &finished.execution, flow_id, finish.finished_at).await?;
            }
        }
        tx.commit().await?;
        Ok(done)
    }

    async fn stale(&self, before: DateTime<Utc>, limit: i64) -> ServiceResult<Vec<Execution>> {
        let sql = format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions WHERE status = 'running' AND started_at < $1 \
             ORDER BY started_at LIMIT $2"
        );
        let rows: Vec<ExecutionRow> =
            sqlx::query::<D::Db>(sqlx::AssertSqlSafe(sql)).arg(before).arg(limit).fetch_all_as(&self.pool).await?;
        rows.into_iter().map(Execution::try_from).collect()
    }

    async fn get(&self, tenant: &str, id: Uuid) -> ServiceResult<Execution> {
        let _span = D::span("executions.get");
        let sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = $1 AND tenant_id = $2");
        let row: Option<ExecutionRow> = sqlx::query::<D::Db>(sqlx::AssertSqlSafe(sql))
            .arg(SqlUuid(id))
            .arg(tenant)
            .fetch_optional_as(&self.pool)
            .await?;
        row.ok_or_else(|| execution_not_found(id))?.try_into()
    }

    async fn list(&self, tenant: &str, filter: &ExecutionFilter, page: &PageRequest) -> ServiceResult<Vec<Execution>> {
        let _span = D::span("executions.list");
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
        let rows: Vec<ExecutionRow> = sqlx::query::<D::Db>(sqlx::AssertSqlSafe(sql))
            .arg(tenant)
            .arg(filter.agent_id.map(SqlUuid))
            .arg(filter.session_id.clone().unwrap_or_default())
            .arg(filter.status.map(|s| s.as_str()).unwrap_or(""))
            .bind_keyset(page)?
            .arg(i64::from(page.size))
            .fetch_all_as(&self.pool)
            .await?;
        rows.into_iter().map(Execution::try_from).collect()
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use engarde::kit::db::{DbPool, DbSettings};

    use super::*;
    use crate::domain::execution::{ExecutionStatus, Outcome};
    use crate::storage::{POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS, execution_repository, repository};

    /// agent-service's schema on `url` (in `schema` on PostgreSQL), with one agent of "t1".
    async fn with_an_agent(url: &str, schema: Option<&str>) -> (DbPool, Uuid) {
        let settings = DbSettings { url: url.to_owned(), schema: schema.map(str::to_owned), max_connections: 4 };
        let pool = DbPool::connect(&settings).await.unwrap();
        pool.migrate(schema, &POSTGRES_MIGRATIONS, &SQLITE_MIGRATIONS, std::time::Duration::from_secs(10))
            .await
            .unwrap();
        let agent_id = Uuid::now_v7();
        let insert = "INSERT INTO agents (id, tenant_id, name, agent_type, status, configuration, capabilities, \
                      created_at, updated_at) VALUES ($1, 't1', 'A', 'content_generation', 'active', '{}', '[]', $2, $2)";
        let (id, at) = (SqlUuid(agent_id), Utc::now());
        match &pool {
            DbPool::Postgres(p) => {
                sqlx::query(insert).bind(id).bind(at).execute(p.sqlx()).await.unwrap();
            }
            DbPool::Sqlite(p) => {
                sqlx::query(insert).bind(id).bind(at).execute(p.sqlx()).await.unwrap();
            }
        }
        (pool, agent_id)
    }

    fn never_stored(agent_id: Uuid) -> Finish {
        let new = NewExecution {
            id: Uuid::now_v7(),
            tenant_id: "t1".into(),
            agent_id,
            session_id: "s1".into(),
            step_id: "a".into(),
            input: "in".into(),
            started_at: Utc::now(),
            request: None,
            report_workflow_id: None,
        };
        Finish {
            execution_id: new.id,
            outcome: Outcome::Succeeded { output: "out".into(), usage: None },
            latency_ms: 12.0,
            finished_at: Utc::now(),
            flow_gone: None,
            unstored: Some(Box::new(new)),
        }
    }

    /// A finish of an execution never stored stores it once, finished: alone or in a group,
    /// a retry of it (its first commit's answer lost) changes and counts nothing more.
    async fn a_never_stored_execution_is_stored_and_counted_once(pool: &DbPool, agent_id: Uuid) {
        let executions = execution_repository(pool);
        let alone = never_stored(agent_id);
        let stored = executions.finish(&alone).await.unwrap().expect("stored");
        assert_eq!((stored.execution.status, stored.execution.output.as_str()), (ExecutionStatus::Succeeded, "out"));
        assert!(executions.finish(&alone).await.unwrap().is_none(), "a retry writes nothing");
        let grouped = never_stored(agent_id);
        let done = executions.finish_together(&[grouped.clone(), alone.clone()]).await.unwrap();
        assert!(done[0].is_some() && done[1].is_none(), "{done:?}");
        assert!(executions.finish_together(std::slice::from_ref(&grouped)).await.unwrap()[0].is_none());

        let got = executions.get("t1", grouped.execution_id).await.unwrap();
        assert_eq!((got.status, got.latency_ms), (ExecutionStatus::Succeeded, 12.0));
        let page = PageRequest::parse(50, "", String::new()).unwrap();
        assert_eq!(executions.list("t1", &ExecutionFilter::default(), &page).await.unwrap().len(), 2);
        // Each counted once, on its agent and in its session (two messages each).
        let agent = repository(pool).get("t1", agent_id).await.unwrap();
        assert_eq!((agent.total_executions, agent.successful_executions, agent.average_response_time_ms), (2, 2, 12.0));
        assert_eq!(executions.recent_messages(agent_id, "s1", 50).await.unwrap().len(), 4);
        // Its agent gone meanwhile: NOT_FOUND, nothing stored.
        let orphan = never_stored(Uuid::now_v7());
        assert!(matches!(executions.finish(&orphan).await, Err(ServiceError::NotFound(_))));
        assert!(matches!(executions.get("t1", orphan.execution_id).await, Err(ServiceError::NotFound(_))));
    }

    #[tokio::test]
    async fn a_never_stored_execution_is_stored_once_on_sqlite() {
        let file = std::env::temp_dir().join(format!("engarde-executions-{}.db", Uuid::new_v4().simple()));
        let (pool, agent_id) = with_an_agent(&format!("sqlite://{}", file.display()), None).await;
        a_never_stored_execution_is_stored_and_counted_once(&pool, agent_id).await;
        pool.close().await;
        for suffix in ["", "-wal", "-shm", ".migrate-lock"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
        }
    }

    #[tokio::test]
    async fn a_never_stored_execution_is_stored_once_on_postgres() {
        let url = std::env::var("TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let schema = format!("executions_test_{}", Uuid::new_v4().simple());
        let (pool, agent_id) = with_an_agent(&url, Some(&schema)).await;
        a_never_stored_execution_is_stored_and_counted_once(&pool, agent_id).await;
        if let DbPool::Postgres(p) = &pool {
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE"))).execute(p.sqlx()).await.unwrap();
        }
        pool.close().await;
    }
}
