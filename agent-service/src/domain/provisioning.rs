//! Provisioning: an agent for every workflow of a tenant that has none yet. This module decides
//! which workflows are candidates; the database decides, with a claim row per workflow, which
//! candidates still need an agent (so that concurrent provisioning makes each agent once).

use engarde::kit::error::ServiceResult;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::mapping::{Overrides, agent_from_workflow, flow_export_problem};
use super::model::{Agent, NewAgent, SourceWorkflow, WorkflowCategory, WorkflowStatus};

/// At most this many workflow ids in a filter.
pub const MAX_FILTER_WORKFLOW_IDS: usize = 100;

/// Which workflows to consider. All conditions must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct ProvisionFilter {
    pub category: Option<WorkflowCategory>,
    pub include_templates: bool,
    /// Empty for all workflows.
    pub workflow_ids: Vec<Uuid>,
}

impl Default for ProvisionFilter {
    fn default() -> Self {
        Self { category: None, include_templates: true, workflow_ids: Vec::new() }
    }
}

impl ProvisionFilter {
    /// Whether the category and template conditions admit `workflow`.
    pub fn admits(&self, workflow: &SourceWorkflow) -> bool {
        self.category.is_none_or(|c| c == workflow.category) && (self.include_templates || !workflow.is_template)
    }
}

/// Why a workflow got no agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SkipReason {
    AlreadyHasAgent,
    Archived,
    WorkflowNotFound,
    ExcludedByFilter,
    /// The workflow's flow export cannot be made into a flow (see `Skipped::detail`).
    InvalidFlowExport,
}

/// A workflow that got no agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub workflow_id: Uuid,
    pub workflow_name: String,
    pub reason: SkipReason,
    /// What exactly is wrong, when the reason alone does not say (empty otherwise).
    #[serde(default)]
    pub detail: String,
}

/// A workflow that should get an agent, if it has none yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub workflow_id: Uuid,
    pub workflow_name: String,
    pub agent: NewAgent,
}

/// Where ProvisionAgents leaves the agents it creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ProvisionTarget {
    /// In DRAFT, as made.
    #[default]
    Draft,
    /// Deployed (`deploy`).
    Deployed,
    /// Deployed, then activated (`activate`, which implies `deploy`).
    Active,
}

impl ProvisionTarget {
    /// The target a request's `deploy` and `activate` ask for.
    pub fn of(deploy: bool, activate: bool) -> Self {
        match (deploy, activate) {
            (_, true) => Self::Active,
            (true, false) => Self::Deployed,
            (false, false) => Self::Draft,
        }
    }
}

/// A created agent that could not be deployed or activated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotDeployed {
    pub workflow_id: Uuid,
    pub agent_id: Uuid,
    pub reason: String,
}

/// What a provisioning did (or, for a dry run, would do).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProvisionOutcome {
    pub created: Vec<Agent>,
    pub skipped: Vec<Skipped>,
    pub dry_run: bool,
    /// The created agents that could not be brought to the target, by workflow id.
    #[serde(default)]
    pub not_deployed: Vec<NotDeployed>,
    /// Set while the created agents still have to be brought to this target: the outcome
    /// stored with the agents (so that a retry after a crash finishes the work), before they
    /// are deployed or activated. `None` once done, and when there is nothing to do.
    #[serde(default)]
    pub pending: Option<ProvisionTarget>,
}

impl ProvisionOutcome {
    /// The outcome in the documented order: both lists by workflow id.
    pub fn new(mut created: Vec<Agent>, mut skipped: Vec<Skipped>, dry_run: bool) -> Self {
        created.sort_by_key(|a| a.source_workflow_id());
        skipped.sort_by_key(|s| s.workflow_id);
        Self { created, skipped, dry_run, not_deployed: Vec::new(), pending: None }
    }
}

/// Splits what workflow-service answered into candidates and workflows skipped outright.
/// `found` are the workflows read; `not_found` the requested ids that named none. Candidates
/// come sorted by workflow id: concurrent provisionings then claim rows in the same order and
/// cannot deadlock each other.
pub fn select_candidates(
    filter: &ProvisionFilter,
    found: Vec<SourceWorkflow>,
    not_found: Vec<Uuid>,
) -> ServiceResult<(Vec<Candidate>, Vec<Skipped>)> {
    let mut candidates = Vec::new();
    let mut skipped: Vec<Skipped> = not_found
        .into_iter()
        .map(|workflow_id| Skipped {
            workflow_id,
            workflow_name: String::new(),
            reason: SkipReason::WorkflowNotFound,
            detail: String::new(),
        })
        .collect();
    let explicit = !filter.workflow_ids.is_empty();
    for workflow in found {
        let skip = |reason| Skipped {
            workflow_id: workflow.id,
            workflow_name: workflow.name.clone(),
            reason,
            detail: String::new(),
        };
        if !filter.admits(&workflow) {
            // Only ids the caller named are worth explaining; the rest were never asked for.
            if explicit {
                skipped.push(skip(SkipReason::ExcludedByFilter));
            }
            continue;
        }
        if workflow.status == WorkflowStatus::Archived {
            skipped.push(skip(SkipReason::Archived));
            continue;
        }
        // One workflow's bad flow export is that workflow's problem: the others still get agents.
        if let Some(problem) = flow_export_problem(&workflow) {
            skipped.push(Skipped { detail: problem, ..skip(SkipReason::InvalidFlowExport) });
            continue;
        }
        let agent = agent_from_workflow(&workflow, Overrides::default())?;
        candidates.push(Candidate { workflow_id: workflow.id, workflow_name: workflow.name, agent });
    }
    candidates.sort_by_key(|c| c.workflow_id);
    candidates.dedup_by_key(|c| c.workflow_id);
    Ok((candidates, skipped))
}

#[cfg(test)]
mod tests {
    use engarde::proto::workflow::v1 as workflow_pb;

    use super::*;
    use crate::domain::mapping::tests::workflow;

    #[test]
    fn archived_and_filtered_workflows_are_skipped_with_a_reason() {
        let config = workflow_pb::WorkflowConfig::default();
        let template = workflow(WorkflowCategory::ContentGeneration, config.clone());
        let own = SourceWorkflow { is_template: false, ..workflow(WorkflowCategory::AbTesting, config.clone()) };
        let archived = SourceWorkflow {
            is_template: false,
            status: WorkflowStatus::Archived,
            ..workflow(WorkflowCategory::AbTesting, config.clone())
        };
        let missing = Uuid::now_v7();

        let all = ProvisionFilter::default();
        let (candidates, skipped) =
            select_candidates(&all, vec![template.clone(), own.clone(), archived.clone()], vec![]).unwrap();
        assert_eq!(candidates.len(), 2);
        assert!(candidates.windows(2).all(|w| w[0].workflow_id < w[1].workflow_id));
        assert_eq!(
            skipped,
            vec![Skipped {
                workflow_id: archived.id,
                workflow_name: archived.name.clone(),
                reason: SkipReason::Archived,
                detail: String::new(),
            }]
        );

        let own_only =
            ProvisionFilter { include_templates: false, workflow_ids: vec![template.id, own.id, missing], ..all };
        let (candidates, skipped) =
            select_candidates(&own_only, vec![template.clone(), own.clone()], vec![missing]).unwrap();
        assert_eq!(candidates.iter().map(|c| c.workflow_id).collect::<Vec<_>>(), vec![own.id]);
        let reasons: Vec<SkipReason> = skipped.iter().map(|s| s.reason).collect();
        assert_eq!(reasons, vec![SkipReason::WorkflowNotFound, SkipReason::ExcludedByFilter]);
    }

    #[test]
    fn a_workflow_with_an_unusable_flow_export_is_skipped_and_the_rest_are_candidates() {
        let good = workflow(WorkflowCategory::ContentGeneration, workflow_pb::WorkflowConfig::default());
        let bad_config =
            workflow_pb::WorkflowConfig { langflow_flow_json: r#"{"data":{}}"#.into(), ..Default::default() };
        let bad = workflow(WorkflowCategory::AbTesting, bad_config);
        let (candidates, skipped) =
            select_candidates(&ProvisionFilter::default(), vec![good.clone(), bad.clone()], vec![]).unwrap();
        assert_eq!(candidates.iter().map(|c| c.workflow_id).collect::<Vec<_>>(), vec![good.id]);
        assert_eq!(skipped.len(), 1);
        assert_eq!((skipped[0].workflow_id, skipped[0].reason), (bad.id, SkipReason::InvalidFlowExport));
        assert!(skipped[0].detail.contains("no nodes"), "{}", skipped[0].detail);
    }
}
