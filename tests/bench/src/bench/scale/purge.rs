//! Retention during a purge, on the seeded data set: GetWorkflow and ExecuteAgent (through the
//! fast fake Langflow), one caller each at the same time, first with an agent-service that keeps
//! everything, then with one whose janitor finds nearly all of the data set expired (retention of
//! a day over thirty days of history) and deletes it while the calls go on: the calls "during"
//! last from the janitor's start until nothing expired is left, the whole purge.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use engarde::proto::agent::v1 as apb;
use engarde::proto::agent::v1::execution_service_client::ExecutionServiceClient;
use engarde::proto::workflow::v1 as pb;
use engarde::proto::workflow::v1::workflow_service_client::WorkflowServiceClient;
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use super::seed::ONE_TENANT;
use super::until_none;
use crate::bench::Ctx;
use crate::bench::execute::{Deployed, deployed_agent, spawn_fake_langflow, start_agent_service};
use crate::bench::load::{self, AsTenant};
use crate::bench::stats::{Samples, Summary};

/// What a purge cost the calls beside it.
pub struct Purge {
    /// (GetWorkflow, ExecuteAgent) without a purge, then during one.
    pub without: (Summary, Summary),
    pub during: (Summary, Summary),
    /// Executions deleted, and over how long: from the janitor's service start until nothing
    /// expired was left (the calls "during" lasted as long, less the service's start).
    pub deleted: i64,
    pub over: Duration,
    pub executions_before: i64,
}

/// The retention settings under which most of the data set is expired.
fn retention_env() -> Vec<(&'static str, String)> {
    vec![
        ("EXECUTION_RETENTION", "1d".into()),
        ("SESSION_MESSAGE_RETENTION", "1d".into()),
        ("RUN_EVENT_RETENTION", "1d".into()),
        ("RETENTION_INTERVAL_SECS", "1".into()),
    ]
}

/// Whether anything the janitor is to delete is left: what its statements select (executions
/// finished and reported, messages, events of ended runs) older than the retention.
const EXPIRED_LEFT: &str = "SELECT EXISTS (SELECT 1 FROM agent.executions e \
       WHERE e.status <> 'running' AND e.finished_at < now() - interval '1 day' \
         AND NOT EXISTS (SELECT 1 FROM agent.execution_reports r WHERE r.execution_id = e.id)) \
     OR EXISTS (SELECT 1 FROM agent.session_messages WHERE created_at < now() - interval '1 day') \
     OR EXISTS (SELECT 1 FROM agent.run_events e JOIN agent.runs r ON r.id = e.run_id \
       WHERE e.created_at < now() - interval '1 day' \
         AND r.status IN ('succeeded', 'failed', 'rejected', 'cancelled'))";

/// The longest a purge may take before the benchmark gives up on it.
const PURGE_LIMIT: Duration = Duration::from_secs(30 * 60);

async fn executions(conn: &mut PgConnection) -> anyhow::Result<i64> {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM agent.executions").fetch_one(conn).await?;
    Ok(n)
}

/// GetWorkflow of `workflow` and ExecuteAgent of `agent`, each called back to back until `until`
/// ends; answers both loads' figures and what `until` answered.
async fn both<T>(
    wf: SocketAddr,
    workflow: Uuid,
    ag: SocketAddr,
    tenant: &AsTenant,
    agent: &str,
    until: impl Future<Output = T>,
) -> anyhow::Result<((Summary, Summary), T)> {
    let channel = load::channels(wf, 1, load::CALL_TIMEOUT).await?.remove(0);
    let mut reader = WorkflowServiceClient::with_interceptor(channel, AsTenant::new(ONE_TENANT)?);
    let channel = load::channels(ag, 1, load::CALL_TIMEOUT).await?.remove(0);
    let mut executor = ExecutionServiceClient::with_interceptor(channel, tenant.clone());
    let request = apb::ExecuteAgentRequest { agent_id: agent.to_owned(), input: "Say ok".into(), ..Default::default() };
    let done = AtomicBool::new(false);
    let ended = async {
        let answer = until.await;
        done.store(true, Ordering::Relaxed);
        answer
    };
    let started = Instant::now();
    let gets = async {
        let mut samples = Samples::default();
        while !done.load(Ordering::Relaxed) {
            let at = Instant::now();
            match reader.get_workflow(pb::GetWorkflowRequest { id: workflow.to_string() }).await {
                Ok(_) => samples.record(at.elapsed()),
                Err(s) => samples.error(load::failure_name(&s)),
            }
        }
        samples.summarize(started.elapsed())
    };
    let executes = async {
        let mut samples = Samples::default();
        while !done.load(Ordering::Relaxed) {
            let at = Instant::now();
            match executor.execute_agent(request.clone()).await {
                Ok(_) => samples.record(at.elapsed()),
                Err(s) => samples.error(load::failure_name(&s)),
            }
        }
        samples.summarize(started.elapsed())
    };
    let (gets, executes, answer) = tokio::join!(gets, executes, ended);
    for (what, s) in [("GetWorkflow", &gets), ("ExecuteAgent", &executes)] {
        anyhow::ensure!(s.failed() == 0 && s.ok > 0, "{what} during the purge benchmark: {} failed", s.errors_text());
    }
    Ok(((gets, executes), answer))
}

/// Both loads: for `window` without a purge, then from the start of an agent-service that
/// purges until nothing expired is left, on the running workflow-service at `wf`, with
/// agent-services of their own on the seeded schema.
pub async fn measure(
    ctx: &Ctx,
    wf: SocketAddr,
    database_url: &str,
    conn: &mut PgConnection,
    workflow: Uuid,
    window: Duration,
) -> anyhow::Result<Purge> {
    let fake = format!("http://{}", spawn_fake_langflow(ctx.workers)?);
    let keeper = start_agent_service(ctx, wf, database_url, &fake, "agent", &[]).await?;
    let Deployed { tenant, made, .. } = deployed_agent(ctx, wf, &keeper, "scale-purge", None).await?;
    let (without, ()) = both(wf, workflow, keeper.addr, &tenant, &made.id, tokio::time::sleep(window))
        .await
        .context("without a purge")?;
    keeper.stop().await;

    let executions_before = executions(conn).await?;
    let janitor_started = Instant::now();
    let purger = start_agent_service(ctx, wf, database_url, &fake, "agent", &retention_env()).await?;
    let purged = until_none(conn, EXPIRED_LEFT, Duration::from_secs(1), PURGE_LIMIT, "the purge");
    let (during, purged) =
        both(wf, workflow, purger.addr, &tenant, &made.id, purged).await.context("during a purge")?;
    let over = janitor_started.elapsed();
    purged?;
    let executions_after = executions(conn).await?;
    purger.stop().await;
    // The calls of the window added executions of their own; those are not expired.
    let added = i64::try_from(during.1.ok).unwrap_or(0);
    Ok(Purge { without, during, deleted: executions_before + added - executions_after, over, executions_before })
}
