//! The Langflow side of AgentService's handlers (DeployAgent, DeleteAgent, LinkAgentFlow,
//! UnlinkAgentFlow, RegenerateAgentFlow, CheckAgentLinks): the steps they share.
//!
//! Langflow is called outside any database transaction; the agent row is then changed with
//! `mutate_agent`, which re-checks the state it depends on (so a concurrent change is ABORTED,
//! not overwritten), and a flow made for a change that did not happen is discarded.

use engarde::kit::error::{ServiceError, ServiceResult};
use engarde::kit::idempotency::IdempotencyKey;
use engarde::proto::agent::v1 as pb;
use uuid::Uuid;

use super::agent_service::AgentApi;
use super::caller::Caller;
use super::convert::agent_to_pb;
use crate::domain::lifecycle;
use crate::domain::{Agent, FlowLink, FlowOrigin};
use crate::storage::{mutate_agent, replayed};

impl AgentApi {
    /// The stored answer of a request id already used, if any (before any Langflow call).
    pub(super) async fn replay_agent(
        &self,
        caller: &Caller,
        key: Option<&IdempotencyKey>,
    ) -> ServiceResult<Option<pb::Agent>> {
        match self.repo.replay(caller.tenant.as_str(), key).await? {
            Some(json) => Ok(Some(agent_to_pb(&replayed::<Agent>(&json)?))),
            None => Ok(None),
        }
    }

    /// Moves an agent whose flow is gone to ERROR, saying so.
    pub(super) async fn mark_flow_missing(&self, caller: &Caller, agent: &Agent) -> ServiceResult<ServiceError> {
        let reason = format!("Langflow flow {} no longer exists", agent.langflow_workflow_id);
        let flow_id = agent.langflow_workflow_id.clone();
        let why = reason.clone();
        mutate_agent(
            self.repo.as_ref(),
            caller.tenant.as_str(),
            agent.id,
            None,
            Box::new(move |a| {
                // Only if it still points at the missing flow: a concurrent relink wins.
                if a.langflow_workflow_id == flow_id {
                    lifecycle::fail(a, &why);
                }
                Ok(())
            }),
        )
        .await?;
        tracing::warn!(agent_id = %agent.id, flow_id = agent.langflow_workflow_id, "agent's flow is gone: agent in ERROR");
        Ok(ServiceError::FailedPrecondition(format!("agent {}: {reason}; it is now in ERROR", agent.id)))
    }

    /// Points the agent at `link` (or at no flow), discarding the flow it owned before once the
    /// change is stored, or `link` itself when it is not.
    pub(super) async fn relink(
        &self,
        caller: &Caller,
        id: Uuid,
        key: Option<&IdempotencyKey>,
        etag: String,
        link: Option<FlowLink>,
    ) -> ServiceResult<Agent> {
        let before = self.repo.get(caller.tenant.as_str(), id).await?;
        let previous = FlowLink { flow_id: before.langflow_workflow_id.clone(), origin: before.flow_origin };
        let new_link = link.clone();
        let expected_flow = previous.flow_id.clone();
        let result = mutate_agent(
            self.repo.as_ref(),
            caller.tenant.as_str(),
            id,
            key,
            Box::new(move |a| {
                lifecycle::ensure_fresh(a, &etag)?;
                if a.langflow_workflow_id != expected_flow {
                    return Err(ServiceError::Aborted(format!("agent {id}'s flow changed meanwhile; retry")));
                }
                let l = new_link.unwrap_or(FlowLink { flow_id: String::new(), origin: FlowOrigin::None });
                a.langflow_workflow_id = l.flow_id;
                a.flow_origin = l.origin;
                lifecycle::flow_changed(a);
                Ok(())
            }),
        )
        .await;
        match &result {
            Ok(agent) if link.as_ref().is_none_or(|l| l.flow_id == agent.langflow_workflow_id) => {
                if !previous.flow_id.is_empty() && previous.flow_id != agent.langflow_workflow_id {
                    self.linker.discard(&previous).await;
                }
            }
            // Not stored (or a replay of another change): the new flow belongs to no agent.
            _ => {
                if let Some(l) = &link {
                    self.linker.discard(l).await;
                }
            }
        }
        result
    }
}
