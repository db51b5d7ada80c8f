//! The platform's `ai_agents` rows, mapped onto our agents: pure functions, no database, no
//! Langflow. A row either becomes an agent that validates, with notes on what the mapping chose,
//! or is refused with one reason naming the column. What needs the outside world (the snapshot
//! from workflow-service, the link to a Langflow flow) is decided by `crate::import`, from the
//! `workflow_id` and `flow_id` answered here.
//!
//! - `configuration` (a JSON object): `brand_voice`, `tone` and `target_audience` are taken when
//!   they are strings; every other key goes to `extra`, a string as it is and any other value as
//!   its JSON text (keys lowercased, other characters written `_`, noted).
//! - `capabilities` (a JSON list of strings): written as capability names (lowercase, `_`).
//! - `workflow_definition` (a JSON object): names its workflow by `workflow_id` (or `id`).
//! - `average_response_time` is read in seconds (the platform's unit) and kept in milliseconds.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::configuration;
use super::model::{Agent, AgentConfig, AgentStatus, AgentType, FlowOrigin};

/// One row of the platform's `ai_agents`, every column as read (any may be null); the JSON
/// columns as their text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlatformAgent {
    pub id: Option<String>,
    pub tenant_id: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub agent_type: Option<String>,
    pub status: Option<String>,
    pub langflow_workflow_id: Option<String>,
    pub langflow_deployment_id: Option<String>,
    pub workflow_definition: Option<String>,
    pub configuration: Option<String>,
    pub capabilities: Option<String>,
    pub total_executions: Option<i64>,
    pub successful_executions: Option<i64>,
    pub average_response_time: Option<f64>,
}

/// A row ready to import: the agent (version 1, without snapshot nor flow yet), the flow to link
/// and the workflow to take the snapshot of, if the row names them, and the notes so far.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedAgent {
    pub agent: Agent,
    pub flow_id: Option<String>,
    pub workflow_id: Option<Uuid>,
    pub notes: Vec<String>,
}

fn text(column: &Option<String>) -> Option<&str> {
    column.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn json_column(name: &str, column: &Option<String>) -> Result<Option<Value>, String> {
    let Some(text) = text(column) else { return Ok(None) };
    let value: Value = serde_json::from_str(text).map_err(|e| format!("{name}: not JSON ({e})"))?;
    // A platform that stored the JSON encoded twice has a string holding it.
    let value = match value {
        Value::String(inner) if inner.trim_start().starts_with(['{', '[']) => {
            serde_json::from_str(&inner).map_err(|e| format!("{name}: a string that is not JSON ({e})"))?
        }
        other => other,
    };
    if engarde::kit::struct_json::contains_nul(&value) {
        return Err(format!("{name}: {}", engarde::text::NUL_DESCRIPTION));
    }
    Ok(Some(value).filter(|v| !v.is_null()))
}

/// `text` as a name our rules accept: lowercase ASCII letters, digits and `_` (plus what
/// `extra` keys may hold besides: `keep`), starting with a letter; empty when nothing is left.
fn identifier(text: &str, keep: &[char]) -> String {
    let mut out = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_alphanumeric() || keep.contains(&c) {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    let out = out.trim_end_matches('_').trim_start_matches(|c: char| !c.is_ascii_alphabetic());
    out.to_owned()
}

/// Maps one row; `Err` is the reason it cannot be imported.
pub fn map_agent(row: &PlatformAgent, now: DateTime<Utc>) -> Result<MappedAgent, String> {
    let mut notes = Vec::new();
    let id = text(&row.id).ok_or("id: missing")?;
    let id = Uuid::parse_str(id).map_err(|_| format!("id: {id:?} is not a UUID"))?;
    let tenant_id = text(&row.tenant_id).ok_or("tenant_id: missing")?;
    engarde::kit::auth::Tenant::parse(tenant_id).map_err(|e| format!("tenant_id: {e}"))?;
    let name = text(&row.name).ok_or("name: missing")?;
    let description = row.description.as_deref().unwrap_or("");
    let mut violations = Vec::new();
    configuration::check_name("name", name, &mut violations);
    configuration::check_description("description", description, &mut violations);
    let agent_type = text(&row.agent_type).ok_or("agent_type: missing")?;
    let agent_type = AgentType::parse(&agent_type.to_lowercase()).ok_or_else(|| {
        let known: Vec<&str> = AgentType::ALL.iter().map(|t| t.as_str()).collect();
        format!("agent_type: unknown type {agent_type:?} (expected one of {})", known.join(", "))
    })?;
    let status = match text(&row.status) {
        None => {
            notes.push("status: missing, imported as draft".to_owned());
            AgentStatus::Draft
        }
        Some(s) => AgentStatus::parse(&s.to_lowercase()).ok_or_else(|| {
            format!("status: unknown status {s:?} (expected draft, deployed, active, paused or error)")
        })?,
    };
    let total = row.total_executions.unwrap_or(0);
    let successful = row.successful_executions.unwrap_or(0);
    if total < 0 || !(0..=total).contains(&successful) {
        return Err(format!("successful_executions: {successful} of {total} total_executions is not a count of them"));
    }
    let seconds = row.average_response_time.unwrap_or(0.0);
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("average_response_time: {seconds} is not a duration in seconds"));
    }
    let configuration = match json_column("configuration", &row.configuration)? {
        None => AgentConfig::default(),
        Some(Value::Object(object)) => map_configuration(object, &mut notes),
        Some(other) => return Err(format!("configuration: must be a JSON object, not {other}")),
    };
    configuration::check_config("configuration", &configuration, &mut violations);
    let capabilities = match json_column("capabilities", &row.capabilities)? {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(identifier(s, &[])),
                other => Err(format!("capabilities[{i}]: must be a string, not {other}")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => return Err(format!("capabilities: must be a JSON list, not {other}")),
    };
    let capabilities = configuration::check_capabilities("capabilities", &capabilities, &mut violations);
    let workflow_id = match json_column("workflow_definition", &row.workflow_definition)? {
        None => None,
        Some(Value::Object(object)) => {
            let named = object.get("workflow_id").or_else(|| object.get("id")).and_then(Value::as_str);
            match named.map(Uuid::parse_str) {
                Some(Ok(id)) => Some(id),
                _ => {
                    notes.push(
                        "workflow_definition: names no workflow by a UUID \"workflow_id\" or \"id\": no snapshot"
                            .to_owned(),
                    );
                    None
                }
            }
        }
        Some(other) => return Err(format!("workflow_definition: must be a JSON object, not {other}")),
    };
    if let Some(first) = violations.first() {
        let more = if violations.len() > 1 { format!(" (and {} more)", violations.len() - 1) } else { String::new() };
        return Err(format!("{}: {}{more}", first.field, first.description));
    }
    Ok(MappedAgent {
        agent: Agent {
            id,
            tenant_id: tenant_id.to_owned(),
            name: name.to_owned(),
            description: description.to_owned(),
            agent_type,
            status,
            status_reason: if status == AgentStatus::Error {
                "in error on the platform it was imported from".to_owned()
            } else {
                String::new()
            },
            langflow_workflow_id: String::new(),
            langflow_deployment_id: String::new(),
            flow_origin: FlowOrigin::None,
            snapshot: None,
            configuration,
            capabilities,
            total_executions: total,
            successful_executions: successful,
            average_response_time_ms: seconds * 1000.0,
            feedback_count: 0,
            feedback_score_sum: 0,
            usage: Default::default(),
            version: 1,
            created_at: now,
            updated_at: now,
        },
        flow_id: text(&row.langflow_workflow_id).map(str::to_owned),
        workflow_id,
        notes,
    })
}

fn map_configuration(object: serde_json::Map<String, Value>, notes: &mut Vec<String>) -> AgentConfig {
    let mut config = AgentConfig::default();
    let mut extra = BTreeMap::new();
    for (key, value) in object {
        match (key.as_str(), value) {
            ("brand_voice", Value::String(s)) => config.brand_voice = s,
            ("tone", Value::String(s)) => config.tone = s,
            ("target_audience", Value::String(s)) => config.target_audience = s,
            (_, value) => {
                let name = identifier(&key, &['-', '.', '_']);
                if name != key {
                    notes.push(format!("configuration.{key}: kept in extra as {name:?}"));
                }
                let text = match value {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                extra.insert(name, text);
            }
        }
    }
    config.extra = extra;
    config
}

/// What an agent comes in as when its flow could not be linked: an agent that runs needs a
/// flow, so a deployed, active or paused one is a draft (and the note says so).
pub fn without_flow(agent: &mut Agent, notes: &mut Vec<String>) {
    if matches!(agent.status, AgentStatus::Deployed | AgentStatus::Active | AgentStatus::Paused) {
        notes.push(format!(
            "status: {} on the platform, imported as draft (it has no flow here)",
            agent.status.as_str()
        ));
        agent.status = AgentStatus::Draft;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn row() -> PlatformAgent {
        PlatformAgent {
            id: Some("6f1d3c1e-8f57-4d4a-9a8e-0c2b1e7d9f10".into()),
            tenant_id: Some("default-tenant-001".into()),
            name: Some("Copy writer".into()),
            description: None,
            agent_type: Some("copy_generation".into()),
            status: Some("active".into()),
            langflow_workflow_id: Some("flow-1".into()),
            langflow_deployment_id: None,
            workflow_definition: Some(json!({"workflow_id": "0b7c6f2e-5c1e-4a8e-9d53-2f6f1a1b2c3d"}).to_string()),
            configuration: Some(
                json!({"brand_voice": "Warm", "tone": "playful", "Max Length": 280, "channels": ["x"]}).to_string(),
            ),
            capabilities: Some(json!(["text_generation", "A/B testing", "text_generation"]).to_string()),
            total_executions: Some(12),
            successful_executions: Some(9),
            average_response_time: Some(1.25),
        }
    }

    #[test]
    fn a_platform_agent_keeps_its_values() {
        let mapped = map_agent(&row(), Utc::now()).unwrap();
        let a = &mapped.agent;
        assert_eq!((a.agent_type, a.status), (AgentType::CopyGeneration, AgentStatus::Active));
        assert_eq!((a.configuration.brand_voice.as_str(), a.configuration.tone.as_str()), ("Warm", "playful"));
        assert_eq!(a.configuration.extra.get("max_length").map(String::as_str), Some("280"));
        assert_eq!(a.configuration.extra.get("channels").map(String::as_str), Some("[\"x\"]"));
        assert_eq!(a.capabilities, ["a_b_testing", "text_generation"]);
        assert_eq!((a.total_executions, a.successful_executions, a.average_response_time_ms), (12, 9, 1250.0));
        assert_eq!(mapped.flow_id.as_deref(), Some("flow-1"));
        assert_eq!(mapped.workflow_id.unwrap().to_string(), "0b7c6f2e-5c1e-4a8e-9d53-2f6f1a1b2c3d");
    }

    #[test]
    fn an_agent_without_a_flow_does_not_run() {
        let mut mapped = map_agent(&row(), Utc::now()).unwrap();
        without_flow(&mut mapped.agent, &mut mapped.notes);
        assert_eq!(mapped.agent.status, AgentStatus::Draft);
        assert!(mapped.notes.last().unwrap().contains("imported as draft"));
    }

    #[test]
    fn bad_rows_are_refused_naming_the_column() {
        let cases: Vec<(PlatformAgent, &str)> = vec![
            (PlatformAgent { id: Some("agent-1".into()), ..row() }, "id: \"agent-1\" is not a UUID"),
            (PlatformAgent { name: None, ..row() }, "name: missing"),
            (PlatformAgent { agent_type: Some("seo_bot".into()), ..row() }, "agent_type: unknown type"),
            (PlatformAgent { status: Some("retired".into()), ..row() }, "status: unknown status"),
            (PlatformAgent { successful_executions: Some(13), ..row() }, "successful_executions"),
            (PlatformAgent { configuration: Some("{oops".into()), ..row() }, "configuration: not JSON"),
            (PlatformAgent { capabilities: Some("{}".into()), ..row() }, "capabilities: must be a JSON list"),
            (PlatformAgent { tenant_id: Some("a b".into()), ..row() }, "tenant_id:"),
        ];
        for (row, expected) in cases {
            let reason = map_agent(&row, Utc::now()).unwrap_err();
            assert!(reason.starts_with(expected), "{reason:?} does not start with {expected:?}");
        }
    }
}
