//! Conversions between the protobuf contracts and the domain. Parsing a request here reports
//! every bad field at once, with its path.

use engarde::kit::error::{FieldViolation, ServiceError, ServiceResult};
use engarde::kit::page_budget::PageBudget;
use engarde::proto::agent::v1 as pb;
use engarde::proto::workflow::v1 as workflow_pb;

use crate::domain::configuration;
use crate::domain::default_model::DefaultModel;
use crate::domain::provisioning::{ProvisionOutcome, SkipReason, Skipped};
use crate::domain::upgrade::{Change, ChangeKind, UpgradeOutcome, upgrade_available};
use crate::domain::{
    Agent, AgentConfig, AgentStatus, AgentType, FlowOrigin, ModelSettings, WorkflowCategory, WorkflowStatus,
};
use crate::provisioner::InstalledAgent;

pub fn timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

pub fn agent_type_to_pb(t: AgentType) -> pb::AgentType {
    match t {
        AgentType::ContentGeneration => pb::AgentType::ContentGeneration,
        AgentType::CopyGeneration => pb::AgentType::CopyGeneration,
        AgentType::AudienceAnalysis => pb::AgentType::AudienceAnalysis,
        AgentType::CampaignOptimization => pb::AgentType::CampaignOptimization,
        AgentType::AnalyticsReporting => pb::AgentType::AnalyticsReporting,
        AgentType::Walker => pb::AgentType::Walker,
    }
}

/// An agent type field or filter: `Ok(None)` for UNSPECIFIED, an error for a number that is none.
pub fn agent_type_from_pb(field: &str, value: i32) -> ServiceResult<Option<AgentType>> {
    match pb::AgentType::try_from(value) {
        Ok(pb::AgentType::Unspecified) => Ok(None),
        Ok(pb::AgentType::ContentGeneration) => Ok(Some(AgentType::ContentGeneration)),
        Ok(pb::AgentType::CopyGeneration) => Ok(Some(AgentType::CopyGeneration)),
        Ok(pb::AgentType::AudienceAnalysis) => Ok(Some(AgentType::AudienceAnalysis)),
        Ok(pb::AgentType::CampaignOptimization) => Ok(Some(AgentType::CampaignOptimization)),
        Ok(pb::AgentType::AnalyticsReporting) => Ok(Some(AgentType::AnalyticsReporting)),
        Ok(pb::AgentType::Walker) => Ok(Some(AgentType::Walker)),
        Err(_) => Err(ServiceError::invalid(field, format!("unknown agent type {value}"))),
    }
}

pub fn status_to_pb(s: AgentStatus) -> pb::AgentStatus {
    match s {
        AgentStatus::Draft => pb::AgentStatus::Draft,
        AgentStatus::Deployed => pb::AgentStatus::Deployed,
        AgentStatus::Active => pb::AgentStatus::Active,
        AgentStatus::Paused => pb::AgentStatus::Paused,
        AgentStatus::Error => pb::AgentStatus::Error,
    }
}

pub fn status_from_pb(field: &str, value: i32) -> ServiceResult<Option<AgentStatus>> {
    match pb::AgentStatus::try_from(value) {
        Ok(pb::AgentStatus::Unspecified) => Ok(None),
        Ok(pb::AgentStatus::Draft) => Ok(Some(AgentStatus::Draft)),
        Ok(pb::AgentStatus::Deployed) => Ok(Some(AgentStatus::Deployed)),
        Ok(pb::AgentStatus::Active) => Ok(Some(AgentStatus::Active)),
        Ok(pb::AgentStatus::Paused) => Ok(Some(AgentStatus::Paused)),
        Ok(pb::AgentStatus::Error) => Ok(Some(AgentStatus::Error)),
        Err(_) => Err(ServiceError::invalid(field, format!("unknown agent status {value}"))),
    }
}

pub fn category_to_pb(c: WorkflowCategory) -> workflow_pb::WorkflowCategory {
    match c {
        WorkflowCategory::ContentGeneration => workflow_pb::WorkflowCategory::ContentGeneration,
        WorkflowCategory::AbTesting => workflow_pb::WorkflowCategory::AbTesting,
        WorkflowCategory::AudienceIntelligence => workflow_pb::WorkflowCategory::AudienceIntelligence,
        WorkflowCategory::BudgetOptimization => workflow_pb::WorkflowCategory::BudgetOptimization,
        WorkflowCategory::AnalyticsAutomation => workflow_pb::WorkflowCategory::AnalyticsAutomation,
    }
}

pub fn category_from_pb(field: &str, value: i32) -> ServiceResult<Option<WorkflowCategory>> {
    match workflow_pb::WorkflowCategory::try_from(value) {
        Ok(workflow_pb::WorkflowCategory::Unspecified) => Ok(None),
        Ok(workflow_pb::WorkflowCategory::ContentGeneration) => Ok(Some(WorkflowCategory::ContentGeneration)),
        Ok(workflow_pb::WorkflowCategory::AbTesting) => Ok(Some(WorkflowCategory::AbTesting)),
        Ok(workflow_pb::WorkflowCategory::AudienceIntelligence) => Ok(Some(WorkflowCategory::AudienceIntelligence)),
        Ok(workflow_pb::WorkflowCategory::BudgetOptimization) => Ok(Some(WorkflowCategory::BudgetOptimization)),
        Ok(workflow_pb::WorkflowCategory::AnalyticsAutomation) => Ok(Some(WorkflowCategory::AnalyticsAutomation)),
        Err(_) => Err(ServiceError::invalid(field, format!("unknown category {value}"))),
    }
}

fn workflow_status_to_pb(s: WorkflowStatus) -> workflow_pb::WorkflowStatus {
    match s {
        WorkflowStatus::Draft => workflow_pb::WorkflowStatus::Draft,
        WorkflowStatus::Active => workflow_pb::WorkflowStatus::Active,
        WorkflowStatus::Archived => workflow_pb::WorkflowStatus::Archived,
    }
}

pub fn config_to_pb(c: &AgentConfig) -> pb::AgentConfig {
    pb::AgentConfig {
        brand_voice: c.brand_voice.clone(),
        tone: c.tone.clone(),
        target_audience: c.target_audience.clone(),
        model: Some(pb::ModelSettings {
            provider: c.model.provider.clone(),
            model_name: c.model.model_name.clone(),
            temperature: c.model.temperature,
            max_tokens: c.model.max_tokens,
            base_url: c.model.base_url.clone(),
            system_message: c.model.system_message.clone(),
            api_key_ref: c.model.api_key_ref.clone(),
        }),
        extra: c.extra.clone(),
    }
}

/// A configuration as sent, not yet validated; unset is the empty configuration.
pub fn parse_config(config: Option<pb::AgentConfig>) -> AgentConfig {
    let config = config.unwrap_or_default();
    let model = config.model.unwrap_or_default();
    AgentConfig {
        brand_voice: config.brand_voice,
        tone: config.tone,
        target_audience: config.target_audience,
        model: ModelSettings {
            provider: model.provider,
            model_name: model.model_name,
            temperature: model.temperature,
            max_tokens: model.max_tokens,
            base_url: model.base_url,
            system_message: model.system_message,
            api_key_ref: model.api_key_ref,
        },
        extra: config.extra,
    }
}

/// Parses and validates a configuration; unset is the empty configuration. `prefix` is its path
/// in the request.
pub fn config_from_pb(prefix: &str, config: Option<pb::AgentConfig>) -> Result<AgentConfig, Vec<FieldViolation>> {
    let parsed = parse_config(config);
    let mut out = Vec::new();
    configuration::check_config(prefix, &parsed, &mut out);
    if out.is_empty() { Ok(parsed) } else { Err(out) }
}

pub fn agent_to_pb(a: &Agent) -> pb::Agent {
    pb::Agent {
        id: a.id.to_string(),
        tenant_id: a.tenant_id.clone(),
        name: a.name.clone(),
        description: a.description.clone(),
        agent_type: agent_type_to_pb(a.agent_type) as i32,
        status: status_to_pb(a.status) as i32,
        status_reason: a.status_reason.clone(),
        langflow_workflow_id: a.langflow_workflow_id.clone(),
        langflow_deployment_id: a.langflow_deployment_id.clone(),
        workflow_snapshot: a.snapshot.as_ref().map(|s| pb::WorkflowSnapshot {
            workflow_id: s.workflow_id.to_string(),
            workflow_version: s.workflow_version,
            workflow_name: s.workflow_name.clone(),
            category: category_to_pb(s.category) as i32,
            workflow_config: Some(s.config.clone()),
        }),
        configuration: Some(config_to_pb(&a.configuration)),
        capabilities: a.capabilities.clone(),
        total_executions: a.total_executions,
        successful_executions: a.successful_executions,
        average_response_time_ms: a.average_response_time_ms,
        version: a.version,
        etag: a.etag(),
        create_time: Some(timestamp(a.created_at)),
        update_time: Some(timestamp(a.updated_at)),
        flow_origin: flow_origin_to_pb(a.flow_origin) as i32,
        feedback_count: a.feedback_count,
        feedback_mean_score: a.feedback_mean_score(),
        token_usage: Some(usage_to_pb(a.usage)),
    }
}

pub fn usage_to_pb(u: crate::domain::execution::TokenUsage) -> pb::TokenUsage {
    pb::TokenUsage { prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens }
}

pub fn agent_config_to_pb(a: &Agent) -> pb::AgentConfiguration {
    pb::AgentConfiguration {
        agent_id: a.id.to_string(),
        configuration: Some(config_to_pb(&a.configuration)),
        etag: a.etag(),
        update_time: Some(timestamp(a.updated_at)),
    }
}

pub fn installed_to_pb(installed: &InstalledAgent) -> pb::InstalledAgent {
    let agent = &installed.agent;
    let snapshot = agent.snapshot.as_ref();
    let current = installed.workflow.as_ref();
    pb::InstalledAgent {
        agent: Some(agent_to_pb(agent)),
        workflow_id: snapshot.map(|s| s.workflow_id.to_string()).unwrap_or_default(),
        // The workflow as it is now; the snapshot's view when it is gone.
        workflow_name: current
            .map(|w| w.name.clone())
            .or_else(|| snapshot.map(|s| s.workflow_name.clone()))
            .unwrap_or_default(),
        category: current
            .map(|w| w.category)
            .or_else(|| snapshot.map(|s| s.category))
            .map(category_to_pb)
            .unwrap_or(workflow_pb::WorkflowCategory::Unspecified) as i32,
        workflow_status: current
            .map(|w| workflow_status_to_pb(w.status))
            .unwrap_or(workflow_pb::WorkflowStatus::Unspecified) as i32,
        workflow_current_version: current.map(|w| w.version).unwrap_or(0),
        workflow_deleted: installed.workflow_deleted(),
        upgrade_available: match (current, snapshot) {
            (Some(w), Some(s)) => upgrade_available(s, w),
            _ => false,
        },
        is_template: current.is_some_and(|w| w.is_template),
    }
}

fn skip_reason_to_pb(reason: SkipReason) -> pb::SkipReason {
    match reason {
        SkipReason::AlreadyHasAgent => pb::SkipReason::AlreadyHasAgent,
        SkipReason::Archived => pb::SkipReason::Archived,
        SkipReason::WorkflowNotFound => pb::SkipReason::WorkflowNotFound,
        SkipReason::ExcludedByFilter => pb::SkipReason::ExcludedByFilter,
        SkipReason::InvalidFlowExport => pb::SkipReason::InvalidFlowExport,
    }
}

fn skipped_to_pb(s: &Skipped) -> pb::SkippedWorkflow {
    pb::SkippedWorkflow {
        workflow_id: s.workflow_id.to_string(),
        workflow_name: s.workflow_name.clone(),
        reason: skip_reason_to_pb(s.reason) as i32,
        detail: s.detail.clone(),
    }
}

/// Model settings as sent, not yet validated (through [`parse_config`], so that a model reads the
/// same wherever it is sent); unset is the empty model.
pub fn parse_model(model: Option<pb::ModelSettings>) -> ModelSettings {
    parse_config(Some(pb::AgentConfig { model, ..pb::AgentConfig::default() })).model
}

pub fn model_to_pb(model: &ModelSettings) -> pb::ModelSettings {
    let config = AgentConfig { model: model.clone(), ..AgentConfig::default() };
    config_to_pb(&config).model.unwrap_or_default()
}

pub fn default_model_to_pb(default: &DefaultModel) -> pb::TenantDefaultModel {
    pb::TenantDefaultModel {
        model: Some(model_to_pb(&default.model)),
        updated_by: default.updated_by.clone(),
        update_time: default.updated_at.map(timestamp),
        etag: default.etag(),
    }
}

/// The outcome as one answer of at most `budget` bytes of agents and workflows: what does not
/// fit is left out at the end, and counted.
pub fn provision_to_pb(outcome: &ProvisionOutcome, budget: PageBudget) -> pb::ProvisionAgentsResponse {
    let mut used = 0;
    let (created, omitted_created) = budget.keep_fitting(outcome.created.iter().map(agent_to_pb), &mut used);
    let (skipped, omitted_skipped) = budget.keep_fitting(outcome.skipped.iter().map(skipped_to_pb), &mut used);
    pb::ProvisionAgentsResponse {
        created,
        skipped,
        dry_run: outcome.dry_run,
        omitted_created: count(omitted_created),
        omitted_skipped: count(omitted_skipped),
        not_deployed: outcome
            .not_deployed
            .iter()
            .map(|n| pb::UndeployedAgent {
                workflow_id: n.workflow_id.to_string(),
                agent_id: n.agent_id.to_string(),
                reason: n.reason.clone(),
            })
            .collect(),
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn change_to_pb(c: &Change) -> pb::SnapshotChange {
    pb::SnapshotChange {
        field: c.field.clone(),
        kind: match c.kind {
            ChangeKind::Added => pb::ChangeKind::Added,
            ChangeKind::Removed => pb::ChangeKind::Removed,
            ChangeKind::Changed => pb::ChangeKind::Changed,
        } as i32,
        before: c.before.clone(),
        after: c.after.clone(),
    }
}

pub fn upgrade_to_pb(outcome: &UpgradeOutcome) -> pb::UpgradeAgentResponse {
    pb::UpgradeAgentResponse {
        agent: Some(agent_to_pb(&outcome.agent)),
        from_version: outcome.from_version,
        to_version: outcome.to_version,
        changes: outcome.changes.iter().map(change_to_pb).collect(),
        dry_run: outcome.dry_run,
    }
}

pub use engarde::kit::request::parse_id;

pub fn flow_origin_to_pb(origin: FlowOrigin) -> pb::FlowOrigin {
    match origin {
        FlowOrigin::None => pb::FlowOrigin::Unspecified,
        FlowOrigin::Generated => pb::FlowOrigin::Generated,
        FlowOrigin::Uploaded => pb::FlowOrigin::Uploaded,
        FlowOrigin::Linked => pb::FlowOrigin::Linked,
    }
}
