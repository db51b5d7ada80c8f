//! Field-level validation of workflows. Every problem is reported with the exact path of the
//! field (e.g. `workflow_config.steps[2].id`), all at once, so a caller fixes them in one pass.

use std::collections::HashMap;

use engarde::kit::error::FieldViolation;

use super::model::{StepKind, TriggerType, WorkflowConfig};

pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_DESCRIPTION_CHARS: usize = 2000;
pub const MAX_STEPS: usize = 50;
pub const MAX_TRIGGERS: usize = 20;
pub const MAX_STEP_ID_CHARS: usize = 64;
pub const MAX_PROMPT_CHARS: usize = 8000;
pub const MAX_RETRIES: i32 = 10;
pub const MAX_REVIEW_TIMEOUT_SECONDS: i64 = 30 * 24 * 3600;
/// Uninterpreted rules: at most this many bytes as JSON...
pub const MAX_EXTRA_RULES_BYTES: usize = 64 * 1024;
/// ...nested at most this deep (the object itself is level 1).
pub const MAX_EXTRA_RULES_DEPTH: usize = 16;

/// Checks a display name.
pub fn check_name(field: &str, name: &str, out: &mut Vec<FieldViolation>) {
    let chars = name.trim().chars().count();
    if chars == 0 {
        out.push(FieldViolation::new(field, "must not be empty"));
    } else if chars > MAX_NAME_CHARS {
        out.push(FieldViolation::new(field, format!("must be at most {MAX_NAME_CHARS} characters")));
    }
}

/// Checks a description.
pub fn check_description(field: &str, description: &str, out: &mut Vec<FieldViolation>) {
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        out.push(FieldViolation::new(field, format!("must be at most {MAX_DESCRIPTION_CHARS} characters")));
    }
}

fn valid_step_id(id: &str) -> bool {
    id.len() <= MAX_STEP_ID_CHARS
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Checks a config's structure: steps, references, triggers, rules. `prefix` is the path of the
/// config in the request (`workflow_config`).
pub fn check_config(prefix: &str, config: &WorkflowConfig, out: &mut Vec<FieldViolation>) {
    let steps_field = format!("{prefix}.steps");
    if config.steps.is_empty() {
        out.push(FieldViolation::new(&steps_field, "at least one step is required"));
    } else if config.steps.len() > MAX_STEPS {
        out.push(FieldViolation::new(&steps_field, format!("at most {MAX_STEPS} steps are allowed")));
    }

    let mut first_use: HashMap<&str, usize> = HashMap::new();
    for (i, step) in config.steps.iter().enumerate() {
        let field = format!("{steps_field}[{i}]");
        if !valid_step_id(&step.id) {
            out.push(FieldViolation::new(
                format!("{field}.id"),
                "must be 1-64 lowercase letters, digits or underscores, starting with a letter",
            ));
        } else if let Some(first) = first_use.get(step.id.as_str()) {
            out.push(FieldViolation::new(
                format!("{field}.id"),
                format!("duplicate step id {:?} (already used by {steps_field}[{first}])", step.id),
            ));
        }
        if step.name.chars().count() > MAX_NAME_CHARS {
            out.push(FieldViolation::new(
                format!("{field}.name"),
                format!("must be at most {MAX_NAME_CHARS} characters"),
            ));
        }
        if step.prompt.chars().count() > MAX_PROMPT_CHARS {
            out.push(FieldViolation::new(
                format!("{field}.prompt"),
                format!("must be at most {MAX_PROMPT_CHARS} characters"),
            ));
        }
        if step.kind != StepKind::Llm && !step.prompt.is_empty() {
            out.push(FieldViolation::new(format!("{field}.prompt"), "only llm steps take a prompt"));
        }
        match (&step.reviews_step, step.kind) {
            (Some(target), StepKind::Review) => {
                if !first_use.contains_key(target.as_str()) {
                    let reason = if config.steps.iter().any(|s| &s.id == target) {
                        format!("must name an earlier step; {target:?} comes later")
                    } else {
                        format!("unknown step {target:?}")
                    };
                    out.push(FieldViolation::new(format!("{field}.reviews_step"), reason));
                }
            }
            (Some(_), _) => {
                out.push(FieldViolation::new(format!("{field}.reviews_step"), "only review steps review another step"))
            }
            (None, StepKind::Review) if i == 0 => {
                out.push(FieldViolation::new(format!("{field}.kind"), "a review step needs an earlier step to review"));
            }
            (None, _) => {}
        }
        first_use.entry(step.id.as_str()).or_insert(i);
    }

    let triggers_field = format!("{prefix}.triggers");
    if config.triggers.len() > MAX_TRIGGERS {
        out.push(FieldViolation::new(&triggers_field, format!("at most {MAX_TRIGGERS} triggers are allowed")));
    }
    for (i, trigger) in config.triggers.iter().enumerate() {
        let field = format!("{triggers_field}[{i}]");
        if trigger.kind == TriggerType::Scheduled {
            if trigger.cron.trim().is_empty() {
                out.push(FieldViolation::new(format!("{field}.cron"), "a scheduled trigger needs a cron expression"));
            } else if let Err(e) = engarde::schedule::parse_cron(&trigger.cron) {
                out.push(FieldViolation::new(format!("{field}.cron"), e));
            }
            if let Err(e) = engarde::schedule::parse_timezone(&trigger.timezone) {
                out.push(FieldViolation::new(format!("{field}.timezone"), e));
            }
        } else {
            if !trigger.cron.is_empty() {
                out.push(FieldViolation::new(
                    format!("{field}.cron"),
                    "only scheduled triggers take a cron expression",
                ));
            }
            if !trigger.timezone.is_empty() {
                out.push(FieldViolation::new(format!("{field}.timezone"), "only scheduled triggers take a time zone"));
            }
        }
    }

    let rules = &config.rules;
    if !(0..=MAX_RETRIES).contains(&rules.max_retries) {
        out.push(FieldViolation::new(format!("{prefix}.rules.max_retries"), format!("must be 0-{MAX_RETRIES}")));
    }
    if !(0..=MAX_REVIEW_TIMEOUT_SECONDS).contains(&rules.review_timeout_seconds) {
        out.push(FieldViolation::new(
            format!("{prefix}.rules.review_timeout_seconds"),
            format!("must be 0-{MAX_REVIEW_TIMEOUT_SECONDS} (30 days)"),
        ));
    }

    if !config.extra_rules.is_empty() {
        let field = format!("{prefix}.extra_rules");
        let json = serde_json::to_string(&config.extra_rules).unwrap_or_default();
        let rules = serde_json::Value::Object(config.extra_rules.clone());
        if json.len() > MAX_EXTRA_RULES_BYTES {
            out.push(FieldViolation::new(&field, format!("must be at most {MAX_EXTRA_RULES_BYTES} bytes as JSON")));
        } else if engarde::kit::struct_json::depth(&rules) > MAX_EXTRA_RULES_DEPTH {
            out.push(FieldViolation::new(&field, format!("must nest at most {MAX_EXTRA_RULES_DEPTH} levels deep")));
        }
        if engarde::kit::struct_json::contains_nul(&rules) {
            out.push(FieldViolation::new(&field, engarde::text::NUL_DESCRIPTION));
        }
    }

    if !config.langflow_flow_json.is_empty() {
        // The rules agent-service uploads by: a flow export valid here can be made into a flow.
        if let Err(e) = engarde::flow_export::flow_data(&config.langflow_flow_json) {
            out.push(FieldViolation::new(format!("{prefix}.langflow_flow_json"), e.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::{Step, Trigger};

    fn llm(id: &str) -> Step {
        Step { id: id.into(), name: String::new(), kind: StepKind::Llm, prompt: "p {input}".into(), reviews_step: None }
    }

    fn violations(config: &WorkflowConfig) -> Vec<(String, String)> {
        let mut out = Vec::new();
        check_config("workflow_config", config, &mut out);
        out.into_iter().map(|v| (v.field, v.description)).collect()
    }

    #[test]
    fn a_sound_config_passes() {
        let config = WorkflowConfig { steps: vec![llm("a"), llm("b")], ..Default::default() };
        assert!(violations(&config).is_empty());
    }

    #[test]
    fn each_problem_names_its_field() {
        let mut review = llm("rev");
        review.kind = StepKind::Review;
        review.prompt.clear();
        review.reviews_step = Some("later".into());
        let config = WorkflowConfig {
            steps: vec![llm("a"), llm("a"), llm("Bad-Id"), review, llm("later")],
            triggers: vec![Trigger {
                kind: TriggerType::Scheduled,
                cron: "61 * * * *".into(),
                timezone: "Mars/Olympus".into(),
            }],
            ..Default::default()
        };
        let fields: Vec<String> = violations(&config).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            vec![
                "workflow_config.steps[1].id",
                "workflow_config.steps[2].id",
                "workflow_config.steps[3].reviews_step",
                "workflow_config.triggers[0].cron",
                "workflow_config.triggers[0].timezone",
            ]
        );
    }

    #[test]
    fn a_flow_export_without_nodes_is_refused() {
        let config =
            WorkflowConfig { steps: vec![llm("a")], langflow_flow_json: r#"{"data":{}}"#.into(), ..Default::default() };
        let v = violations(&config);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].0, "workflow_config.langflow_flow_json");
        assert!(v[0].1.contains("no nodes"), "{}", v[0].1);
    }

    #[test]
    fn extra_rules_are_bounded_in_size_and_depth() {
        let mut deep = serde_json::json!(1);
        for _ in 0..=MAX_EXTRA_RULES_DEPTH {
            deep = serde_json::json!({ "d": deep });
        }
        let mut config = WorkflowConfig { steps: vec![llm("a")], ..Default::default() };
        config.extra_rules = deep.as_object().unwrap().clone();
        assert_eq!(violations(&config).len(), 1, "{} levels", MAX_EXTRA_RULES_DEPTH + 1);
        config.extra_rules = deep["d"].as_object().unwrap().clone();
        assert!(violations(&config).is_empty());
        config.extra_rules =
            serde_json::json!({ "big": "x".repeat(MAX_EXTRA_RULES_BYTES) }).as_object().unwrap().clone();
        assert_eq!(violations(&config)[0].0, "workflow_config.extra_rules");
    }

    #[test]
    fn no_steps_is_refused() {
        let v = violations(&WorkflowConfig::default());
        assert_eq!(v[0].0, "workflow_config.steps");
    }
}
