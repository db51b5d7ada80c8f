//! Walker runs: [`RunRepository`] and its implementation in SQL both databases accept, written
//! once over a [`Dialect`](engarde::kit::dialect::Dialect). Reviews ([`super::reviews`]) and
//! schedule ticks ([`super::schedules`]) have files of their own; what all three share (the
//! struct, the rows, applying the state machine's changes) is [`super::run_store`].

use std::collections::HashMap;

use async_trait::async_trait;
use engarde::kit::dialect::{self, BindKeyset, SqlUuid, Statement};
use engarde::kit::error::{ServiceResult, is_unique_violation};
use engarde::kit::idempotency::IdempotencyKey;
use engarde::kit::pagination::PageRequest;
use uuid::Uuid;

use super::reviews::ReviewRepository;
use super::run_store::{
    EventRow, PageStepRow, RUN_COLUMNS, RunRow, STEP_COLUMNS, SqlRunRepository, not_found, refused,
};
pub use super::run_store::{Lease, RunAnnouncer, StepOutcome, StepWork};
use super::schedules::ScheduleRepository;
use super::{AgentDialect, json_strings, replayed};
use crate::domain::now;
use crate::domain::run::{NewRun, RunFilter, RunRequestKey};
use crate::domain::run::{Run, RunEvent, RunStatus, RunStep};
use crate::domain::run_machine::{Refusal, RunEventIn};

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
        let _span = D::span("runs.create");
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
        let _span = D::span("runs.get");
        let mut conn = self.pool.acquire().await?;
        Self::read_run(&mut *conn, tenant, id).await
    }

    async fn status(&self, tenant: &str, id: Uuid) -> ServiceResult<Option<RunStatus>> {
        let _span = D::span("runs.status");
        let mut conn = self.pool.acquire().await?;
        Self::read_run_row(&mut *conn, tenant, id).await?.map(|r| r.status()).transpose()
    }

    async fn list(&self, tenant: &str, filter: &RunFilter, page: &PageRequest) -> ServiceResult<Vec<Run>> {
        let _span = D::span("runs.list");
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
        let _span = D::span("runs.cancel");
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
        let _span = D::span("runs.events");
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
        let _span = D::span("runs.start_step");
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
        let _span = D::span("runs.finish_step");
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
