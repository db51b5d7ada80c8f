//! From a workflow to its agent: the name, type, snapshot and capabilities an agent made from a
//! workflow gets, and the caller's overrides of them.

use std::collections::BTreeSet;

use engarde::kit::error::{ServiceError, ServiceResult};
use engarde::proto::workflow::v1 as workflow_pb;
use uuid::Uuid;

use super::configuration::MAX_NAME_CHARS;
use super::model::{
    AgentConfig, AgentType, NewAgent, SourceWorkflow, WorkflowCategory, WorkflowSnapshot, WorkflowStatus,
};

/// A caller's choices that replace the derived ones. Already validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub name: Option<String>,
    pub description: Option<String>,
    pub agent_type: Option<AgentType>,
    pub configuration: Option<AgentConfig>,
}

/// The type of an agent made from a workflow: a walker when the workflow asks to walk on its
/// own, otherwise the type that does the category's work.
pub fn agent_type_for(category: WorkflowCategory, config: &workflow_pb::WorkflowConfig) -> AgentType {
    if config.rules.as_ref().is_some_and(|r| r.autonomous) {
        return AgentType::Walker;
    }
    match category {
        WorkflowCategory::ContentGeneration => AgentType::ContentGeneration,
        WorkflowCategory::AbTesting => AgentType::CopyGeneration,
        WorkflowCategory::AudienceIntelligence => AgentType::AudienceAnalysis,
        WorkflowCategory::BudgetOptimization => AgentType::CampaignOptimization,
        WorkflowCategory::AnalyticsAutomation => AgentType::AnalyticsReporting,
    }
}

/// What an agent running `config` can do, sorted and unique: one capability per step kind and
/// per kind of automatic trigger it has.
pub fn capabilities_of(config: &workflow_pb::WorkflowConfig) -> Vec<String> {
    let mut capabilities = BTreeSet::new();
    for step in &config.steps {
        let capability = match workflow_pb::StepKind::try_from(step.kind) {
            Ok(workflow_pb::StepKind::Review) => "human_review",
            Ok(workflow_pb::StepKind::Output) => "result_recording",
            // Unset means llm, as workflow-service defines it; an unknown kind is treated alike.
            _ => "text_generation",
        };
        capabilities.insert(capability);
    }
    for trigger in &config.triggers {
        match workflow_pb::TriggerType::try_from(trigger.r#type) {
            Ok(workflow_pb::TriggerType::Scheduled) => {
                capabilities.insert("scheduled_runs");
            }
            Ok(workflow_pb::TriggerType::Api) => {
                capabilities.insert("api_trigger");
            }
            _ => {}
        }
    }
    capabilities.into_iter().map(str::to_owned).collect()
}

/// "<workflow name> Agent", shortening the workflow's name so that the whole fits a name.
pub fn default_name(workflow_name: &str) -> String {
    const SUFFIX: &str = " Agent";
    let room = MAX_NAME_CHARS - SUFFIX.len();
    let base: String = workflow_name.trim().chars().take(room).collect();
    format!("{}{SUFFIX}", base.trim_end())
}

/// The snapshot of a workflow at its current version.
pub fn snapshot_of(workflow: &SourceWorkflow) -> WorkflowSnapshot {
    WorkflowSnapshot {
        workflow_id: workflow.id,
        workflow_version: workflow.version,
        workflow_name: workflow.name.clone(),
        category: workflow.category,
        config: workflow.config.clone(),
    }
}

/// Refuses to make agents from an archived workflow, or from one whose flow export cannot be
/// made into a flow.
pub fn ensure_instantiable(workflow: &SourceWorkflow) -> ServiceResult<()> {
    if workflow.status == WorkflowStatus::Archived {
        return Err(ServiceError::FailedPrecondition(format!(
            "workflow {} is archived; no new agents can be made from it",
            workflow.id
        )));
    }
    match flow_export_problem(workflow) {
        Some(problem) => Err(unusable_export(&problem)),
        None => Ok(()),
    }
}

/// What is wrong with the workflow's flow export, by the rules workflow-service validates it
/// with; `None` when it has none or it is usable. Workflows stored before those rules (or
/// written around them) can still carry one that is not.
pub fn flow_export_problem(workflow: &SourceWorkflow) -> Option<String> {
    let export = &workflow.config.langflow_flow_json;
    if export.is_empty() {
        return None;
    }
    engarde::flow_export::flow_data(export).err().map(|e| e.to_string())
}

/// FAILED_PRECONDITION for a workflow whose flow export cannot be made into a flow: a problem of
/// that workflow, permanent until it is changed, so not UNAVAILABLE (which invites a retry).
pub fn unusable_export(reason: &str) -> ServiceError {
    ServiceError::FailedPrecondition(format!(
        "the workflow's flow export (langflow_flow_json) cannot be used: {reason}"
    ))
}

/// The agent a workflow gets, with the caller's overrides.
pub fn agent_from_workflow(workflow: &SourceWorkflow, overrides: Overrides) -> ServiceResult<NewAgent> {
    ensure_instantiable(workflow)?;
    Ok(NewAgent {
        id: Uuid::now_v7(),
        name: overrides.name.unwrap_or_else(|| default_name(&workflow.name)),
        description: overrides.description.unwrap_or_else(|| workflow.description.clone()),
        agent_type: overrides.agent_type.unwrap_or_else(|| agent_type_for(workflow.category, &workflow.config)),
        snapshot: Some(snapshot_of(workflow)),
        configuration: overrides.configuration.unwrap_or_default(),
        capabilities: capabilities_of(&workflow.config),
        flow: None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use uuid::Uuid;

    use super::*;

    pub(crate) fn step(id: &str, kind: workflow_pb::StepKind, prompt: &str) -> workflow_pb::Step {
        workflow_pb::Step {
            id: id.into(),
            name: id.into(),
            kind: kind as i32,
            prompt: prompt.into(),
            reviews_step: String::new(),
        }
    }

    pub(crate) fn workflow(category: WorkflowCategory, config: workflow_pb::WorkflowConfig) -> SourceWorkflow {
        SourceWorkflow {
            id: Uuid::now_v7(),
            name: "Social Media Content Pipeline".into(),
            description: "Posts".into(),
            category,
            status: WorkflowStatus::Active,
            is_template: true,
            version: 1,
            config,
        }
    }

    #[test]
    fn each_category_has_its_type() {
        let plain = workflow_pb::WorkflowConfig::default();
        let expected = [
            (WorkflowCategory::ContentGeneration, AgentType::ContentGeneration),
            (WorkflowCategory::AbTesting, AgentType::CopyGeneration),
            (WorkflowCategory::AudienceIntelligence, AgentType::AudienceAnalysis),
            (WorkflowCategory::BudgetOptimization, AgentType::CampaignOptimization),
            (WorkflowCategory::AnalyticsAutomation, AgentType::AnalyticsReporting),
        ];
        for (category, agent_type) in expected {
            assert_eq!(agent_type_for(category, &plain), agent_type);
        }
        let autonomous = workflow_pb::WorkflowConfig {
            rules: Some(workflow_pb::Rules { autonomous: true, ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(agent_type_for(WorkflowCategory::AbTesting, &autonomous), AgentType::Walker);
    }

    #[test]
    fn capabilities_follow_step_kinds_and_triggers() {
        use workflow_pb::{StepKind, Trigger, TriggerType};
        let config = workflow_pb::WorkflowConfig {
            steps: vec![
                step("write", StepKind::Unspecified, "Write"),
                step("check", StepKind::Review, ""),
                step("edit", StepKind::Llm, "Edit"),
                step("publish", StepKind::Output, ""),
            ],
            triggers: vec![
                Trigger { r#type: TriggerType::Manual as i32, ..Default::default() },
                Trigger { r#type: TriggerType::Scheduled as i32, cron: "0 9 * * MON".into(), ..Default::default() },
                Trigger { r#type: TriggerType::Api as i32, ..Default::default() },
            ],
            ..Default::default()
        };
        assert_eq!(
            capabilities_of(&config),
            vec!["api_trigger", "human_review", "result_recording", "scheduled_runs", "text_generation"]
        );
    }

    #[test]
    fn an_agent_from_a_workflow_and_its_overrides() {
        let source = workflow(
            WorkflowCategory::ContentGeneration,
            workflow_pb::WorkflowConfig {
                steps: vec![step("write", workflow_pb::StepKind::Llm, "Write")],
                ..Default::default()
            },
        );
        let agent = agent_from_workflow(&source, Overrides::default()).unwrap();
        assert_eq!(agent.name, "Social Media Content Pipeline Agent");
        assert_eq!(agent.description, "Posts");
        assert_eq!(agent.agent_type, AgentType::ContentGeneration);
        assert_eq!(agent.capabilities, vec!["text_generation"]);
        let snapshot = agent.snapshot.unwrap();
        assert_eq!((snapshot.workflow_id, snapshot.workflow_version), (source.id, 1));

        let overrides = Overrides {
            name: Some("Mine".into()),
            description: Some(String::new()),
            agent_type: Some(AgentType::Walker),
            configuration: None,
        };
        let agent = agent_from_workflow(&source, overrides).unwrap();
        assert_eq!(
            (agent.name.as_str(), agent.description.as_str(), agent.agent_type),
            ("Mine", "", AgentType::Walker)
        );

        let archived = SourceWorkflow { status: WorkflowStatus::Archived, ..source };
        let err = agent_from_workflow(&archived, Overrides::default()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    }

    #[test]
    fn a_long_workflow_name_still_makes_a_valid_agent_name() {
        let name = default_name(&"x".repeat(200));
        assert_eq!(name.chars().count(), MAX_NAME_CHARS);
        assert!(name.ends_with(" Agent"));
    }
}
