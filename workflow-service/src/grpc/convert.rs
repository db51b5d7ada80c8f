//! Conversions between the protobuf contracts and the domain. Parsing a request's config here
//! reports every bad field at once, with its path.

use engarde::kit::error::{FieldViolation, ServiceError, ServiceResult};
use engarde::proto::workflow::v1 as pb;

use crate::domain::validation;
use crate::domain::{
    Category, ExecutionReport, RecordedExecution, ReviewDefaultAction, Rules, Status, Step, StepKind, Trigger,
    TriggerType, Workflow, WorkflowConfig,
};

fn timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

pub fn category_to_pb(c: Category) -> pb::WorkflowCategory {
    match c {
        Category::ContentGeneration => pb::WorkflowCategory::ContentGeneration,
        Category::AbTesting => pb::WorkflowCategory::AbTesting,
        Category::AudienceIntelligence => pb::WorkflowCategory::AudienceIntelligence,
        Category::BudgetOptimization => pb::WorkflowCategory::BudgetOptimization,
        Category::AnalyticsAutomation => pb::WorkflowCategory::AnalyticsAutomation,
    }
}

/// A category filter or field: `Ok(None)` for UNSPECIFIED, an error for a number that is no category.
pub fn category_from_pb(field: &str, value: i32) -> ServiceResult<Option<Category>> {
    match pb::WorkflowCategory::try_from(value) {
        Ok(pb::WorkflowCategory::Unspecified) => Ok(None),
        Ok(pb::WorkflowCategory::ContentGeneration) => Ok(Some(Category::ContentGeneration)),
        Ok(pb::WorkflowCategory::AbTesting) => Ok(Some(Category::AbTesting)),
        Ok(pb::WorkflowCategory::AudienceIntelligence) => Ok(Some(Category::AudienceIntelligence)),
        Ok(pb::WorkflowCategory::BudgetOptimization) => Ok(Some(Category::BudgetOptimization)),
        Ok(pb::WorkflowCategory::AnalyticsAutomation) => Ok(Some(Category::AnalyticsAutomation)),
        Err(_) => Err(ServiceError::invalid(field, format!("unknown category {value}"))),
    }
}

pub fn status_to_pb(s: Status) -> pb::WorkflowStatus {
    match s {
        Status::Draft => pb::WorkflowStatus::Draft,
        Status::Active => pb::WorkflowStatus::Active,
        Status::Archived => pb::WorkflowStatus::Archived,
    }
}

pub fn status_from_pb(field: &str, value: i32) -> ServiceResult<Option<Status>> {
    match pb::WorkflowStatus::try_from(value) {
        Ok(pb::WorkflowStatus::Unspecified) => Ok(None),
        Ok(pb::WorkflowStatus::Draft) => Ok(Some(Status::Draft)),
        Ok(pb::WorkflowStatus::Active) => Ok(Some(Status::Active)),
        Ok(pb::WorkflowStatus::Archived) => Ok(Some(Status::Archived)),
        Err(_) => Err(ServiceError::invalid(field, format!("unknown status {value}"))),
    }
}

pub fn config_to_pb(c: &WorkflowConfig) -> pb::WorkflowConfig {
    pb::WorkflowConfig {
        steps: c
            .steps
            .iter()
            .map(|s| pb::Step {
                id: s.id.clone(),
                name: if s.name.is_empty() { s.id.clone() } else { s.name.clone() },
                kind: match s.kind {
                    StepKind::Llm => pb::StepKind::Llm,
                    StepKind::Review => pb::StepKind::Review,
                    StepKind::Output => pb::StepKind::Output,
                } as i32,
                prompt: s.prompt.clone(),
                reviews_step: s.reviews_step.clone().unwrap_or_default(),
            })
            .collect(),
        triggers: c
            .triggers
            .iter()
            .map(|t| pb::Trigger {
                r#type: match t.kind {
                    TriggerType::Manual => pb::TriggerType::Manual,
                    TriggerType::Scheduled => pb::TriggerType::Scheduled,
                    TriggerType::Api => pb::TriggerType::Api,
                } as i32,
                cron: t.cron.clone(),
                timezone: t.timezone.clone(),
            })
            .collect(),
        rules: Some(pb::Rules {
            approval_required: c.rules.approval_required,
            max_retries: c.rules.max_retries,
            autonomous: c.rules.autonomous,
            review_timeout_seconds: c.rules.review_timeout_seconds,
            review_default_action: match c.rules.review_default_action {
                ReviewDefaultAction::Approve => pb::ReviewDefaultAction::Approve,
                ReviewDefaultAction::Reject => pb::ReviewDefaultAction::Reject,
            } as i32,
        }),
        langflow_flow_json: c.langflow_flow_json.clone(),
        extra_rules: (!c.extra_rules.is_empty()).then(|| engarde::kit::struct_json::json_to_struct(&c.extra_rules)),
    }
}

/// Parses and validates a config; `prefix` is its path in the request.
pub fn config_from_pb(prefix: &str, config: Option<pb::WorkflowConfig>) -> Result<WorkflowConfig, Vec<FieldViolation>> {
    let Some(config) = config else {
        return Err(vec![FieldViolation::new(prefix, "is required")]);
    };
    let mut out = Vec::new();
    let steps = config
        .steps
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let kind = match pb::StepKind::try_from(s.kind) {
                Ok(pb::StepKind::Unspecified | pb::StepKind::Llm) => StepKind::Llm,
                Ok(pb::StepKind::Review) => StepKind::Review,
                Ok(pb::StepKind::Output) => StepKind::Output,
                Err(_) => {
                    out.push(FieldViolation::new(
                        format!("{prefix}.steps[{i}].kind"),
                        format!("unknown step kind {}", s.kind),
                    ));
                    StepKind::Llm
                }
            };
            let name = if s.name == s.id { String::new() } else { s.name };
            let reviews_step = Some(s.reviews_step).filter(|r| !r.is_empty());
            Step { id: s.id, name, kind, prompt: s.prompt, reviews_step }
        })
        .collect();
    let triggers = config
        .triggers
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let kind = match pb::TriggerType::try_from(t.r#type) {
                Ok(pb::TriggerType::Manual) => TriggerType::Manual,
                Ok(pb::TriggerType::Scheduled) => TriggerType::Scheduled,
                Ok(pb::TriggerType::Api) => TriggerType::Api,
                Ok(pb::TriggerType::Unspecified) => {
                    out.push(FieldViolation::new(format!("{prefix}.triggers[{i}].type"), "a trigger needs a type"));
                    TriggerType::Manual
                }
                Err(_) => {
                    out.push(FieldViolation::new(
                        format!("{prefix}.triggers[{i}].type"),
                        format!("unknown trigger type {}", t.r#type),
                    ));
                    TriggerType::Manual
                }
            };
            Trigger { kind, cron: t.cron, timezone: t.timezone }
        })
        .collect();
    let rules = match config.rules {
        None => Rules::default(),
        Some(r) => Rules {
            approval_required: r.approval_required,
            max_retries: r.max_retries,
            autonomous: r.autonomous,
            review_timeout_seconds: r.review_timeout_seconds,
            review_default_action: match pb::ReviewDefaultAction::try_from(r.review_default_action) {
                Ok(pb::ReviewDefaultAction::Approve) => ReviewDefaultAction::Approve,
                Ok(pb::ReviewDefaultAction::Reject | pb::ReviewDefaultAction::Unspecified) => {
                    ReviewDefaultAction::Reject
                }
                Err(_) => {
                    out.push(FieldViolation::new(
                        format!("{prefix}.rules.review_default_action"),
                        format!("unknown action {}", r.review_default_action),
                    ));
                    ReviewDefaultAction::Reject
                }
            },
        },
    };
    let extra_rules = match config.extra_rules {
        None => serde_json::Map::new(),
        Some(object) => engarde::kit::struct_json::struct_to_json(&format!("{prefix}.extra_rules"), &object)
            .unwrap_or_else(|(field, description)| {
                out.push(FieldViolation::new(field, description));
                serde_json::Map::new()
            }),
    };
    let config = WorkflowConfig { steps, triggers, rules, langflow_flow_json: config.langflow_flow_json, extra_rules };
    validation::check_config(prefix, &config, &mut out);
    if out.is_empty() { Ok(config) } else { Err(out) }
}

pub fn workflow_to_pb(w: &Workflow) -> pb::WorkflowDefinition {
    pb::WorkflowDefinition {
        id: w.id.to_string(),
        tenant_id: w.tenant_id.clone(),
        name: w.name.clone(),
        description: w.description.clone(),
        category: category_to_pb(w.category) as i32,
        workflow_config: Some(config_to_pb(&w.config)),
        status: status_to_pb(w.status) as i32,
        is_template: w.is_template,
        execution_count: w.execution_count,
        success_count: w.success_count,
        success_rate: w.success_rate(),
        version: w.version,
        etag: w.etag(),
        create_time: Some(timestamp(w.created_at)),
        update_time: Some(timestamp(w.updated_at)),
    }
}

use engarde::kit::request::collect_id;
pub use engarde::kit::request::parse_id;

/// One report of an execution, its fields named after `prefix` (`executions[3].`); its
/// violations are added to `violations`.
pub fn parse_report(
    prefix: &str,
    req: &pb::RecordExecutionRequest,
    violations: &mut Vec<FieldViolation>,
) -> Option<ExecutionReport> {
    let workflow_id = collect_id(&format!("{prefix}workflow_id"), &req.workflow_id, violations);
    let execution_id = &req.execution_id;
    if execution_id.is_empty() || execution_id.len() > 128 || !execution_id.chars().all(|c| c.is_ascii_graphic()) {
        violations
            .push(FieldViolation::new(format!("{prefix}execution_id"), "must be 1-128 printable ASCII characters"));
        return None;
    }
    Some(ExecutionReport { workflow_id: workflow_id?, execution_id: execution_id.clone(), succeeded: req.succeeded })
}

pub fn recorded_to_pb(recorded: &RecordedExecution) -> pb::RecordExecutionResponse {
    pb::RecordExecutionResponse {
        counted: recorded.counted,
        execution_count: recorded.workflow.execution_count,
        success_rate: recorded.workflow.success_rate(),
    }
}
