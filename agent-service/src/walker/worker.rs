//! Workers: each claims a runnable run, does its next step, records the outcome and lets go;
//! then claims again. One step per claim, so that runs share the workers fairly and a run's
//! progress is in the database after every step.

use std::time::Duration;

use engarde::kit::error::ServiceError;
use uuid::Uuid;

use super::Walker;
use crate::langflow::LangflowError;
use crate::storage::runs::{Lease, StepOutcome, StepWork};

/// How often an idle worker looks for work when nothing wakes it (another process may have
/// queued a run, or a retry's backoff may have passed).
const POLL: Duration = Duration::from_millis(500);

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
        let call = self.call_flow(&tenant_id, agent_id, run_id, step_index, &prompt, &input);
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

    /// One llm step through the agent's flow.
    async fn call_flow(
        &self,
        tenant: &str,
        agent_id: Uuid,
        run_id: Uuid,
        step_index: i32,
        prompt: &str,
        input: &str,
    ) -> StepOutcome {
        let fatal = |error: String| StepOutcome::Failed { error, retriable: false };
        let Some(langflow) = &self.langflow else { return fatal(LangflowError::NotConfigured.to_string()) };
        // The agent as it is now: its current flow and configuration.
        let agent = match self.agents.get(tenant, agent_id).await {
            Ok(agent) => agent,
            Err(ServiceError::NotFound(_)) => return fatal("the agent was deleted".into()),
            Err(e) => return StepOutcome::Failed { error: e.to_string(), retriable: true },
        };
        if agent.langflow_workflow_id.is_empty() {
            return fatal("the agent has no flow".into());
        }
        let tweaks = match crate::execution::run_tweaks(langflow, &agent, prompt, "").await {
            Ok(tweaks) => tweaks,
            Err(e) => {
                return StepOutcome::Failed {
                    retriable: !matches!(e, LangflowError::ModelNotOffered(_)),
                    error: e.to_string(),
                };
            }
        };
        // A session per step, so that Langflow's own records tell the steps (and their
        // retries' duplicates, if any) apart.
        let session = format!("run-{run_id}-{step_index}");
        match langflow.run(&agent.langflow_workflow_id, input, &session, &tweaks, None).await {
            Ok(output) => StepOutcome::Succeeded(output.text),
            Err(e @ (LangflowError::FlowNotFound(_) | LangflowError::NotConfigured)) => fatal(e.to_string()),
            Err(e) => StepOutcome::Failed { error: e.to_string(), retriable: true },
        }
    }
}
