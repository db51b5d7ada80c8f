//! The outbox at scale: a backlog of execution reports (as workflow-service being down for a
//! while leaves one) drained by an agent-service into workflow-service's statistics, timed from
//! the commit that queued them to the outbox found empty, beside the same rows written
//! set-based with psql (in a transaction rolled back).

use std::time::{Duration, Instant};

use sqlx::postgres::PgConnection;

use super::direct;
use super::seed::ONE_TENANT;
use crate::bench::Ctx;

/// How long a drain may take before the benchmark gives up on it.
const DRAIN_LIMIT: Duration = Duration::from_secs(30 * 60);
/// How often the benchmark looks whether the outbox is empty.
const POLL: Duration = Duration::from_millis(25);

/// The newest `$1` seeded executions as reports, each for its agent's workflow.
fn queue_reports(limit: usize) -> String {
    format!(
        "INSERT INTO agent.execution_reports (execution_id, tenant_id, workflow_id, succeeded, attempts, \
         next_attempt_at, last_error) \
         SELECT e.id, e.tenant_id, a.source_workflow_id, e.status = 'succeeded', 0, now(), '' \
         FROM agent.executions e JOIN agent.agents a ON a.id = e.agent_id \
         WHERE e.tenant_id = '{ONE_TENANT}' ORDER BY e.id DESC LIMIT {limit}"
    )
}

/// What delivering the queue does to workflow-service's tables, set-based: each execution
/// recorded once, the statistics of each (workflow, tenant) counted up, the outbox emptied.
const RECORD_ALL: &str = "INSERT INTO workflow.workflow_executions (execution_id, workflow_id, tenant_id, \
     succeeded, recorded_at) SELECT execution_id::text, workflow_id, tenant_id, succeeded, now() \
     FROM agent.execution_reports ON CONFLICT (execution_id) DO NOTHING";
const COUNT_ALL: &str = "INSERT INTO workflow.workflow_statistics (workflow_id, tenant_id, execution_count, \
     success_count) SELECT workflow_id, tenant_id, count(*), count(*) FILTER (WHERE succeeded) \
     FROM agent.execution_reports GROUP BY workflow_id, tenant_id \
     ON CONFLICT (workflow_id, tenant_id) DO UPDATE SET \
     execution_count = workflow_statistics.execution_count + excluded.execution_count, \
     success_count = workflow_statistics.success_count + excluded.success_count";
const FORGET_ALL: &str = "DELETE FROM agent.execution_reports";

/// One drain.
pub struct Drain {
    pub reports: usize,
    pub took: Duration,
    /// The same rows written set-based with psql, in one transaction.
    pub direct: Duration,
}

/// Queues `reports` reports and times an agent-service (calling the workflow-service at
/// `workflow_addr`) delivering them all. No other agent-service may run on the database.
pub async fn measure(
    ctx: &Ctx,
    workflow_addr: std::net::SocketAddr,
    database_url: &str,
    conn: &mut PgConnection,
    reports: usize,
) -> anyhow::Result<Drain> {
    let recorded_before = recorded(conn).await?;
    // The floor first, rolled back: the queue's own INSERT is not part of it.
    let times = direct::once(
        database_url,
        &[
            "BEGIN".into(),
            queue_reports(reports),
            RECORD_ALL.into(),
            COUNT_ALL.into(),
            FORGET_ALL.into(),
            "ROLLBACK".into(),
        ],
        &ctx.log_dir,
    )?;
    let direct: Duration = times[2..5].iter().sum();

    // Looked at every 20 ms, so that the backlog is found as soon as it is committed.
    let ag = ctx
        .start_agent_service(workflow_addr, database_url, "agent", &[("REPORT_INTERVAL_MS", "20".to_owned())])
        .await?;
    let queued = sqlx::query(sqlx::AssertSqlSafe(queue_reports(reports))).execute(&mut *conn).await?.rows_affected();
    let started = Instant::now();
    anyhow::ensure!(queued as usize == reports, "queued {queued} reports of {reports}: too few executions");
    let empty = "SELECT EXISTS (SELECT 1 FROM agent.execution_reports)";
    super::until_none(conn, empty, POLL, DRAIN_LIMIT, "draining the outbox").await?;
    let took = started.elapsed();
    ag.stop().await;
    let counted = recorded(conn).await? - recorded_before;
    anyhow::ensure!(
        counted == reports as i64,
        "{counted} executions recorded in workflow-service of {reports} delivered"
    );
    Ok(Drain { reports, took, direct })
}

/// Executions workflow-service has counted.
async fn recorded(conn: &mut PgConnection) -> anyhow::Result<i64> {
    let (n,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM workflow.workflow_executions").fetch_one(&mut *conn).await?;
    Ok(n)
}
