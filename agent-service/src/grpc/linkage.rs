//! The Langflow side of agents: DeployAgent's flow check, DeleteAgent's flow removal,
//! LinkAgentFlow, UnlinkAgentFlow, RegenerateAgentFlow and CheckAgentLinks.
//!
//! Langflow is called outside any database transaction; the agent row is then changed with
//! `mutate_agent`, which re-checks the state it depends on (so a concurrent change is ABORTED,
//! not overwritten), and a flow made for a change that did not happen is discarded.

use engarde::kit::error::{ServiceError, ServiceResult};
use engarde::kit::idempotency::IdempotencyKey;
use engarde::kit::pagination::PageRequest;
use engarde::kit::request::parse_id;
use engarde::proto::agent::v1 as pb;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::agent_service::{AgentApi, Caller, handle};
use super::convert::agent_to_pb;
use crate::domain::lifecycle::{self, Transition};
use crate::domain::{Agent, AgentFilter, FlowLink, FlowOrigin};
use crate::linkage::check_flow_id;
use crate::storage::{mutate_agent, replayed};

/// Agents read per page by CheckAgentLinks.
const CHECK_PAGE: i32 = 200;

impl AgentApi {
    /// The stored answer of a request id already used, if any (before any Langflow call).
    async fn replay_agent(&self, caller: &Caller, key: Option<&IdempotencyKey>) -> ServiceResult<Option<pb::Agent>> {
        match self.repo.replay(caller.tenant.as_str(), key).await? {
            Some(json) => Ok(Some(agent_to_pb(&replayed::<Agent>(&json)?))),
            None => Ok(None),
        }
    }

    /// Moves an agent whose flow is gone to ERROR, saying so.
    async fn mark_flow_missing(&self, caller: &Caller, agent: &Agent) -> ServiceResult<ServiceError> {
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

    /// DRAFT -> DEPLOYED. With a Langflow, the agent's flow must exist: a deployment records
    /// a new deployment id; a missing flow moves the agent to ERROR.
    pub(super) async fn deploy(&self, caller: &Caller, req: pb::DeployAgentRequest) -> ServiceResult<pb::Agent> {
        let key = IdempotencyKey::from_request("DeployAgent", &req.request_id, &req)?;
        let id = parse_id("id", &req.id)?;
        if let Some(answer) = self.replay_agent(caller, key.as_ref()).await? {
            return Ok(answer);
        }
        let agent = self.repo.get(caller.tenant.as_str(), id).await?;
        lifecycle::ensure_fresh(&agent, &req.etag)?;
        let deployment_id = if self.linker.configured() {
            if agent.langflow_workflow_id.is_empty() {
                return Err(ServiceError::FailedPrecondition(format!(
                    "agent {id} has no Langflow flow: make one with RegenerateAgentFlow or link one with LinkAgentFlow"
                )));
            }
            if !self.linker.flow_exists(&agent.langflow_workflow_id).await? {
                return Err(self.mark_flow_missing(caller, &agent).await?);
            }
            Uuid::now_v7().to_string()
        } else {
            String::new()
        };
        let checked_flow = agent.langflow_workflow_id.clone();
        let etag = req.etag;
        let deployed = mutate_agent(
            self.repo.as_ref(),
            caller.tenant.as_str(),
            id,
            key.as_ref(),
            Box::new(move |a| {
                lifecycle::ensure_fresh(a, &etag)?;
                if a.langflow_workflow_id != checked_flow {
                    return Err(ServiceError::Aborted(format!("agent {id}'s flow changed during deployment; retry")));
                }
                lifecycle::apply(a, Transition::Deploy)?;
                a.langflow_deployment_id = deployment_id;
                Ok(())
            }),
        )
        .await?;
        tracing::info!(agent_id = %id, deployment_id = deployed.langflow_deployment_id, "agent deployed");
        Ok(agent_to_pb(&deployed))
    }

    /// Deletes an agent and the flow it made (a linked flow stays). The flow goes first: if
    /// Langflow cannot be reached, nothing is deleted and the caller may retry.
    pub(super) async fn delete(&self, caller: &Caller, req: pb::DeleteAgentRequest) -> ServiceResult<Uuid> {
        let key = IdempotencyKey::from_request("DeleteAgent", &req.request_id, &req)?;
        let id = parse_id("id", &req.id)?;
        if let Some(json) = self.repo.replay(caller.tenant.as_str(), key.as_ref()).await? {
            return replayed(&json);
        }
        let agent = self.repo.get(caller.tenant.as_str(), id).await?;
        lifecycle::ensure_fresh(&agent, &req.etag)?;
        lifecycle::ensure_deletable(&agent)?;
        self.linker.delete_owned_flow(&agent).await?;
        let etag = req.etag;
        let deleted = self
            .repo
            .delete(
                caller.tenant.as_str(),
                id,
                key.as_ref(),
                Box::new(move |a| {
                    lifecycle::ensure_fresh(a, &etag)?;
                    lifecycle::ensure_deletable(a)
                }),
            )
            .await?;
        tracing::info!(agent_id = %deleted, flow_deleted = agent.flow_origin.owned(), "agent deleted");
        Ok(deleted)
    }

    /// Points the agent at `link` (or at no flow), discarding the flow it owned before once the
    /// change is stored, or `link` itself when it is not.
    async fn relink(
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

    pub(super) async fn link_flow(
        &self,
        request: Request<pb::LinkAgentFlowRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        handle(request, |caller, req| async move {
            let key = IdempotencyKey::from_request("LinkAgentFlow", &req.request_id, &req)?;
            let id = parse_id("agent_id", &req.agent_id)?;
            check_flow_id(&req.flow_id)?;
            if let Some(answer) = self.replay_agent(&caller, key.as_ref()).await? {
                return Ok(answer);
            }
            self.repo.get(caller.tenant.as_str(), id).await?;
            self.linker.claim_for_link(&req.flow_id, caller.tenant.as_str(), req.adopt).await?;
            let link = FlowLink { flow_id: req.flow_id.clone(), origin: FlowOrigin::Linked };
            let agent = self.relink(&caller, id, key.as_ref(), req.etag, Some(link)).await?;
            tracing::info!(agent_id = %id, flow_id = req.flow_id, adopt = req.adopt, "agent linked to an existing flow");
            Ok(agent_to_pb(&agent))
        })
        .await
    }

    pub(super) async fn unlink_flow(
        &self,
        request: Request<pb::UnlinkAgentFlowRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        handle(request, |caller, req| async move {
            let key = IdempotencyKey::from_request("UnlinkAgentFlow", &req.request_id, &req)?;
            let id = parse_id("agent_id", &req.agent_id)?;
            if let Some(answer) = self.replay_agent(&caller, key.as_ref()).await? {
                return Ok(answer);
            }
            let agent = self.relink(&caller, id, key.as_ref(), req.etag, None).await?;
            tracing::info!(agent_id = %id, "agent unlinked from its flow");
            Ok(agent_to_pb(&agent))
        })
        .await
    }

    pub(super) async fn regenerate_flow(
        &self,
        request: Request<pb::RegenerateAgentFlowRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        handle(request, |caller, req| async move {
            let key = IdempotencyKey::from_request("RegenerateAgentFlow", &req.request_id, &req)?;
            let id = parse_id("agent_id", &req.agent_id)?;
            if let Some(answer) = self.replay_agent(&caller, key.as_ref()).await? {
                return Ok(answer);
            }
            let agent = self.repo.get(caller.tenant.as_str(), id).await?;
            lifecycle::ensure_fresh(&agent, &req.etag)?;
            let link = self
                .linker
                .create_flow(caller.tenant.as_str(), id, &agent.name, agent.snapshot.as_ref(), &agent.configuration)
                .await?;
            let agent = self.relink(&caller, id, key.as_ref(), req.etag, Some(link)).await?;
            tracing::info!(agent_id = %id, flow_id = agent.langflow_workflow_id, "agent flow regenerated");
            Ok(agent_to_pb(&agent))
        })
        .await
    }

    pub(super) async fn check_links(
        &self,
        request: Request<pb::CheckAgentLinksRequest>,
    ) -> Result<Response<pb::CheckAgentLinksResponse>, Status> {
        handle(request, |caller, _req| async move {
            self.linker.client()?;
            let mut linked = Vec::new();
            let mut page = PageRequest::parse(CHECK_PAGE, "", String::new())?;
            loop {
                let agents = self.repo.list(caller.tenant.as_str(), &AgentFilter::default(), &page).await?;
                let served = agents.len();
                let last = agents.last().map(super::agent_service::sort_key);
                linked.extend(agents.into_iter().filter(|a| !a.langflow_workflow_id.is_empty()));
                let token = page.next_token(served, last);
                if token.is_empty() {
                    break;
                }
                page = PageRequest::parse(CHECK_PAGE, &token, String::new())?;
            }
            let checked = linked.len() as i64;
            let missing = self.linker.missing_flows(linked).await?;
            let mut broken = Vec::with_capacity(missing.len());
            for agent in &missing {
                self.mark_flow_missing(&caller, agent).await?;
                broken.push(pb::BrokenLink {
                    agent_id: agent.id.to_string(),
                    flow_id: agent.langflow_workflow_id.clone(),
                });
            }
            tracing::info!(checked, broken = broken.len(), "agent links checked");
            Ok(pb::CheckAgentLinksResponse { checked, broken })
        })
        .await
    }
}
