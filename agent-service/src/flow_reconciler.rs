//! Removes orphan flows: a flow agent-service made for an agent that was never stored (the
//! process died between creating the flow and committing the agent, or the undo of a failed
//! creation could not reach Langflow). Flows made by agent-service carry a mark naming their
//! agent and the deployment that made them ([`crate::flow_mark`]); one with this deployment's
//! mark whose agent is not in this deployment's database, and that is older than a grace period
//! (so that a creation still in progress is left alone), is deleted.
//!
//! Only this deployment's database can tell whether a flow's agent exists, so only its own
//! flows are judged: another deployment's (sharing the Langflow), unmarked ones and legacy ones
//! (marked before deployments were) are never touched. Every replica of a deployment may run
//! it: they share the mark, and deleting is idempotent.

use std::sync::Arc;
use std::time::Duration;

use engarde::kit::error::ServiceResult;

use crate::flow_mark::{DeploymentId, FlowMark};
use crate::langflow::LangflowClient;
use crate::storage::AgentRepository;

#[derive(Clone)]
pub struct FlowReconciler {
    pub langflow: Arc<LangflowClient>,
    pub agents: Arc<dyn AgentRepository>,
    /// The only deployment whose flows this reconciler judges.
    pub deployment: DeploymentId,
    /// How old an orphan must be before it is deleted.
    pub grace: Duration,
}

impl FlowReconciler {
    /// One pass: answers how many orphans were deleted.
    pub async fn reconcile(&self) -> ServiceResult<usize> {
        let flows = self.langflow.list_flows().await?;
        let cutoff = chrono::Utc::now() - chrono::Duration::from_std(self.grace).unwrap_or_default();
        let mut deleted = 0;
        for flow in flows {
            let Some(mark) = FlowMark::parse(&flow.description).filter(|m| m.made_by(&self.deployment)) else {
                continue;
            };
            let agent_id = mark.agent_id;
            if flow.updated_at.is_some_and(|t| t > cutoff) || self.agents.agent_exists(agent_id).await? {
                continue;
            }
            self.langflow.delete_flow(&flow.id).await?;
            tracing::warn!(flow_id = flow.id, %agent_id, "deleted an orphan Langflow flow (its agent was never stored)");
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Runs a pass every `interval` for as long as the process lives.
    pub fn spawn(self, interval: Duration) {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                if let Err(e) = self.reconcile().await {
                    tracing::warn!(error = %e, "orphan flow reconciliation failed; will retry");
                }
            }
        });
    }
}
