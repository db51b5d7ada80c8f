//! The platform's `workflow_definitions` rows, mapped onto our workflows: pure functions, no
//! database. A row either becomes a workflow that validates (with notes on what the mapping
//! chose where the row said nothing our model can hold) or is refused with one reason naming the
//! column.
//!
//! The platform writes steps and triggers as bare strings (`"steps": ["analyze_audience",
//! "review", "publish"]`, `"triggers": ["scheduled", "manual"]`) and rules as a free-form object.
//! The mapping:
//! - a string step is a step of that id (lowercased, other characters written `_`), named from
//!   it ("analyze_audience" → "Analyze audience"); a step whose id has the word `review`,
//!   `approve`, `approval` or `validate` reviews the step before it (the first step has none
//!   before it: it stays an llm step); the last step, when its id has the word `publish`,
//!   `deliver`, `send`, `export`, `output`, `distribute`, `save`, `record`, `launch` or `apply`,
//!   records the run's result (an output step); every other one is an llm step with a prompt
//!   made from its name and `{input}`. A step given as an object is taken as our own JSON form of a step.
//! - a string trigger: `manual`/`on_demand` → manual; `api`/`webhook` → api; `scheduled`,
//!   `schedule`, `cron`, `daily` → scheduled at [`DEFAULT_CRON`] (09:00 UTC daily), `hourly`,
//!   `weekly`, `monthly` → scheduled at the start of each hour / Monday 09:00 / the 1st 09:00 UTC;
//!   anything else refuses the row. An object is our own JSON form of a trigger (`cron` may be
//!   written `schedule`); a scheduled one without a cron gets the default, noted.
//! - rules: the keys our typed rules have (`approval_required`, `max_retries`, `autonomous`,
//!   `review_timeout_seconds`, `review_default_action`) are taken when their value fits; every
//!   other key (and a known key whose value does not fit, noted) is kept as it is in
//!   `extra_rules`.

use chrono::{DateTime, Utc};
use engarde::kit::struct_json::contains_nul;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::model::{
    Category, ReviewDefaultAction, Rules, Status, Step, StepKind, Trigger, TriggerType, Workflow, WorkflowConfig,
};
use super::validation::{self, MAX_RETRIES, MAX_REVIEW_TIMEOUT_SECONDS};

/// The schedule of a trigger the platform calls just "scheduled": every day at 09:00 UTC.
pub const DEFAULT_CRON: &str = "0 9 * * *";

/// One row of the platform's `workflow_definitions`, every column as read (any may be null).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlatformWorkflow {
    pub id: Option<String>,
    pub tenant_id: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub category: Option<String>,
    /// The JSON text of `workflow_config`.
    pub workflow_config: Option<String>,
    pub status: Option<String>,
    pub is_template: Option<bool>,
    pub execution_count: Option<i64>,
    pub success_rate: Option<f64>,
}

/// A row ready to import: the workflow as it would be created (version 1, the row's statistics),
/// and what the mapping chose for it.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedWorkflow {
    pub workflow: Workflow,
    pub notes: Vec<String>,
}

/// Maps one row; `Err` is the reason it cannot be imported.
pub fn map_workflow(row: &PlatformWorkflow, now: DateTime<Utc>) -> Result<MappedWorkflow, String> {
    let mut notes = Vec::new();
    let id = row.id.as_deref().map(str::trim).filter(|s| !s.is_empty()).ok_or("id: missing")?;
    let id = Uuid::parse_str(id).map_err(|_| format!("id: {id:?} is not a UUID"))?;
    let tenant_id = row.tenant_id.as_deref().map(str::trim).filter(|s| !s.is_empty()).ok_or("tenant_id: missing")?;
    let name = row.name.as_deref().map(str::trim).filter(|s| !s.is_empty()).ok_or("name: missing")?;
    let description = row.description.as_deref().unwrap_or("");
    let mut violations = Vec::new();
    validation::check_name("name", name, &mut violations);
    validation::check_description("description", description, &mut violations);
    let category = row.category.as_deref().map(str::trim).filter(|s| !s.is_empty()).ok_or("category: missing")?;
    let category = Category::parse(&category.to_lowercase()).ok_or_else(|| {
        let known: Vec<&str> = Category::ALL.iter().map(|c| c.as_str()).collect();
        format!("category: unknown category {category:?} (expected one of {})", known.join(", "))
    })?;
    let status = match row.status.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => {
            notes.push("status: missing, imported as draft".to_owned());
            Status::Draft
        }
        Some(s) => Status::parse(&s.to_lowercase())
            .ok_or_else(|| format!("status: unknown status {s:?} (expected draft, active or archived)"))?,
    };
    if row.is_template == Some(true) {
        notes.push(
            "is_template: imported as the tenant's own workflow (templates here are the built-in library \
             shared with every tenant)"
                .to_owned(),
        );
    }
    let execution_count = row.execution_count.unwrap_or(0);
    if execution_count < 0 {
        return Err(format!("execution_count: {execution_count} is negative"));
    }
    let success_count = success_count(execution_count, row.success_rate, &mut notes)?;
    let text = row.workflow_config.as_deref().ok_or("workflow_config: missing")?;
    let (config, config_notes) = map_config_text(text)?;
    notes.extend(config_notes);
    validation::check_config("workflow_config", &config, &mut violations);
    if let Some(first) = violations.first() {
        let more = if violations.len() > 1 { format!(" (and {} more)", violations.len() - 1) } else { String::new() };
        return Err(format!("{}: {}{more}", first.field, first.description));
    }
    if [tenant_id, name, description].iter().any(|s| s.contains('\0')) {
        return Err(format!("a text column holds the NUL character ({})", engarde::text::NUL_DESCRIPTION));
    }
    Ok(MappedWorkflow {
        workflow: Workflow {
            id,
            tenant_id: tenant_id.to_owned(),
            name: name.to_owned(),
            description: description.to_owned(),
            category,
            config,
            status,
            is_template: false,
            execution_count,
            success_count,
            version: 1,
            created_at: now,
            updated_at: now,
        },
        notes,
    })
}

/// The successes a rate stands for: `success_rate` is a fraction (0-1) or, above 1, a
/// percentage (up to 100), of `execution_count`, rounded to the nearest whole execution.
fn success_count(execution_count: i64, rate: Option<f64>, notes: &mut Vec<String>) -> Result<i64, String> {
    let rate = rate.unwrap_or(0.0);
    if !rate.is_finite() || !(0.0..=100.0).contains(&rate) {
        return Err(format!("success_rate: {rate} is not a fraction (0-1) or a percentage (0-100)"));
    }
    let fraction = if rate > 1.0 {
        notes.push(format!("success_rate: {rate} read as a percentage"));
        rate / 100.0
    } else {
        rate
    };
    Ok(((execution_count as f64) * fraction).round().clamp(0.0, execution_count as f64) as i64)
}

/// Maps the JSON text of a `workflow_config` (also a JSON string holding that text, as a
/// platform that stored it twice encoded has it).
pub fn map_config_text(text: &str) -> Result<(WorkflowConfig, Vec<String>), String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("workflow_config: not JSON ({e})"))?;
    let value = match value {
        Value::String(inner) => {
            serde_json::from_str(&inner).map_err(|e| format!("workflow_config: a string that is not JSON ({e})"))?
        }
        other => other,
    };
    map_config(&value)
}

/// Maps a `workflow_config` object onto our config (see the module's documentation). The result
/// is not validated yet: [`map_workflow`] does that.
pub fn map_config(value: &Value) -> Result<(WorkflowConfig, Vec<String>), String> {
    let Value::Object(object) = value else {
        return Err(format!("workflow_config: must be a JSON object, not {}", kind_of(value)));
    };
    if contains_nul(value) {
        return Err(format!("workflow_config: {}", engarde::text::NUL_DESCRIPTION));
    }
    let mut notes = Vec::new();
    let steps = match object.get("steps") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => map_steps(items, &mut notes)?,
        Some(other) => return Err(format!("workflow_config.steps: must be a list, not {}", kind_of(other))),
    };
    let triggers = match object.get("triggers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            items.iter().enumerate().map(|(i, t)| map_trigger(i, t, &mut notes)).collect::<Result<_, _>>()?
        }
        Some(other) => return Err(format!("workflow_config.triggers: must be a list, not {}", kind_of(other))),
    };
    let (rules, extra_rules) = match object.get("rules") {
        None | Some(Value::Null) => (Rules::default(), Map::new()),
        Some(Value::Object(rules)) => map_rules(rules, &mut notes),
        Some(other) => return Err(format!("workflow_config.rules: must be an object, not {}", kind_of(other))),
    };
    let langflow_flow_json = match object.get("langflow_flow_json") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(flow @ Value::Object(_)) => flow.to_string(),
        Some(other) => {
            return Err(format!("workflow_config.langflow_flow_json: must be a flow export, not {}", kind_of(other)));
        }
    };
    for key in object.keys() {
        if !["steps", "triggers", "rules", "langflow_flow_json"].contains(&key.as_str()) {
            notes.push(format!("workflow_config.{key}: not part of a workflow config here, left out"));
        }
    }
    Ok((WorkflowConfig { steps, triggers, rules, langflow_flow_json, extra_rules }, notes))
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn map_steps(items: &[Value], notes: &mut Vec<String>) -> Result<Vec<Step>, String> {
    let last = items.len().saturating_sub(1);
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(text) => map_string_step(i, text, i == last, notes),
            Value::Object(_) => serde_json::from_value::<Step>(item.clone())
                .map_err(|e| format!("workflow_config.steps[{i}]: not a step ({e})")),
            other => Err(format!("workflow_config.steps[{i}]: must be a string or an object, not {}", kind_of(other))),
        })
        .collect()
}

/// A step id made of `text`: lowercase ASCII letters, digits and single underscores, starting
/// with a letter.
fn step_id(text: &str) -> String {
    let mut id = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_alphanumeric() {
            id.push(c.to_ascii_lowercase());
        } else if !id.is_empty() && !id.ends_with('_') {
            id.push('_');
        }
    }
    let id = id.trim_end_matches('_').to_owned();
    if id.starts_with(|c: char| c.is_ascii_digit()) { format!("step_{id}") } else { id }
}

/// "analyze_audience" → "Analyze audience".
fn step_name(id: &str) -> String {
    let words = id.replace('_', " ");
    let mut chars = words.chars();
    chars.next().map(|first| first.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
}

const REVIEW_WORDS: &[&str] = &["review", "approve", "approval", "validate"];
const OUTPUT_WORDS: &[&str] =
    &["publish", "deliver", "send", "export", "output", "distribute", "save", "record", "launch", "apply"];

fn map_string_step(i: usize, text: &str, is_last: bool, notes: &mut Vec<String>) -> Result<Step, String> {
    let id = step_id(text);
    if id.is_empty() {
        return Err(format!("workflow_config.steps[{i}]: {text:?} has no letter or digit to make a step id of"));
    }
    if id != text {
        notes.push(format!("workflow_config.steps[{i}]: {text:?} has the id {id:?}"));
    }
    let name = step_name(&id);
    let has_word = |words: &[&str]| id.split('_').any(|w| words.contains(&w));
    let kind = if has_word(REVIEW_WORDS) {
        if i == 0 {
            notes.push(format!("workflow_config.steps[{i}]: {id:?} has no earlier step to review, made an llm step"));
            StepKind::Llm
        } else {
            StepKind::Review
        }
    } else if is_last && has_word(OUTPUT_WORDS) {
        StepKind::Output
    } else {
        StepKind::Llm
    };
    let prompt = match kind {
        StepKind::Llm => format!(
            "You are a marketing assistant. Carry out this step of the workflow: {name}. Work from the input \
             below and answer with the step's result only.\n\nInput:\n{{input}}"
        ),
        StepKind::Review | StepKind::Output => String::new(),
    };
    Ok(Step { id, name, kind, prompt, reviews_step: None })
}

fn scheduled(cron: &str) -> Trigger {
    Trigger { kind: TriggerType::Scheduled, cron: cron.to_owned(), timezone: "UTC".to_owned() }
}

fn map_trigger(i: usize, value: &Value, notes: &mut Vec<String>) -> Result<Trigger, String> {
    let field = format!("workflow_config.triggers[{i}]");
    match value {
        Value::String(text) => {
            let cron = match text.trim().to_lowercase().replace('-', "_").as_str() {
                "manual" | "on_demand" => {
                    return Ok(Trigger { kind: TriggerType::Manual, cron: String::new(), timezone: String::new() });
                }
                "api" | "webhook" => {
                    return Ok(Trigger { kind: TriggerType::Api, cron: String::new(), timezone: String::new() });
                }
                "scheduled" | "schedule" | "cron" | "daily" => DEFAULT_CRON,
                "hourly" => "0 * * * *",
                "weekly" => "0 9 * * MON",
                "monthly" => "0 9 1 * *",
                _ => {
                    return Err(format!(
                        "{field}: unknown trigger {text:?} (expected manual, scheduled, daily, hourly, weekly, monthly, \
                         api or webhook)"
                    ));
                }
            };
            notes.push(format!("{field}: {text:?} runs at the cron schedule {cron:?} (UTC)"));
            Ok(scheduled(cron))
        }
        Value::Object(object) => {
            let mut object = object.clone();
            if !object.contains_key("cron")
                && let Some(schedule) = object.remove("schedule")
            {
                object.insert("cron".into(), schedule);
            }
            let mut trigger: Trigger =
                serde_json::from_value(Value::Object(object)).map_err(|e| format!("{field}: not a trigger ({e})"))?;
            if trigger.kind == TriggerType::Scheduled && trigger.cron.trim().is_empty() {
                notes.push(format!("{field}: a scheduled trigger without a cron runs at {DEFAULT_CRON:?} (UTC)"));
                trigger = scheduled(DEFAULT_CRON);
            }
            Ok(trigger)
        }
        other => Err(format!("{field}: must be a string or an object, not {}", kind_of(other))),
    }
}

/// Our typed rules from the keys that fit them, and every other key as it is.
fn map_rules(object: &Map<String, Value>, notes: &mut Vec<String>) -> (Rules, Map<String, Value>) {
    let mut rules = Rules::default();
    let mut extra = Map::new();
    for (key, value) in object {
        let taken = match key.as_str() {
            "approval_required" => value.as_bool().map(|b| rules.approval_required = b).is_some(),
            "autonomous" => value.as_bool().map(|b| rules.autonomous = b).is_some(),
            "max_retries" => value
                .as_i64()
                .filter(|n| (0..=i64::from(MAX_RETRIES)).contains(n))
                .map(|n| rules.max_retries = n as i32)
                .is_some(),
            "review_timeout_seconds" => value
                .as_i64()
                .filter(|n| (0..=MAX_REVIEW_TIMEOUT_SECONDS).contains(n))
                .map(|n| rules.review_timeout_seconds = n)
                .is_some(),
            "review_default_action" => {
                value.as_str().and_then(ReviewDefaultAction::parse).map(|a| rules.review_default_action = a).is_some()
            }
            _ => {
                extra.insert(key.clone(), value.clone());
                continue;
            }
        };
        if !taken {
            notes.push(format!("workflow_config.rules.{key}: {value} does not fit the rule, kept in extra_rules"));
            extra.insert(key.clone(), value.clone());
        }
    }
    (rules, extra)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn row(config: Value) -> PlatformWorkflow {
        PlatformWorkflow {
            id: Some("0b7c6f2e-5c1e-4a8e-9d53-2f6f1a1b2c3d".into()),
            tenant_id: Some("default-tenant-001".into()),
            name: Some("Social Media Content Pipeline".into()),
            description: None,
            category: Some("content_generation".into()),
            workflow_config: Some(config.to_string()),
            status: Some("active".into()),
            is_template: Some(true),
            execution_count: Some(40),
            success_rate: Some(0.925),
        }
    }

    #[test]
    fn the_platforms_string_steps_and_triggers_become_a_valid_config() {
        let config = json!({
            "steps": ["analyze_audience", "generate_content", "review", "publish"],
            "triggers": ["scheduled", "manual"],
            "rules": {"approval_required": true, "max_retries": 3, "platforms": ["linkedin", "x"], "tone": {"formal": 0.5}},
        });
        let mapped = map_workflow(&row(config), Utc::now()).unwrap();
        let w = &mapped.workflow;
        let kinds: Vec<(&str, StepKind)> = w.config.steps.iter().map(|s| (s.id.as_str(), s.kind)).collect();
        assert_eq!(
            kinds,
            [
                ("analyze_audience", StepKind::Llm),
                ("generate_content", StepKind::Llm),
                ("review", StepKind::Review),
                ("publish", StepKind::Output)
            ]
        );
        assert_eq!(w.config.steps[0].name, "Analyze audience");
        assert!(w.config.steps[0].prompt.contains("Analyze audience") && w.config.steps[0].prompt.contains("{input}"));
        assert!(w.config.steps[2].prompt.is_empty() && w.config.steps[2].reviews_step.is_none());
        assert_eq!(
            w.config.triggers,
            [scheduled(DEFAULT_CRON), Trigger { kind: TriggerType::Manual, cron: "".into(), timezone: "".into() }]
        );
        assert!(w.config.rules.approval_required);
        assert_eq!(w.config.rules.max_retries, 3);
        assert_eq!(
            Value::Object(w.config.extra_rules.clone()),
            json!({"platforms": ["linkedin", "x"], "tone": {"formal": 0.5}})
        );
        assert_eq!((w.execution_count, w.success_count), (40, 37));
        assert_eq!((w.status, w.is_template, w.version), (Status::Active, false, 1));
        assert!(mapped.notes.iter().any(|n| n.starts_with("is_template")), "{:?}", mapped.notes);
        assert!(mapped.notes.iter().any(|n| n.contains(DEFAULT_CRON)), "{:?}", mapped.notes);
    }

    #[test]
    fn steps_given_as_objects_pass_through() {
        let config = json!({"steps": [{"id": "draft", "kind": "llm", "prompt": "Write {input}"}, {"id": "check", "kind": "review", "reviews_step": "draft"}],
                            "triggers": [{"type": "scheduled", "cron": "0 8 * * MON", "timezone": "Europe/Paris"}, {"type": "api"}]});
        let w = map_workflow(&row(config), Utc::now()).unwrap().workflow;
        assert_eq!(w.config.steps[1].reviews_step.as_deref(), Some("draft"));
        assert_eq!(w.config.triggers[0].cron, "0 8 * * MON");
        assert_eq!(w.config.triggers[1].kind, TriggerType::Api);
    }

    #[test]
    fn odd_step_names_become_valid_ids_and_a_first_review_is_an_llm_step() {
        let config = json!({"steps": ["Review brief", "Write Post!", "2nd draft", "publish"], "triggers": ["weekly"]});
        let w = map_workflow(&row(config), Utc::now()).unwrap().workflow;
        let ids: Vec<&str> = w.config.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["review_brief", "write_post", "step_2nd_draft", "publish"]);
        assert_eq!(w.config.steps[0].kind, StepKind::Llm);
        assert_eq!(w.config.triggers[0].cron, "0 9 * * MON");
    }

    #[test]
    fn a_publish_step_that_is_not_last_is_an_llm_step() {
        let config = json!({"steps": ["publish", "measure"]});
        let w = map_workflow(&row(config), Utc::now()).unwrap().workflow;
        assert_eq!(w.config.steps[0].kind, StepKind::Llm);
        assert!(w.config.triggers.is_empty());
    }

    #[test]
    fn known_rules_that_do_not_fit_are_kept_uninterpreted() {
        let (rules, extra) =
            map_rules(json!({"max_retries": 50, "autonomous": "yes"}).as_object().unwrap(), &mut Vec::new());
        assert_eq!((rules.max_retries, rules.autonomous), (0, false));
        assert_eq!(Value::Object(extra), json!({"max_retries": 50, "autonomous": "yes"}));
    }

    #[test]
    fn bad_rows_are_refused_naming_the_column() {
        let good = json!({"steps": ["a"]});
        let cases: Vec<(PlatformWorkflow, &str)> = vec![
            (PlatformWorkflow { name: None, ..row(good.clone()) }, "name: missing"),
            (PlatformWorkflow { id: Some("wf-1".into()), ..row(good.clone()) }, "id: \"wf-1\" is not a UUID"),
            (
                PlatformWorkflow { category: Some("seo".into()), ..row(good.clone()) },
                "category: unknown category \"seo\"",
            ),
            (PlatformWorkflow { status: Some("live".into()), ..row(good.clone()) }, "status: unknown status"),
            (PlatformWorkflow { tenant_id: Some(" ".into()), ..row(good.clone()) }, "tenant_id: missing"),
            (PlatformWorkflow { execution_count: Some(-1), ..row(good.clone()) }, "execution_count"),
            (PlatformWorkflow { success_rate: Some(150.0), ..row(good.clone()) }, "success_rate"),
            (
                PlatformWorkflow { workflow_config: Some("{not json".into()), ..row(good.clone()) },
                "workflow_config: not JSON",
            ),
            (PlatformWorkflow { workflow_config: None, ..row(good.clone()) }, "workflow_config: missing"),
            (row(json!([1, 2])), "workflow_config: must be a JSON object"),
            (row(json!({"steps": []})), "workflow_config.steps: at least one step"),
            (row(json!({"steps": ["a", "a"]})), "workflow_config.steps[1].id: duplicate"),
            (row(json!({"steps": [7]})), "workflow_config.steps[0]: must be a string or an object"),
            (
                row(json!({"steps": ["a"], "triggers": ["when_it_rains"]})),
                "workflow_config.triggers[0]: unknown trigger",
            ),
            (row(json!({"steps": ["a"], "rules": "strict"})), "workflow_config.rules: must be an object"),
            (row(json!({"steps": ["a\u{0}"]})), "workflow_config: must not contain the NUL"),
        ];
        for (row, expected) in cases {
            let reason = map_workflow(&row, Utc::now()).unwrap_err();
            assert!(reason.starts_with(expected), "{reason:?} does not start with {expected:?}");
        }
    }

    #[test]
    fn a_percentage_rate_and_missing_statistics_are_read_sensibly() {
        let mut notes = Vec::new();
        assert_eq!(success_count(200, Some(87.5), &mut notes).unwrap(), 175);
        assert_eq!(notes.len(), 1);
        assert_eq!(success_count(0, None, &mut notes).unwrap(), 0);
        assert_eq!(success_count(3, Some(1.0), &mut notes).unwrap(), 3);
        assert!(success_count(3, Some(f64::NAN), &mut notes).is_err());
    }

    #[test]
    fn a_config_stored_as_a_json_string_is_read() {
        let text = serde_json::to_string(&json!({"steps": ["a"]}).to_string()).unwrap();
        let (config, _) = map_config_text(&text).unwrap();
        assert_eq!(config.steps[0].id, "a");
    }
}
