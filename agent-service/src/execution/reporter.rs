//! The outbox worker: delivers queued execution reports to workflow-service as this service
//! (its service identity, acting for the report's tenant), so that a report outlives the token
//! of the caller who ran the execution. The reports claimed at once go in one RecordExecutions
//! call per tenant (one RPC and one transaction there, not one per report), or one
//! RecordExecution per report to a workflow-service of a release before RecordExecutions.
//!
//! At least once here, counted once there (recording is idempotent by execution id).
//! Reports are claimed with a lease, so that replicas do not deliver the same ones at the same
//! time (a double delivery is harmless, only wasteful); a failed delivery is retried with
//! exponential backoff; a report whose workflow is gone is dropped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engarde::kit::auth::Tenant;
use engarde::kit::error::{ServiceError, ServiceResult};
use futures::StreamExt as _;
use tokio::sync::Notify;
use uuid::Uuid;

use super::model::{Report, report_backoff};
use crate::domain::now;
use crate::storage::ExecutionRepository;
use crate::workflows::{ATTEMPTS, BatchRecorded, WorkflowClient};

/// Reports claimed at once: at most what one RecordExecutions call takes (500).
const BATCH: i64 = 50;
const _: () = assert!(BATCH <= 500);
/// Calls in flight at once: RecordExecutions calls (one per tenant of the claimed reports), or
/// RecordExecution calls when reporting one by one.
const CONCURRENCY: usize = 8;
/// How long reports go one by one after workflow-service answered RecordExecutions
/// UNIMPLEMENTED, before a batch is tried again (its replicas are being updated meanwhile).
const BATCH_RETRY_AFTER: Duration = Duration::from_secs(300);

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
    /// Whether reports go in batches (RecordExecutions) or one by one.
    pub batches: BatchSupport,
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
        let mut done = Vec::with_capacity(claimed);
        let mut one_by_one = Vec::new();
        if self.batches.in_use(Instant::now()) {
            let delivered: Vec<BatchDelivery> = futures::stream::iter(by_tenant(reports))
                .map(|(tenant, reports)| self.deliver_batch(tenant, reports))
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            for delivery in delivered {
                match delivery {
                    BatchDelivery::Done(ids) => done.extend(ids),
                    BatchDelivery::OneByOne(reports) => one_by_one.extend(reports),
                }
            }
        } else {
            one_by_one = reports;
        }
        let delivered: Vec<Uuid> = futures::stream::iter(one_by_one)
            .map(|report| self.deliver(report))
            .buffer_unordered(CONCURRENCY)
            .filter_map(|done| async move { done })
            .collect()
            .await;
        done.extend(delivered);
        // One statement for the batch, not one per report.
        if let Err(e) = self.executions.reports_delivered(&done).await {
            // The leases run out and the reports are delivered again: harmless.
            tracing::warn!(reports = done.len(), error = %e, "could not forget delivered execution reports");
        }
        Ok(claimed)
    }

    /// Delivers one tenant's reports in one RecordExecutions call; answers the execution ids the
    /// outbox is done with, or the reports to deliver one by one (workflow-service does not know
    /// RecordExecutions).
    async fn deliver_batch(&self, tenant: String, reports: Vec<Report>) -> BatchDelivery {
        let outcomes = match Tenant::parse(&tenant) {
            Ok(tenant) => self.workflows.record_executions(tenant, &reports).await,
            Err(e) => Err(ServiceError::internal(anyhow::anyhow!("stored tenant {tenant:?}: {e}"))),
        };
        let outcomes = match outcomes {
            Ok(BatchRecorded::Each(outcomes)) => outcomes,
            Ok(BatchRecorded::Unsupported) => {
                if self.batches.unsupported(Instant::now()) {
                    tracing::info!(
                        retry_in_secs = BATCH_RETRY_AFTER.as_secs(),
                        "workflow-service does not know RecordExecutions (an older release): \
                         delivering execution reports one by one for now"
                    );
                }
                return BatchDelivery::OneByOne(reports);
            }
            // The whole call failed: each report is retried after its own backoff (whatever
            // the error says, it is not about any one report).
            Err(e) => {
                for report in &reports {
                    self.retry_later(report, &e).await;
                }
                return BatchDelivery::Done(Vec::new());
            }
        };
        let mut done = Vec::with_capacity(reports.len());
        for (report, outcome) in reports.into_iter().zip(outcomes) {
            done.extend(self.settle(report, outcome).await);
        }
        BatchDelivery::Done(done)
    }

    /// Delivers one report (RecordExecution); answers its execution id when the outbox is done
    /// with it, `None` when it is to be retried.
    async fn deliver(&self, report: Report) -> Option<Uuid> {
        let outcome = match Tenant::parse(&report.tenant_id) {
            Ok(tenant) => {
                self.workflows.record_execution(tenant, report.workflow_id, report.execution_id, report.succeeded).await
            }
            Err(e) => Err(ServiceError::internal(anyhow::anyhow!("stored tenant {:?}: {e}", report.tenant_id))),
        };
        self.settle(report, outcome).await
    }

    /// Acts on a report's delivery `outcome`; answers its execution id when the outbox is done
    /// with it (delivered, or dropped as undeliverable), `None` when it is to be retried.
    async fn settle(&self, report: Report, outcome: ServiceResult<bool>) -> Option<Uuid> {
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
                self.retry_later(&report, &e).await;
                None
            }
        }
    }

    /// Reschedules an undelivered report, after its backoff.
    async fn retry_later(&self, report: &Report, error: &ServiceError) {
        let attempts = report.attempts + 1;
        let retry_in = report_backoff(attempts);
        tracing::warn!(
            execution_id = %report.execution_id, attempts, retry_in_secs = retry_in.as_secs(), error = %error,
            "execution report not delivered; will retry"
        );
        let retry_at = now() + chrono::Duration::from_std(retry_in).unwrap_or(chrono::Duration::seconds(60));
        if let Err(e) = self.executions.report_failed(report.execution_id, &error.to_string(), retry_at).await {
            // The lease runs out and the report is delivered again: harmless.
            tracing::warn!(execution_id = %report.execution_id, error = %e, "could not update the outbox");
        }
    }
}

/// What delivering one tenant's batch came to.
enum BatchDelivery {
    /// The execution ids the outbox is done with (the others were rescheduled).
    Done(Vec<Uuid>),
    /// Not delivered: workflow-service does not know RecordExecutions.
    OneByOne(Vec<Report>),
}

/// The reports by tenant (a RecordExecutions call acts for one), each tenant's in claim order.
fn by_tenant(reports: Vec<Report>) -> BTreeMap<String, Vec<Report>> {
    let mut groups: BTreeMap<String, Vec<Report>> = BTreeMap::new();
    for report in reports {
        groups.entry(report.tenant_id.clone()).or_default().push(report);
    }
    groups
}

/// Whether workflow-service takes batches of reports. A release before RecordExecutions answers
/// UNIMPLEMENTED (during a rolling deploy, some replicas may): reports then go one by one, as
/// before, for [`BATCH_RETRY_AFTER`], and the batch is tried again after that.
#[derive(Debug, Clone, Default)]
pub struct BatchSupport {
    /// Until when reports go one by one.
    one_by_one_until: Arc<Mutex<Option<Instant>>>,
}

impl BatchSupport {
    /// Whether to send batches at `now`.
    fn in_use(&self, now: Instant) -> bool {
        let until = self.one_by_one_until.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        until.is_none_or(|until| now >= until)
    }

    /// Records that workflow-service answered a batch UNIMPLEMENTED at `now`; answers whether
    /// this is news (batches were in use until now), so that it is logged once.
    fn unsupported(&self, now: Instant) -> bool {
        let mut until = self.one_by_one_until.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let news = until.is_none_or(|until| now >= until);
        *until = Some(now + BATCH_RETRY_AFTER);
        news
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_unimplemented_reports_go_one_by_one_until_the_batch_is_tried_again() {
        let batches = BatchSupport::default();
        let start = Instant::now();
        assert!(batches.in_use(start), "batches from the start");
        assert!(batches.unsupported(start), "news: logged");
        assert!(!batches.in_use(start));
        assert!(!batches.in_use(start + BATCH_RETRY_AFTER - Duration::from_secs(1)));
        // Other batches in flight answered UNIMPLEMENTED too: not news, and the window stays.
        assert!(!batches.unsupported(start + Duration::from_secs(1)));
        assert!(!batches.in_use(start + BATCH_RETRY_AFTER));
        assert!(batches.in_use(start + BATCH_RETRY_AFTER + Duration::from_secs(1)), "tried again");
        // Still an old release: news again (the next window is logged once more).
        assert!(batches.unsupported(start + BATCH_RETRY_AFTER + Duration::from_secs(2)));
        assert!(!batches.in_use(start + BATCH_RETRY_AFTER + Duration::from_secs(3)));
    }

    #[test]
    fn reports_are_grouped_by_tenant_in_claim_order() {
        let report = |tenant: &str, n: u128| Report {
            execution_id: Uuid::from_u128(n),
            tenant_id: tenant.into(),
            workflow_id: Uuid::from_u128(100),
            succeeded: true,
            attempts: 0,
        };
        let groups = by_tenant(vec![report("b", 1), report("a", 2), report("b", 3)]);
        let ids: Vec<(String, Vec<u128>)> = groups
            .into_iter()
            .map(|(tenant, reports)| (tenant, reports.iter().map(|r| r.execution_id.as_u128()).collect()))
            .collect();
        assert_eq!(ids, [("a".to_owned(), vec![2]), ("b".to_owned(), vec![1, 3])]);
    }
}
