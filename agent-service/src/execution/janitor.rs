//! The janitor: an execution still RUNNING long after any live run would have timed out was cut
//! off by a process that died mid-run. It is recorded FAILED "interrupted", counted and reported
//! like any other. Finishing is conditional on the row still running, so janitors of several
//! replicas (and a run that does finish after all) never count an execution twice.

use std::time::Duration;

use chrono::Utc;

use super::Executor;
use super::model::{FailureKind, Finish, Outcome};
use crate::domain::now;

/// How many stale executions one sweep finishes (the next sweep takes the rest).
const SWEEP_LIMIT: i64 = 200;

/// The error an interrupted execution is recorded with.
pub const INTERRUPTED: &str = "interrupted: the agent-service process running it stopped before Langflow answered";

/// Sweeps at start and then regularly (every minute, or sooner when `stale_after` is short).
pub fn spawn(executor: Executor, stale_after: Duration) {
    let period = (stale_after / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
    tokio::spawn(async move {
        loop {
            match sweep(&executor, stale_after).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(interrupted = n, "recorded interrupted executions as failed"),
                Err(e) => tracing::warn!(error = %e, "could not sweep interrupted executions"),
            }
            tokio::time::sleep(period).await;
        }
    });
}

/// Finishes the executions that have been RUNNING for longer than `stale_after`.
pub async fn sweep(executor: &Executor, stale_after: Duration) -> engarde::kit::error::ServiceResult<usize> {
    let stale_after = chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::MAX);
    let before = Utc::now().checked_sub_signed(stale_after).unwrap_or(chrono::DateTime::UNIX_EPOCH);
    let stale = executor.executions.stale(before, SWEEP_LIMIT).await?;
    let count = stale.len();
    for execution in stale {
        let finished_at = now();
        let latency_ms = (finished_at - execution.started_at).num_milliseconds().max(0) as f64;
        let finish = Finish {
            execution_id: execution.id,
            outcome: Outcome::Failed { kind: FailureKind::Unavailable, error: INTERRUPTED.into() },
            latency_ms,
            finished_at,
            flow_gone: None,
            unstored: None,
        };
        tracing::warn!(execution_id = %execution.id, agent_id = %execution.agent_id, "execution interrupted");
        executor.finish(&execution.tenant_id, finish).await?;
    }
    Ok(count)
}
