//! The outbox worker: delivers queued execution reports to workflow-service's RecordExecution,
//! as this service (its service identity, acting for the report's tenant), so that a report
//! outlives the token of the caller who ran the execution.
//!
//! At least once here, counted once there (RecordExecution is idempotent by execution id).
//! Reports are claimed with a lease, so that replicas do not deliver the same ones at the same
//! time (a double delivery is harmless, only wasteful); a failed delivery is retried with
//! exponential backoff; a report whose workflow is gone is dropped.

use std::sync::Arc;
use std::time::Duration;

use engarde::kit::auth::Tenant;
use engarde::kit::error::{ServiceError, ServiceResult};
use futures::StreamExt as _;
use tokio::sync::Notify;
use uuid::Uuid;

use super::model::{Report, report_backoff};
use crate::domain::now;
use crate::storage::ExecutionRepository;
use crate::workflows::{ATTEMPTS, WorkflowClient};

/// Reports claimed at once.
const BATCH: i64 = 50;
/// Deliveries in flight at once.
const CONCURRENCY: usize = 8;

/// Delivers the outbox of execution reports.
#[derive(Clone)]
pub struct Reporter {
    pub executions: Arc<dyn ExecutionRepository>,
    pub workflows: WorkflowClient,
    /// Woken when an execution queued a report.
    pub wake: Arc<Notify>,
    /// How often the outbox is looked at when nothing wakes the worker.
    pub interval: Duration,
    /// How long a wake-up waits for the reports that follow, to deliver them together.
    pub batch_delay: Duration,
    /// How long a claim hides reports from other claimers: longer than a delivery can take.
    pub lease: Duration,
}

impl Reporter {
    /// The lease for a workflow-service call timeout: every attempt of a delivery, and a margin.
    pub fn lease_for(call_timeout: Duration) -> Duration {
        call_timeout * (ATTEMPTS + 1) + Duration::from_secs(5)
    }

    /// Delivers for as long as the process lives.
    pub fn spawn(self) {
        tokio::spawn(async move {
            loop {
                match self.deliver_due().await {
                    // A full batch: more may be due.
                    Ok(n) if n as i64 >= BATCH => continue,
                    Ok(_) => self.publish_pending().await,
                    Err(e) => tracing::warn!(error = %e, "could not read the outbox of execution reports"),
                }
                tokio::select! {
                    _ = self.wake.notified() => tokio::time::sleep(self.batch_delay).await,
                    _ = tokio::time::sleep(self.interval) => {}
                }
            }
        });
    }

    /// Publishes `agent_execution_reports_pending`: the outbox's depth, which an operator
    /// watches to see reports to workflow-service flowing (it returns to 0) or piling up.
    async fn publish_pending(&self) {
        match self.executions.pending_reports().await {
            Ok(n) => metrics::gauge!("agent_execution_reports_pending").set(n as f64),
            Err(e) => tracing::debug!(error = %e, "could not count the outbox for metrics"),
        }
    }

    /// Claims the due reports and delivers them; answers how many were claimed.
    pub async fn deliver_due(&self) -> ServiceResult<usize> {
        let reports = self.executions.claim_reports(BATCH, self.lease).await?;
        let claimed = reports.len();
        let done: Vec<Uuid> = futures::stream::iter(reports)
            .map(|report| self.deliver(report))
            .buffer_unordered(CONCURRENCY)
            .filter_map(|done| async move { done })
            .collect()
            .await;
        // One statement for the batch, not one per report.
        if let Err(e) = self.executions.reports_delivered(&done).await {
            // The leases run out and the reports are delivered again: harmless.
            tracing::warn!(reports = done.len(), error = %e, "could not forget delivered execution reports");
        }
        Ok(claimed)
    }

    /// Delivers one report; answers its execution id when the outbox is done with it (delivered,
    /// or dropped as undeliverable), `None` when it is to be retried.
    async fn deliver(&self, report: Report) -> Option<Uuid> {
        let outcome = match Tenant::parse(&report.tenant_id) {
            Ok(tenant) => {
                self.workflows.record_execution(tenant, report.workflow_id, report.execution_id, report.succeeded).await
            }
            Err(e) => Err(ServiceError::internal(anyhow::anyhow!("stored tenant {:?}: {e}", report.tenant_id))),
        };
        match outcome {
            Ok(counted) => {
                tracing::debug!(execution_id = %report.execution_id, counted, "execution reported");
                Some(report.execution_id)
            }
            // Nothing to count it in any more (the workflow was deleted), or it was counted for
            // another workflow: retrying cannot change that.
            Err(e @ (ServiceError::NotFound(_) | ServiceError::AlreadyExists(_))) => {
                tracing::warn!(
                    execution_id = %report.execution_id, workflow_id = %report.workflow_id, error = %e,
                    "execution report dropped: workflow-service cannot count it"
                );
                Some(report.execution_id)
            }
            Err(e) => {
                let attempts = report.attempts + 1;
                let retry_in = report_backoff(attempts);
                tracing::warn!(
                    execution_id = %report.execution_id, attempts, retry_in_secs = retry_in.as_secs(), error = %e,
                    "execution report not delivered; will retry"
                );
                let retry_at = now() + chrono::Duration::from_std(retry_in).unwrap_or(chrono::Duration::seconds(60));
                if let Err(e) = self.executions.report_failed(report.execution_id, &e.to_string(), retry_at).await {
                    // The lease runs out and the report is delivered again: harmless.
                    tracing::warn!(execution_id = %report.execution_id, error = %e, "could not update the outbox");
                }
                None
            }
        }
    }
}
