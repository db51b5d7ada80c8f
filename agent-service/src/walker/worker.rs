//! Workers: each claims a runnable run, does its next step, records the outcome and lets go;
//! then claims again. One step per claim, so that runs share the workers fairly and a run's
//! progress is in the database after every step.

use std::time::Duration;

use engarde::kit::error::ServiceError;
use engarde::kit::idempotency::IdempotencyKey;
use uuid::Uuid;

use super::Walker;
use crate::domain::now;
use crate::execution::ExecuteRequest;
use crate::execution::model::{Execution, ExecutionStatus, FailureKind, Finish, Outcome};
use crate::storage::runs::{Lease, StepOutcome, StepWork};

/// How often an idle worker looks for work when nothing wakes it (another process may have
/// queued a run, or a retry's backoff may have passed).
const POLL: Duration = Duration::from_millis(500);

/// The error an llm step's execution is recorded with when its worker lost the run mid-step.
const INTERRUPTED: &str = "interrupted: the walker worker running this step stopped or lost its run";

/// An llm step to run, as [`StepWork::Llm`] gave it.
struct LlmStep<'a> {
    tenant: &'a str,
    agent_id: Uuid,
    run_id: Uuid,
    step_index: i32,
    step_id: &'a str,
    prompt: &'a str,
    input: &'a str,
}

/// The request id of the `n`-th execution of a run's step (see [`Walker::run_step`]). The
/// fingerprint is fixed: the id alone says what the execution is.
fn step_key(run_id: Uuid, step_index: i32, n: u32) -> IdempotencyKey {
    IdempotencyKey { request_id: format!("walker:{run_id}:{step_index}:{n}"), fingerprint: "walker step".into() }
}

/// How a failed step execution (or the checks before it) goes on: the rules' retries apply
/// unless retrying cannot help (no flow or no Langflow, an agent that cannot run or is gone,
/// a step its agent no longer has).
fn outcome_of(error: ServiceError) -> StepOutcome {
    let retriable = !matches!(
        error,
        ServiceError::FailedPrecondition(_)
            | ServiceError::NotFound(_)
            | ServiceError::InvalidArgument(_)
            | ServiceError::AlreadyExists(_)
            | ServiceError::PermissionDenied(_)
            | ServiceError::Unauthenticated(_)
    );
    StepOutcome::Failed { error: error.to_string(), retriable }
}

pub fn spawn(walker: Walker, n: usize, lease: Duration) {
    tokio::spawn(async move {
        loop {
            // A fresh token per claim: "still ours" means this very claim, not this worker.
            let held = Lease { token: Uuid::new_v4().to_string(), duration: lease };
            match walker.runs.claim(&held).await {
                Ok(Some(run_id)) => {
                    if let Err(e) = walker.step(run_id, &held).await {
                        // The lease expires and the step is taken up again, under its rules.
                        tracing::warn!(worker = n, run_id = %run_id, error = %e, "walker step failed to record");
                        tokio::time::sleep(POLL).await;
                    }
                }
                Ok(None) => {
                    let woken = walker.wake.notified();
                    let _ = tokio::time::timeout(POLL, woken).await;
                }
                Err(e) => {
                    tracing::warn!(worker = n, error = %e, "could not claim walker work");
                    tokio::time::sleep(POLL * 2).await;
                }
            }
        }
    });
}

impl Walker {
    /// Does the next step of a claimed run.
    async fn step(&self, run_id: Uuid, lease: &Lease) -> Result<(), ServiceError> {
        let StepWork::Llm { tenant_id, agent_id, step_index, step_id, prompt, input, attempts } =
            self.runs.start_step(run_id, lease).await?
        else {
            return Ok(());
        };
        let work = LlmStep {
            tenant: &tenant_id,
            agent_id,
            run_id,
            step_index,
            step_id: &step_id,
            prompt: &prompt,
            input: &input,
        };
        let call = self.run_step(work);
        let Some(outcome) = self.holding(run_id, lease, call).await else {
            tracing::info!(run_id = %run_id, step_id, "run cancelled or taken over while its step ran");
            return Ok(());
        };
        if let StepOutcome::Failed { error, .. } = &outcome {
            tracing::warn!(run_id = %run_id, step_id, attempts, error, "walker step failed");
        }
        self.runs.finish_step(run_id, lease, step_index, outcome).await
    }

    /// Runs `work` while renewing the lease; `None` when the lease was lost meanwhile (the run
    /// was cancelled, or the lease lapsed and another worker took it): the work is abandoned.
    async fn holding<T>(&self, run_id: Uuid, lease: &Lease, work: impl Future<Output = T>) -> Option<T> {
        let renew = async {
            loop {
                tokio::time::sleep(lease.duration / 3).await;
                match self.runs.renew(run_id, lease).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    // The database is away: keep going, the next renewal may succeed.
                    Err(e) => tracing::warn!(run_id = %run_id, error = %e, "could not renew a walker lease"),
                }
            }
        };
        tokio::select! {
            out = work => Some(out),
            () = renew => None,
        }
    }

    /// One llm step, run as an execution of the agent through the [`Executor`]: recorded,
    /// counted on the agent and reported to the workflow's statistics as ExecuteAgent's
    /// executions are, under the run's id as its session (ListExecutions by session shows the
    /// walk).
    ///
    /// Exactly once per step, across worker crashes, lost leases and retries: the step's
    /// executions carry the request ids `walker:{run}:{step}:{n}`, n = 1, 2, …, and before
    /// running, the worker walks them in order:
    /// - one that SUCCEEDED answers the step: the flow is not run again (its worker died, or lost
    ///   the run, after Langflow answered but before the run recorded it);
    /// - one that FAILED was an attempt of its own (counted as a failed execution): look at n+1;
    /// - one still RUNNING belongs to a worker that lost the run (this worker could only claim it
    ///   once that worker's lease lapsed): it is recorded FAILED "interrupted" now, as the
    ///   janitor would later (conditionally: if its worker records it first, that record stands
    ///   and is read again);
    /// - the first unused n is this attempt's id. Two workers that get here at once compute the
    ///   same id, and the executions' unique request id lets only one of them run the flow.
    ///
    /// So each attempt that ran the flow is its own execution, and the step's success is counted
    /// once: a retry never runs a step that already succeeded.
    async fn run_step(&self, work: LlmStep<'_>) -> StepOutcome {
        let executions = self.executor.executions();
        let mut n = 1;
        let key = loop {
            let key = step_key(work.run_id, work.step_index, n);
            let earlier = match executions.find_by_request(work.tenant, &key).await {
                Ok(earlier) => earlier,
                Err(e) => return outcome_of(e),
            };
            let Some(earlier) = earlier else { break key };
            match earlier.status {
                ExecutionStatus::Succeeded => {
                    tracing::info!(run_id = %work.run_id, step_index = work.step_index, execution_id = %earlier.id,
                        "the step succeeded before (its worker lost the run): answered from its execution");
                    return StepOutcome::Succeeded(earlier.output);
                }
                ExecutionStatus::Failed => n += 1,
                ExecutionStatus::Running => {
                    if let Err(e) = self.interrupt(work.tenant, &earlier).await {
                        return outcome_of(e);
                    }
                }
            }
        };
        let request = ExecuteRequest {
            agent_id: work.agent_id,
            input: work.input.to_owned(),
            session_id: work.run_id.to_string(),
            step_id: work.step_id.to_owned(),
            key: Some(key),
            deadline: None,
        };
        match self.executor.execute_step(work.tenant, request, work.prompt.to_owned()).await {
            Ok(execution) => StepOutcome::Succeeded(execution.output),
            Err(e) => outcome_of(e),
        }
    }

    /// Records an earlier attempt's execution, left RUNNING by a worker that lost the run, as
    /// FAILED "interrupted" (counted and reported like any failed execution).
    async fn interrupt(&self, tenant: &str, execution: &Execution) -> Result<(), ServiceError> {
        let finished_at = now();
        let finish = Finish {
            execution_id: execution.id,
            outcome: Outcome::Failed { kind: FailureKind::Unavailable, error: INTERRUPTED.into() },
            latency_ms: (finished_at - execution.started_at).num_milliseconds().max(0) as f64,
            finished_at,
            flow_gone: None,
            unstored: None,
        };
        tracing::warn!(execution_id = %execution.id, agent_id = %execution.agent_id, "walker step execution interrupted");
        self.executor.finish(tenant, finish).await.map(|_| ())
    }
}
