//! What changes an agent and its Langflow flow together: deploying (the flow must exist),
//! deleting (the flow it made goes too), linking, unlinking and regenerating a flow, and
//! checking every link. AgentService's handlers parse a request, call one of these, and convert
//! the answer.
//!
//! Langflow is called outside any database transaction; the agent row is then changed with
//! `mutate_agent`, which re-checks the state it depends on (so a concurrent change is ABORTED,
//! not overwritten), and a flow made for a change that did not happen is discarded.

use std::sync::Arc;

use engarde::kit::error::{ServiceError, ServiceResult};
use engarde::kit::idempotency::IdempotencyKey;
use engarde::kit::pagination::{PageRequest, time_id_key};
use uuid::Uuid;

use crate::domain::lifecycle::{self, Transition};
use crate::domain::{Agent, AgentFilter, AgentStatus, FlowLink, FlowOrigin};
use crate::linkage::FlowLinker;
use crate::storage::{AgentRepository, mutate_agent, replayed};

/// Agents read per page by [`AgentFlows::check_links`].
const CHECK_PAGE: i32 = 200;

/// What CheckAgentLinks found.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LinkCheck {
    /// How many agents with a flow were checked.
    pub checked: i64,
    /// The agents whose flow is gone (each now in ERROR), and the flow each pointed to.
    pub broken: Vec<BrokenLink>,
}

/// An agent whose flow is gone.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BrokenLink {
    pub agent_id: Uuid,
    pub flow_id: String,
}

/// The agent repository and the flow linker, for changes that need both.
#[derive(Clone)]
pub struct AgentFlows {
    repo: Arc<dyn AgentRepository>,
    linker: FlowLinker,
}

impl AgentFlows {
    /// The flow linker (which also knows the Langflow's model providers).
    pub fn linker(&self) -> &FlowLinker {
        &self.linker
    }

    pub fn new(repo: Arc<dyn AgentRepository>, linker: FlowLinker) -> Self {
        Self { repo, linker }
    }

    /// DRAFT -> DEPLOYED. With a Langflow, the agent's flow must exist: a deployment records
    /// the flow's endpoint name as Langflow has it (empty when it has none); a missing flow
    /// moves the agent to ERROR.
    pub async fn deploy(
        &self,
        tenant: &str,
        id: Uuid,
        etag: String,
        key: Option<&IdempotencyKey>,
    ) -> ServiceResult<Agent> {
        let agent = self.repo.get(tenant, id).await?;
        lifecycle::ensure_fresh(&agent, &etag)?;
        let deployment_id = if self.linker.configured() {
            if agent.langflow_workflow_id.is_empty() {
                return Err(ServiceError::FailedPrecondition(format!(
                    "agent {id} has no Langflow flow: make one with RegenerateAgentFlow or link one with LinkAgentFlow"
                )));
            }
            match self.linker.endpoint_name(&agent.langflow_workflow_id).await? {
                Some(endpoint_name) => endpoint_name,
                None => return Err(self.mark_flow_missing(tenant, &agent).await?),
            }
        } else {
            String::new()
        };
        let checked_flow = agent.langflow_workflow_id.clone();
        let deployed = mutate_agent(
            self.repo.as_ref(),
            tenant,
            id,
            key,
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
        Ok(deployed)
    }

    /// Brings an agent to DEPLOYED (deployed as [`Self::deploy`] does) or, with `activate`, on to
    /// ACTIVE (as ActivateAgent does). An agent already there stays as it is, so a retry (or a
    /// concurrent one) finds nothing left to do. The error says why it could not be brought up.
    pub async fn bring_up(&self, tenant: &str, id: Uuid, activate: bool) -> ServiceResult<Agent> {
        let agent = self.repo.get(tenant, id).await?;
        let target = if activate { AgentStatus::Active } else { AgentStatus::Deployed };
        let moved = self.step_up(tenant, agent, target).await;
        match moved {
            Ok(agent) => Ok(agent),
            // A concurrent retry may have brought it up meanwhile: then it is where it should be.
            Err(e) => match self.repo.get(tenant, id).await {
                Ok(agent) if agent.status == target => Ok(agent),
                _ => Err(e),
            },
        }
    }

    async fn step_up(&self, tenant: &str, mut agent: Agent, target: AgentStatus) -> ServiceResult<Agent> {
        if agent.status == AgentStatus::Draft {
            agent = self.deploy(tenant, agent.id, String::new(), None).await?;
        }
        if target == AgentStatus::Active && agent.status != AgentStatus::Active {
            agent = mutate_agent(
                self.repo.as_ref(),
                tenant,
                agent.id,
                None,
                Box::new(|a| lifecycle::apply(a, Transition::Activate)),
            )
            .await?;
            tracing::info!(agent_id = %agent.id, status = agent.status.as_str(), "agent status changed");
        }
        Ok(agent)
    }

    /// Deletes an agent and the flow it made (a linked flow stays). The flow goes first: if
    /// Langflow cannot be reached, nothing is deleted and the caller may retry.
    pub async fn delete(
        &self,
        tenant: &str,
        id: Uuid,
        etag: String,
        key: Option<&IdempotencyKey>,
    ) -> ServiceResult<Uuid> {
        let agent = self.repo.get(tenant, id).await?;
        lifecycle::ensure_fresh(&agent, &etag)?;
        lifecycle::ensure_deletable(&agent)?;
        self.linker.delete_owned_flow(&agent).await?;
        let deleted = self
            .repo
            .delete(
                tenant,
                id,
                key,
                Box::new(move |a| {
                    lifecycle::ensure_fresh(a, &etag)?;
                    lifecycle::ensure_deletable(a)
                }),
            )
            .await?;
        tracing::info!(agent_id = %deleted, flow_deleted = agent.flow_origin.owned(), "agent deleted");
        Ok(deleted)
    }

    /// Points the agent at an existing flow `flow_id` of its tenant (or, with `adopt`, one made
    /// by hand).
    pub async fn link(
        &self,
        tenant: &str,
        id: Uuid,
        flow_id: &str,
        adopt: bool,
        etag: String,
        key: Option<&IdempotencyKey>,
    ) -> ServiceResult<Agent> {
        self.repo.get(tenant, id).await?;
        self.linker.claim_for_link(flow_id, tenant, adopt).await?;
        let link = FlowLink { flow_id: flow_id.to_owned(), origin: FlowOrigin::Linked };
        let agent = self.relink(tenant, id, key, etag, Some(link)).await?;
        tracing::info!(agent_id = %id, flow_id, adopt, "agent linked to an existing flow");
        Ok(agent)
    }

    /// Leaves the agent without a flow (the flow it made is deleted, a linked one stays).
    pub async fn unlink(
        &self,
        tenant: &str,
        id: Uuid,
        etag: String,
        key: Option<&IdempotencyKey>,
    ) -> ServiceResult<Agent> {
        let agent = self.relink(tenant, id, key, etag, None).await?;
        tracing::info!(agent_id = %id, "agent unlinked from its flow");
        Ok(agent)
    }

    /// Gives the agent a new flow made from its snapshot and configuration.
    pub async fn regenerate(
        &self,
        tenant: &str,
        id: Uuid,
        etag: String,
        key: Option<&IdempotencyKey>,
    ) -> ServiceResult<Agent> {
        let agent = self.repo.get(tenant, id).await?;
        lifecycle::ensure_fresh(&agent, &etag)?;
        let link =
            self.linker.create_flow(tenant, id, &agent.name, agent.snapshot.as_ref(), &agent.configuration).await?;
        let agent = self.relink(tenant, id, key, etag, Some(link)).await?;
        tracing::info!(agent_id = %id, flow_id = agent.langflow_workflow_id, "agent flow regenerated");
        Ok(agent)
    }

    /// Checks every linked agent of the tenant; those whose flow is gone move to ERROR. With a
    /// key, a retry answers the first check's report.
    pub async fn check_links(&self, tenant: &str, key: Option<&IdempotencyKey>) -> ServiceResult<LinkCheck> {
        if let Some(json) = self.repo.replay(tenant, key).await? {
            return replayed(&json);
        }
        let check = self.check_links_now(tenant).await?;
        let Some(key) = key else { return Ok(check) };
        let answer = serde_json::to_value(&check).map_err(ServiceError::internal)?;
        match self.repo.remember(tenant, key, answer).await? {
            // A concurrent retry answered first: one answer per key.
            Some(json) => replayed(&json),
            None => Ok(check),
        }
    }

    async fn check_links_now(&self, tenant: &str) -> ServiceResult<LinkCheck> {
        self.linker.client()?;
        let mut linked = Vec::new();
        let mut page = PageRequest::parse(CHECK_PAGE, "", String::new())?;
        loop {
            let agents = self.repo.list(tenant, &AgentFilter::default(), &page).await?;
            let served = agents.len();
            let last = agents.last().map(|a| time_id_key(a.created_at, a.id));
            linked.extend(agents.into_iter().filter(|a| !a.langflow_workflow_id.is_empty()));
            let token = page.next_token(served, last);
            if token.is_empty() {
                break;
            }
            page = PageRequest::parse(CHECK_PAGE, &token, String::new())?;
        }
        let checked = linked.len() as i64;
        let broken = self.linker.missing_flows(linked).await?;
        for agent in &broken {
            self.mark_flow_missing(tenant, agent).await?;
        }
        tracing::info!(checked, broken = broken.len(), "agent links checked");
        let broken =
            broken.into_iter().map(|a| BrokenLink { agent_id: a.id, flow_id: a.langflow_workflow_id }).collect();
        Ok(LinkCheck { checked, broken })
    }

    /// Moves an agent whose flow is gone to ERROR; answers the error saying so.
    async fn mark_flow_missing(&self, tenant: &str, agent: &Agent) -> ServiceResult<ServiceError> {
        let reason = format!("Langflow flow {} no longer exists", agent.langflow_workflow_id);
        let flow_id = agent.langflow_workflow_id.clone();
        let why = reason.clone();
        mutate_agent(
            self.repo.as_ref(),
            tenant,
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
    async fn relink(
        &self,
        tenant: &str,
        id: Uuid,
        key: Option<&IdempotencyKey>,
        etag: String,
        link: Option<FlowLink>,
    ) -> ServiceResult<Agent> {
        let before = self.repo.get(tenant, id).await?;
        let previous = FlowLink { flow_id: before.langflow_workflow_id.clone(), origin: before.flow_origin };
        let new_link = link.clone();
        let expected_flow = previous.flow_id.clone();
        let result = mutate_agent(
            self.repo.as_ref(),
            tenant,
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
