//! Removes orphan flows: a flow agent-service made for an agent that was never stored (the
//! process died between creating the flow and committing the agent, or the undo of a failed
//! creation could not reach Langflow). Flows made by agent-service name their agent in their
//! description; one whose agent does not exist, and that is older than a grace period (so that a
//! creation still in progress is left alone), is deleted. Flows made by anyone else are never
//! touched. Every replica may run it: deleting is idempotent.

use std::sync::Arc;
use std::time::Duration;

use engarde::kit::error::ServiceResult;

use crate::langflow::LangflowClient;
use crate::linkage::managed_agent;
use crate::storage::AgentRepository;

#[derive(Clone)]
pub struct FlowReconciler {
    pub langflow: Arc<LangflowClient>,
    pub agents: Arc<dyn AgentRepository>,
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
            let Some(agent_id) = managed_agent(&flow.description) else { continue };
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
