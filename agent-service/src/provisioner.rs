//! The work that needs both workflow-service and the agent store: making agents from workflows
//! (one, or every missing one), listing installed agents with their workflows' current state,
//! and upgrading agents to their workflows' newest versions.
//!
//! Slow reads from workflow-service happen before any transaction opens (no lock is held across
//! a network call); a retried request id is answered from the store before anything is read.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use engarde::kit::error::{ServiceError, ServiceResult};
use engarde::kit::idempotency::IdempotencyKey;
use engarde::kit::pagination::PageRequest;
use futures::{StreamExt as _, TryStreamExt as _};
use uuid::Uuid;

use crate::agent_flows::AgentFlows;
use crate::domain::default_model::{apply_default_model, names_model};
use crate::domain::lifecycle;
use crate::domain::mapping::{self, Overrides};
use crate::domain::provisioning::{
    Candidate, NotDeployed, ProvisionFilter, ProvisionOutcome, ProvisionTarget, SkipReason, Skipped, select_candidates,
};
use crate::domain::upgrade::{UpgradeOutcome, apply_upgrade, plan_upgrade};
use crate::domain::{Agent, AgentConfig, AgentFilter, FlowLink, ModelSettings, SourceWorkflow, now};
use crate::langflow::LangflowError;
use crate::linkage::FlowLinker;
use crate::storage::{AgentRepository, Answer, DefaultModelRepository, Mutated, replayed};
use crate::workflows::{Credentials, WorkflowClient, WorkflowQuery};

/// How many reads of single workflows run at once.
const READ_CONCURRENCY: usize = 8;
/// How many provisioned agents are deployed (or activated) at once: each deployment reads its
/// flow from Langflow.
const BRING_UP_CONCURRENCY: usize = 8;

/// An agent with the current state of its source workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct InstalledAgent {
    pub agent: Agent,
    /// The source workflow as it is now; `None` when the agent has none or it was deleted.
    pub workflow: Option<SourceWorkflow>,
}

impl InstalledAgent {
    /// Whether the agent was made from a workflow that no longer exists.
    pub fn workflow_deleted(&self) -> bool {
        self.agent.snapshot.is_some() && self.workflow.is_none()
    }
}

/// Makes and upgrades agents from workflows.
#[derive(Clone)]
pub struct Provisioner {
    repo: Arc<dyn AgentRepository>,
    /// The tenants' default models, given to new agents whose configuration names none.
    default_models: Arc<dyn DefaultModelRepository>,
    workflows: WorkflowClient,
    linker: FlowLinker,
    /// Deploys and activates what ProvisionAgents made, when asked to.
    flows: AgentFlows,
}

/// What ProvisionAgents is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProvisionMode {
    /// Only answer what would be done.
    pub dry_run: bool,
    /// Where the created agents are left.
    pub target: ProvisionTarget,
}

impl Provisioner {
    pub fn new(
        repo: Arc<dyn AgentRepository>,
        default_models: Arc<dyn DefaultModelRepository>,
        workflows: WorkflowClient,
        linker: FlowLinker,
    ) -> Self {
        let flows = AgentFlows::new(repo.clone(), linker.clone());
        Self { repo, default_models, workflows, linker, flows }
    }

    /// The tenant's default model, read only when one of `configs` names no model (`None` when
    /// none needs it).
    async fn default_model_for<'a>(
        &self,
        tenant: &str,
        mut configs: impl Iterator<Item = &'a AgentConfig>,
    ) -> ServiceResult<Option<ModelSettings>> {
        if !configs.any(|c| !names_model(&c.model)) {
            return Ok(None);
        }
        Ok(Some(self.default_models.default_model(tenant).await?.model))
    }

    /// An agent made from one workflow the caller can read.
    pub async fn create_from_workflow(
        &self,
        tenant: &str,
        credentials: &Credentials,
        workflow_id: Uuid,
        overrides: Overrides,
        key: Option<&IdempotencyKey>,
    ) -> ServiceResult<Agent> {
        if let Some(json) = self.repo.replay(tenant, key).await? {
            return replayed(&json);
        }
        let workflow = self.workflows.get(credentials, workflow_id).await?;
        let mut new = mapping::agent_from_workflow(&workflow, overrides)?;
        if let Some(default) = self.default_model_for(tenant, std::iter::once(&new.configuration)).await? {
            apply_default_model(&mut new.configuration, &default);
        }
        // The flow first (Langflow takes no part in the transaction), undone if the row fails.
        self.linker.attach_flow(tenant, &mut new).await?;
        let flow = new.flow.clone();
        let stored = self.repo.create(tenant, new, key).await;
        if let Some(flow) = &flow {
            // A failed insert, or a concurrent retry that stored its own agent first (answered
            // here as a replay): either way this flow belongs to no agent.
            let kept = matches!(&stored, Ok(agent) if agent.langflow_workflow_id == flow.flow_id);
            if !kept {
                self.linker.discard(flow).await;
            }
        }
        stored
    }

    /// An agent for every workflow the filter admits that has none yet, left in DRAFT or
    /// brought to the mode's target.
    pub async fn provision(
        &self,
        tenant: &str,
        credentials: &Credentials,
        filter: ProvisionFilter,
        mode: ProvisionMode,
        key: Option<&IdempotencyKey>,
    ) -> ServiceResult<ProvisionOutcome> {
        if mode.target != ProvisionTarget::Draft && !self.linker.configured() {
            return Err(ServiceError::FailedPrecondition(format!(
                "deploy and activate need a Langflow to deploy on: {}",
                LangflowError::NotConfigured
            )));
        }
        // A dry run changes nothing, so it has nothing to replay.
        let key = if mode.dry_run { None } else { key };
        if let Some(json) = self.repo.replay(tenant, key).await? {
            return self.finish(tenant, replayed(&json)?, key).await;
        }
        let (found, not_found) = self.read_workflows(credentials, &filter).await?;
        let (mut candidates, mut skipped) = select_candidates(&filter, found, not_found)?;
        // Workflows that already have an agent are set apart before any flow is made for them:
        // a re-run makes no flow. The claim in the provisioning transaction still decides a
        // race with a concurrent provisioning (whose loser discards the flows it made).
        candidates = self.set_apart_provisioned(tenant, candidates, &mut skipped).await?;
        // Before the flows are made: a generated flow runs the agent's model.
        if let Some(default) = self.default_model_for(tenant, candidates.iter().map(|c| &c.agent.configuration)).await?
        {
            for candidate in &mut candidates {
                apply_default_model(&mut candidate.agent.configuration, &default);
            }
        }
        if !mode.dry_run {
            let pending = Some(mode.target).filter(|t| *t != ProvisionTarget::Draft);
            let outcome = self.provision_with_flows(tenant, candidates, skipped, pending, key).await?;
            return self.finish(tenant, outcome, key).await;
        }
        let created_at = now();
        let created = candidates.into_iter().map(|c| c.agent.into_draft(tenant, created_at)).collect();
        Ok(ProvisionOutcome::new(created, skipped, true))
    }

    /// Brings the created agents of a stored outcome to its pending target, if it has one (a
    /// first run, or a retry of one that stopped before it was done), and stores the outcome
    /// as the key's answer. An agent that cannot be brought up is answered in `not_deployed`
    /// with the reason; the others go on.
    async fn finish(
        &self,
        tenant: &str,
        mut outcome: ProvisionOutcome,
        key: Option<&IdempotencyKey>,
    ) -> ServiceResult<ProvisionOutcome> {
        let Some(target) = outcome.pending else { return Ok(outcome) };
        let activate = target == ProvisionTarget::Active;
        let brought: Vec<(Agent, Option<String>)> = futures::stream::iter(std::mem::take(&mut outcome.created))
            .map(|agent| async move {
                match self.flows.bring_up(tenant, agent.id, activate).await {
                    Ok(up) => (up, None),
                    Err(e) => {
                        tracing::warn!(agent_id = %agent.id, error = %e, "provisioned agent not brought up");
                        // As it was left (a flow found missing puts it in ERROR).
                        let now = self.repo.get(tenant, agent.id).await.unwrap_or(agent);
                        (now, Some(e.to_string()))
                    }
                }
            })
            .buffered(BRING_UP_CONCURRENCY)
            .collect()
            .await;
        outcome.not_deployed.clear();
        for (agent, failure) in brought {
            if let Some(reason) = failure {
                let workflow_id = agent.source_workflow_id().unwrap_or_default();
                outcome.not_deployed.push(NotDeployed { workflow_id, agent_id: agent.id, reason });
            }
            outcome.created.push(agent);
        }
        outcome.pending = None;
        if let Some(key) = key {
            let answer = serde_json::to_value(&outcome).map_err(ServiceError::internal)?;
            self.repo.restate(tenant, key, answer).await?;
        }
        tracing::info!(
            brought_up = outcome.created.len() - outcome.not_deployed.len(),
            failed = outcome.not_deployed.len(),
            target = ?target,
            "provisioned agents brought up"
        );
        Ok(outcome)
    }

    /// The candidates whose workflow has no agent yet; the others are skipped as
    /// ALREADY_HAS_AGENT.
    async fn set_apart_provisioned(
        &self,
        tenant: &str,
        candidates: Vec<Candidate>,
        skipped: &mut Vec<Skipped>,
    ) -> ServiceResult<Vec<Candidate>> {
        let ids: Vec<Uuid> = candidates.iter().map(|c| c.workflow_id).collect();
        let provisioned = self.repo.provisioned(tenant, &ids).await?;
        let (claimed, unclaimed): (Vec<Candidate>, Vec<Candidate>) =
            candidates.into_iter().partition(|c| provisioned.contains(&c.workflow_id));
        skipped.extend(claimed.into_iter().map(|c| Skipped {
            workflow_id: c.workflow_id,
            workflow_name: c.workflow_name,
            reason: SkipReason::AlreadyHasAgent,
            detail: String::new(),
        }));
        Ok(unclaimed)
    }

    /// Gives each candidate its flow, stores those whose workflow is still unclaimed, and
    /// deletes the flows of the rest (claimed meanwhile by a concurrent provisioning) or of all
    /// when the transaction fails. A candidate whose flow export Langflow refuses is skipped
    /// with that reason; Langflow being down or slow stops the whole provisioning (UNAVAILABLE,
    /// DEADLINE_EXCEEDED), with nothing stored and the flows made so far deleted.
    async fn provision_with_flows(
        &self,
        tenant: &str,
        candidates: Vec<Candidate>,
        mut skipped: Vec<Skipped>,
        pending: Option<ProvisionTarget>,
        key: Option<&IdempotencyKey>,
    ) -> ServiceResult<ProvisionOutcome> {
        let mut made: Vec<FlowLink> = Vec::new();
        let mut ready = Vec::with_capacity(candidates.len());
        for mut candidate in candidates {
            match self.linker.attach_flow(tenant, &mut candidate.agent).await {
                Ok(()) => {
                    made.extend(candidate.agent.flow.clone());
                    ready.push(candidate);
                }
                // The workflow's own problem (see FlowLinker::create_flow): the others go on.
                Err(ServiceError::FailedPrecondition(problem)) => skipped.push(Skipped {
                    workflow_id: candidate.workflow_id,
                    workflow_name: candidate.workflow_name,
                    reason: SkipReason::InvalidFlowExport,
                    detail: problem,
                }),
                Err(e) => {
                    for flow in &made {
                        self.linker.discard(flow).await;
                    }
                    return Err(e);
                }
            }
        }
        let outcome = self.repo.provision(tenant, ready, skipped, pending, key).await;
        let kept: HashSet<&str> = match &outcome {
            Ok(o) => o.created.iter().map(|a| a.langflow_workflow_id.as_str()).collect(),
            Err(_) => HashSet::new(),
        };
        for flow in made.iter().filter(|f| !kept.contains(f.flow_id.as_str())) {
            self.linker.discard(flow).await;
        }
        outcome
    }

    /// The workflows the filter names: every one the caller can read (per category and
    /// template choice), or the listed ids, with those that name nothing set apart.
    async fn read_workflows(
        &self,
        credentials: &Credentials,
        filter: &ProvisionFilter,
    ) -> ServiceResult<(Vec<SourceWorkflow>, Vec<Uuid>)> {
        if filter.workflow_ids.is_empty() {
            let query = WorkflowQuery {
                category: filter.category,
                is_template: if filter.include_templates { None } else { Some(false) },
            };
            return Ok((self.workflows.list_all(credentials, query).await?, Vec::new()));
        }
        let ids: BTreeSet<Uuid> = filter.workflow_ids.iter().copied().collect();
        let found = self.find_workflows(credentials, ids).await?;
        let mut workflows = Vec::new();
        let mut missing = Vec::new();
        for (id, workflow) in found {
            match workflow {
                Some(w) => workflows.push(w),
                None => missing.push(id),
            }
        }
        Ok((workflows, missing))
    }

    /// Reads each workflow, a few at a time; `None` for those that do not exist for the caller.
    async fn find_workflows(
        &self,
        credentials: &Credentials,
        ids: BTreeSet<Uuid>,
    ) -> ServiceResult<HashMap<Uuid, Option<SourceWorkflow>>> {
        futures::stream::iter(ids)
            .map(|id| async move { self.workflows.find(credentials, id).await.map(|w| (id, w)) })
            .buffer_unordered(READ_CONCURRENCY)
            .try_collect()
            .await
    }

    /// One page of the tenant's agents, each with its source workflow as it is now.
    pub async fn list_installed(
        &self,
        tenant: &str,
        credentials: &Credentials,
        page: &PageRequest,
    ) -> ServiceResult<Vec<InstalledAgent>> {
        let agents = self.repo.list(tenant, &AgentFilter::default(), page).await?;
        let ids: BTreeSet<Uuid> = agents.iter().filter_map(Agent::source_workflow_id).collect();
        let mut workflows = self.find_workflows(credentials, ids).await?;
        Ok(agents
            .into_iter()
            .map(|agent| {
                let workflow = agent.source_workflow_id().and_then(|id| workflows.get_mut(&id)).and_then(|w| w.clone());
                InstalledAgent { agent, workflow }
            })
            .collect())
    }

    /// Moves the agent to its source workflow's current version (or, for a dry run, answers
    /// what that would change).
    pub async fn upgrade(
        &self,
        tenant: &str,
        credentials: &Credentials,
        agent_id: Uuid,
        dry_run: bool,
        etag: String,
        key: Option<&IdempotencyKey>,
    ) -> ServiceResult<UpgradeOutcome> {
        let key = if dry_run { None } else { key };
        if let Some(json) = self.repo.replay(tenant, key).await? {
            return replayed(&json);
        }
        let agent = self.repo.get(tenant, agent_id).await?;
        lifecycle::ensure_fresh(&agent, &etag)?;
        let Some(workflow_id) = agent.source_workflow_id() else {
            return Err(ServiceError::FailedPrecondition(format!(
                "agent {agent_id} was not made from a workflow; there is nothing to upgrade to"
            )));
        };
        let workflow = match self.workflows.get(credentials, workflow_id).await {
            Err(ServiceError::NotFound(_)) => {
                return Err(ServiceError::FailedPrecondition(format!(
                    "the source workflow {workflow_id} of agent {agent_id} no longer exists"
                )));
            }
            other => other?,
        };
        let plan = plan_upgrade(&agent, &workflow)?;
        if dry_run || plan.is_noop() {
            return Ok(UpgradeOutcome {
                agent,
                from_version: plan.from_version,
                to_version: plan.to_version,
                changes: plan.changes,
                dry_run,
            });
        }
        let read_version = agent.version;
        let applied = plan.clone();
        let mutation = Box::new(move |current: &mut Agent| {
            lifecycle::ensure_fresh(current, &etag)?;
            // The plan was made from the agent as read: a change since then would be lost.
            if current.version != read_version {
                return Err(ServiceError::Aborted(format!(
                    "agent {agent_id} changed while it was being upgraded; try again"
                )));
            }
            apply_upgrade(current, &applied);
            Ok(())
        });
        let (from_version, to_version, changes) = (plan.from_version, plan.to_version, plan.changes);
        let outcome_of = {
            let changes = changes.clone();
            move |agent: &Agent| UpgradeOutcome { agent: agent.clone(), from_version, to_version, changes, dry_run }
        };
        let answer: Answer = {
            let outcome_of = outcome_of.clone();
            Box::new(move |agent| serde_json::to_value(outcome_of(agent)).map_err(ServiceError::internal))
        };
        match self.repo.mutate(tenant, agent_id, key, mutation, answer).await? {
            Mutated::Done(agent) => {
                tracing::info!(agent_id = %agent_id, from_version, to_version, "agent upgraded");
                Ok(outcome_of(&agent))
            }
            Mutated::Replayed(json) => replayed(&json),
        }
    }
}
