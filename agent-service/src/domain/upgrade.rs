//! Moving an agent to its source workflow's newest version: the difference between the agent's
//! snapshot and the workflow now, field by field, and the agent after the move.
//!
//! Steps and triggers are compared by position (the order is what a walker follows), so a
//! change reads as `workflow_config.steps[1].prompt`; a step only one side has is ADDED or
//! REMOVED as a whole, shown as JSON.

use std::collections::BTreeSet;

use engarde::kit::error::{ServiceError, ServiceResult};
use engarde::proto::workflow::v1 as workflow_pb;
use serde::{Deserialize, Serialize};

use super::mapping::{capabilities_of, snapshot_of};
use super::model::{Agent, SourceWorkflow, WorkflowSnapshot};

/// How a field differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    Added,
    Removed,
    Changed,
}

/// One difference between a snapshot and the workflow now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub field: String,
    pub kind: ChangeKind,
    /// Empty when added.
    pub before: String,
    /// Empty when removed.
    pub after: String,
}

impl Change {
    fn changed(field: impl Into<String>, before: impl Into<String>, after: impl Into<String>) -> Self {
        Self { field: field.into(), kind: ChangeKind::Changed, before: before.into(), after: after.into() }
    }
}

/// The answer of UpgradeAgent (stored whole for replays).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpgradeOutcome {
    pub agent: Agent,
    pub from_version: i64,
    pub to_version: i64,
    pub changes: Vec<Change>,
    pub dry_run: bool,
}

/// What an upgrade does to one agent.
#[derive(Debug, Clone, PartialEq)]
pub struct UpgradePlan {
    pub from_version: i64,
    pub to_version: i64,
    /// Empty when the agent is already at the workflow's current version.
    pub changes: Vec<Change>,
    snapshot: WorkflowSnapshot,
    capabilities: Vec<String>,
}

impl UpgradePlan {
    /// Whether there is nothing to do.
    pub fn is_noop(&self) -> bool {
        self.from_version == self.to_version
    }
}

/// Whether upgrading would change the agent: its workflow is at a newer version *and* the
/// workflow's name, category or config differ from the snapshot. Archiving a workflow bumps its
/// version (every change does: it is the etag) and changes none of them.
pub fn upgrade_available(snapshot: &WorkflowSnapshot, workflow: &SourceWorkflow) -> bool {
    workflow.version > snapshot.workflow_version
        && (workflow.name != snapshot.workflow_name
            || workflow.category != snapshot.category
            || workflow.config != snapshot.config)
}

/// Compares the agent's snapshot with `workflow` (its source, read now).
pub fn plan_upgrade(agent: &Agent, workflow: &SourceWorkflow) -> ServiceResult<UpgradePlan> {
    let Some(snapshot) = &agent.snapshot else {
        return Err(ServiceError::FailedPrecondition(format!(
            "agent {} was not made from a workflow; there is nothing to upgrade to",
            agent.id
        )));
    };
    if snapshot.workflow_version >= workflow.version {
        return Ok(UpgradePlan {
            from_version: snapshot.workflow_version,
            to_version: snapshot.workflow_version,
            changes: Vec::new(),
            snapshot: snapshot.clone(),
            capabilities: agent.capabilities.clone(),
        });
    }
    let mut changes = Vec::new();
    if snapshot.workflow_name != workflow.name {
        changes.push(Change::changed("workflow_name", &snapshot.workflow_name, &workflow.name));
    }
    if snapshot.category != workflow.category {
        changes.push(Change::changed("category", snapshot.category.as_str(), workflow.category.as_str()));
    }
    diff_config(&snapshot.config, &workflow.config, &mut changes);
    let capabilities = upgraded_capabilities(&agent.capabilities, &snapshot.config, &workflow.config);
    if capabilities != agent.capabilities {
        changes.push(Change::changed("capabilities", agent.capabilities.join(","), capabilities.join(",")));
    }
    Ok(UpgradePlan {
        from_version: snapshot.workflow_version,
        to_version: workflow.version,
        changes,
        snapshot: snapshot_of(workflow),
        capabilities,
    })
}

/// Applies a plan made from this agent's snapshot.
pub fn apply_upgrade(agent: &mut Agent, plan: &UpgradePlan) {
    agent.snapshot = Some(plan.snapshot.clone());
    agent.capabilities = plan.capabilities.clone();
}

/// The capabilities after an upgrade: the ones the old config gave are replaced by the ones the
/// new config gives; the ones a caller added by hand stay.
pub fn upgraded_capabilities(
    current: &[String],
    old: &workflow_pb::WorkflowConfig,
    new: &workflow_pb::WorkflowConfig,
) -> Vec<String> {
    let derived_before: BTreeSet<String> = capabilities_of(old).into_iter().collect();
    let mut result: BTreeSet<String> = current.iter().filter(|c| !derived_before.contains(*c)).cloned().collect();
    result.extend(capabilities_of(new));
    result.into_iter().collect()
}

/// The lowercase name of a protobuf enum value ("STEP_KIND_LLM" -> "llm"), or its number.
fn enum_name(full: Option<&str>, prefix: &str, value: i32) -> String {
    match full {
        Some(name) => name.strip_prefix(prefix).unwrap_or(name).to_lowercase(),
        None => value.to_string(),
    }
}

fn step_kind(kind: i32) -> String {
    // Unset is llm, as workflow-service defines it: not a difference worth reporting.
    let kind = if super::run::is_llm(kind) { workflow_pb::StepKind::Llm as i32 } else { kind };
    enum_name(workflow_pb::StepKind::try_from(kind).ok().map(|k| k.as_str_name()), "STEP_KIND_", kind)
}

fn trigger_type(value: i32) -> String {
    enum_name(workflow_pb::TriggerType::try_from(value).ok().map(|t| t.as_str_name()), "TRIGGER_TYPE_", value)
}

fn review_action(value: i32) -> String {
    enum_name(
        workflow_pb::ReviewDefaultAction::try_from(value).ok().map(|a| a.as_str_name()),
        "REVIEW_DEFAULT_ACTION_",
        value,
    )
}

fn step_json(step: &workflow_pb::Step) -> String {
    let mut object = serde_json::Map::new();
    object.insert("id".into(), step.id.clone().into());
    if !step.name.is_empty() && step.name != step.id {
        object.insert("name".into(), step.name.clone().into());
    }
    object.insert("kind".into(), step_kind(step.kind).into());
    if !step.prompt.is_empty() {
        object.insert("prompt".into(), step.prompt.clone().into());
    }
    if !step.reviews_step.is_empty() {
        object.insert("reviews_step".into(), step.reviews_step.clone().into());
    }
    serde_json::Value::Object(object).to_string()
}

fn trigger_json(trigger: &workflow_pb::Trigger) -> String {
    let mut object = serde_json::Map::new();
    object.insert("type".into(), trigger_type(trigger.r#type).into());
    if !trigger.cron.is_empty() {
        object.insert("cron".into(), trigger.cron.clone().into());
    }
    if !trigger.timezone.is_empty() {
        object.insert("timezone".into(), trigger.timezone.clone().into());
    }
    serde_json::Value::Object(object).to_string()
}

/// Compares one field of two values, recording a change when they differ.
fn compare(out: &mut Vec<Change>, field: String, before: String, after: String) {
    if before != after {
        out.push(Change::changed(field, before, after));
    }
}

/// Both sides of a positional list: pairs are compared field by field, the rest added/removed.
fn diff_list<T>(
    field: &str,
    before: &[T],
    after: &[T],
    out: &mut Vec<Change>,
    as_json: fn(&T) -> String,
    compare_fields: impl Fn(&str, &T, &T, &mut Vec<Change>),
) {
    for i in 0..before.len().max(after.len()) {
        let path = format!("{field}[{i}]");
        match (before.get(i), after.get(i)) {
            (Some(b), Some(a)) => compare_fields(&path, b, a, out),
            (Some(b), None) => {
                out.push(Change { field: path, kind: ChangeKind::Removed, before: as_json(b), after: String::new() })
            }
            (None, Some(a)) => {
                out.push(Change { field: path, kind: ChangeKind::Added, before: String::new(), after: as_json(a) })
            }
            (None, None) => {}
        }
    }
}

fn diff_config(before: &workflow_pb::WorkflowConfig, after: &workflow_pb::WorkflowConfig, out: &mut Vec<Change>) {
    diff_list("workflow_config.steps", &before.steps, &after.steps, out, step_json, |path, b, a, out| {
        compare(out, format!("{path}.id"), b.id.clone(), a.id.clone());
        // workflow-service answers a step's name as its id when it has none: compare what shows.
        let shown = |s: &workflow_pb::Step| if s.name.is_empty() { s.id.clone() } else { s.name.clone() };
        compare(out, format!("{path}.name"), shown(b), shown(a));
        compare(out, format!("{path}.kind"), step_kind(b.kind), step_kind(a.kind));
        compare(out, format!("{path}.prompt"), b.prompt.clone(), a.prompt.clone());
        compare(out, format!("{path}.reviews_step"), b.reviews_step.clone(), a.reviews_step.clone());
    });
    diff_list("workflow_config.triggers", &before.triggers, &after.triggers, out, trigger_json, |path, b, a, out| {
        compare(out, format!("{path}.type"), trigger_type(b.r#type), trigger_type(a.r#type));
        compare(out, format!("{path}.cron"), b.cron.clone(), a.cron.clone());
        compare(out, format!("{path}.timezone"), b.timezone.clone(), a.timezone.clone());
    });

    let (b, a) = (before.rules.unwrap_or_default(), after.rules.unwrap_or_default());
    let rules = "workflow_config.rules";
    compare(
        out,
        format!("{rules}.approval_required"),
        b.approval_required.to_string(),
        a.approval_required.to_string(),
    );
    compare(out, format!("{rules}.max_retries"), b.max_retries.to_string(), a.max_retries.to_string());
    compare(out, format!("{rules}.autonomous"), b.autonomous.to_string(), a.autonomous.to_string());
    compare(
        out,
        format!("{rules}.review_timeout_seconds"),
        b.review_timeout_seconds.to_string(),
        a.review_timeout_seconds.to_string(),
    );
    compare(
        out,
        format!("{rules}.review_default_action"),
        review_action(b.review_default_action),
        review_action(a.review_default_action),
    );

    // Rules kept uninterpreted: each top-level key, as JSON.
    let json = |rules: &Option<prost_types::Struct>| {
        rules
            .as_ref()
            .and_then(|r| engarde::kit::struct_json::struct_to_json("extra_rules", r).ok())
            .unwrap_or_default()
    };
    let (b, a) = (json(&before.extra_rules), json(&after.extra_rules));
    let keys: BTreeSet<&String> = b.keys().chain(a.keys()).collect();
    for key in keys {
        let field = format!("workflow_config.extra_rules[{key:?}]");
        match (b.get(key), a.get(key)) {
            (Some(old), Some(new)) => compare(out, field, old.to_string(), new.to_string()),
            (None, Some(new)) => {
                out.push(Change { field, kind: ChangeKind::Added, before: String::new(), after: new.to_string() })
            }
            (Some(old), None) => {
                out.push(Change { field, kind: ChangeKind::Removed, before: old.to_string(), after: String::new() })
            }
            (None, None) => {}
        }
    }

    // A flow export can be a megabyte: the change names its size, not its text.
    let (b, a) = (&before.langflow_flow_json, &after.langflow_flow_json);
    if b != a {
        let size = |s: &str| if s.is_empty() { String::new() } else { format!("({} bytes of flow JSON)", s.len()) };
        let kind = match (b.is_empty(), a.is_empty()) {
            (true, false) => ChangeKind::Added,
            (false, true) => ChangeKind::Removed,
            _ => ChangeKind::Changed,
        };
        out.push(Change { field: "workflow_config.langflow_flow_json".into(), kind, before: size(b), after: size(a) });
    }
}

#[cfg(test)]
mod tests {
    use workflow_pb::StepKind;

    use super::*;
    use crate::domain::mapping::tests::{step, workflow};
    use crate::domain::mapping::{Overrides, agent_from_workflow};
    use crate::domain::model::WorkflowCategory;

    fn agent_from(source: &SourceWorkflow) -> Agent {
        agent_from_workflow(source, Overrides::default()).unwrap().into_draft("t1", crate::domain::model::now())
    }

    #[test]
    fn an_upgrade_is_available_only_when_a_newer_version_changes_what_the_snapshot_holds() {
        let source = workflow(
            WorkflowCategory::ContentGeneration,
            workflow_pb::WorkflowConfig { steps: vec![step("a", StepKind::Llm, "p")], ..Default::default() },
        );
        let agent = agent_from(&source);
        let snapshot = agent.snapshot.as_ref().unwrap();
        assert!(!upgrade_available(snapshot, &source), "the same version");
        let archived =
            SourceWorkflow { version: 2, status: crate::domain::model::WorkflowStatus::Archived, ..source.clone() };
        assert!(!upgrade_available(snapshot, &archived), "a newer version that only changed the status");
        let renamed = SourceWorkflow { version: 2, name: "Renamed".into(), ..source.clone() };
        assert!(upgrade_available(snapshot, &renamed));
        let recategorised = SourceWorkflow { version: 2, category: WorkflowCategory::AbTesting, ..source.clone() };
        assert!(upgrade_available(snapshot, &recategorised));
        let mut reconfigured = SourceWorkflow { version: 2, ..source.clone() };
        reconfigured.config.steps[0].prompt = "q".into();
        assert!(upgrade_available(snapshot, &reconfigured));
        let older = SourceWorkflow { version: 0, name: "Renamed".into(), ..source };
        assert!(!upgrade_available(snapshot, &older), "never back to an older version");
    }

    #[test]
    fn the_same_version_is_a_noop() {
        let source = workflow(
            WorkflowCategory::ContentGeneration,
            workflow_pb::WorkflowConfig { steps: vec![step("a", StepKind::Llm, "p")], ..Default::default() },
        );
        let plan = plan_upgrade(&agent_from(&source), &source).unwrap();
        assert!(plan.is_noop());
        assert!(plan.changes.is_empty());
    }

    #[test]
    fn a_change_of_the_uninterpreted_rules_alone_is_shown_key_by_key() {
        let rules =
            |value: serde_json::Value| Some(engarde::kit::struct_json::json_to_struct(value.as_object().unwrap()));
        let config = workflow_pb::WorkflowConfig {
            steps: vec![step("a", StepKind::Llm, "p")],
            extra_rules: rules(serde_json::json!({"tone": "calm", "quota": 3.0})),
            ..Default::default()
        };
        let old = workflow(WorkflowCategory::ContentGeneration, config.clone());
        let new = SourceWorkflow {
            version: 2,
            config: workflow_pb::WorkflowConfig {
                extra_rules: rules(serde_json::json!({"tone": "bold", "channels": ["x"]})),
                ..config
            },
            ..old.clone()
        };
        assert!(upgrade_available(agent_from(&old).snapshot.as_ref().unwrap(), &new));
        let plan = plan_upgrade(&agent_from(&old), &new).unwrap();
        let fields: Vec<(&str, ChangeKind)> = plan.changes.iter().map(|c| (c.field.as_str(), c.kind)).collect();
        assert_eq!(
            fields,
            vec![
                ("workflow_config.extra_rules[\"channels\"]", ChangeKind::Added),
                ("workflow_config.extra_rules[\"quota\"]", ChangeKind::Removed),
                ("workflow_config.extra_rules[\"tone\"]", ChangeKind::Changed),
            ]
        );
        assert_eq!((plan.changes[2].before.as_str(), plan.changes[2].after.as_str()), ("\"calm\"", "\"bold\""));
    }

    #[test]
    fn each_difference_is_named_by_its_path() {
        let old = workflow(
            WorkflowCategory::ContentGeneration,
            workflow_pb::WorkflowConfig {
                steps: vec![step("draft", StepKind::Llm, "Write"), step("polish", StepKind::Llm, "Polish")],
                ..Default::default()
            },
        );
        let mut agent = agent_from(&old);
        agent.capabilities.push("custom_skill".into());
        let new = SourceWorkflow {
            version: 2,
            name: "Renamed".into(),
            config: workflow_pb::WorkflowConfig {
                steps: vec![
                    step("draft", StepKind::Llm, "Write"),
                    step("polish", StepKind::Llm, "Polish harder"),
                    step("approve", StepKind::Review, ""),
                ],
                rules: Some(workflow_pb::Rules { max_retries: 2, ..Default::default() }),
                ..Default::default()
            },
            ..old.clone()
        };
        let plan = plan_upgrade(&agent, &new).unwrap();
        let fields: Vec<(&str, ChangeKind)> = plan.changes.iter().map(|c| (c.field.as_str(), c.kind)).collect();
        assert_eq!(
            fields,
            vec![
                ("workflow_name", ChangeKind::Changed),
                ("workflow_config.steps[1].prompt", ChangeKind::Changed),
                ("workflow_config.steps[2]", ChangeKind::Added),
                ("workflow_config.rules.max_retries", ChangeKind::Changed),
                ("capabilities", ChangeKind::Changed),
            ]
        );
        assert_eq!(plan.changes[1].before, "Polish");
        assert_eq!(plan.changes[1].after, "Polish harder");
        assert_eq!(plan.changes[2].after, r#"{"id":"approve","kind":"review"}"#);
        assert_eq!((plan.from_version, plan.to_version), (1, 2));

        apply_upgrade(&mut agent, &plan);
        assert_eq!(agent.snapshot.as_ref().unwrap().workflow_version, 2);
        assert_eq!(agent.capabilities, vec!["custom_skill", "human_review", "text_generation"]);
    }

    #[test]
    fn a_stand_alone_agent_has_nothing_to_upgrade_to() {
        let source = workflow(WorkflowCategory::AbTesting, workflow_pb::WorkflowConfig::default());
        let mut agent = agent_from(&source);
        agent.snapshot = None;
        assert_eq!(plan_upgrade(&agent, &source).unwrap_err().code(), tonic::Code::FailedPrecondition);
    }
}
