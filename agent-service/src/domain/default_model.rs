//! A tenant's default model: the model settings a new agent made from a workflow gets when its
//! configuration names no model. Set and read with Set/GetTenantDefaultModel; stored one row per
//! tenant (`storage::default_models`).

use chrono::{DateTime, Utc};
use engarde::kit::error::FieldViolation;
use serde::{Deserialize, Serialize};

use super::configuration;
use super::model::{AgentConfig, ModelSettings, etag_of};

/// A tenant's default model and who set it last. A tenant that never set one has the
/// [`DefaultModel::unset`] value: an empty model, version 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DefaultModel {
    /// Empty (`ModelSettings::default()`) when there is no default.
    pub model: ModelSettings,
    /// The subject of the caller who set it; empty when it was never set.
    pub updated_by: String,
    /// When it was set; `None` when it was never set.
    pub updated_at: Option<DateTime<Utc>>,
    /// 0 when it was never set, then one more per change.
    pub version: i64,
}

impl DefaultModel {
    /// What a tenant that never set a default has.
    pub fn unset() -> Self {
        Self { model: ModelSettings::default(), updated_by: String::new(), updated_at: None, version: 0 }
    }

    /// The opaque tag of this version.
    pub fn etag(&self) -> String {
        etag_of(self.version)
    }
}

/// Whether `model` names a model: a provider or a model name. A configuration whose model names
/// none runs on the flow's default, or gets the tenant's default model when it is made.
pub fn names_model(model: &ModelSettings) -> bool {
    !model.provider.is_empty() || !model.model_name.is_empty()
}

/// The configuration of a new agent with the tenant's default model: unchanged when it names a
/// model itself (the caller's choice wins) or when there is no default; else the default's
/// settings, all of them, replace its model.
pub fn apply_default_model(config: &mut AgentConfig, default: &ModelSettings) {
    if !names_model(&config.model) && names_model(default) {
        config.model = default.clone();
    }
}

/// Checks a default model by the rules of an agent's `configuration.model` (so that whatever
/// those rules check applies to defaults too), reporting fields as `model.*`. A model that sets
/// anything must name a provider or a model name: settings of no model would never be used. An
/// empty model clears the default.
pub fn check_default_model(model: &ModelSettings, out: &mut Vec<FieldViolation>) {
    const PREFIX: &str = "default";
    let config = AgentConfig { model: model.clone(), ..AgentConfig::default() };
    let mut violations = Vec::new();
    configuration::check_config(PREFIX, &config, &mut violations);
    out.extend(violations.into_iter().map(|v| {
        let field = v.field.strip_prefix(PREFIX).and_then(|f| f.strip_prefix('.')).unwrap_or(&v.field).to_owned();
        FieldViolation { field, description: v.description }
    }));
    if *model != ModelSettings::default() && !names_model(model) {
        out.push(FieldViolation::new(
            "model",
            "names no model: set model.provider or model.model_name, or send an empty model to clear the default",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(provider: &str, name: &str) -> ModelSettings {
        ModelSettings { provider: provider.into(), model_name: name.into(), ..ModelSettings::default() }
    }

    #[test]
    fn the_default_fills_only_a_configuration_that_names_no_model() {
        let default = ModelSettings { temperature: Some(0.2), ..model("openai", "gpt-4o-mini") };
        let mut none = AgentConfig { tone: "warm".into(), ..AgentConfig::default() };
        apply_default_model(&mut none, &default);
        assert_eq!((none.model.clone(), none.tone.as_str()), (default.clone(), "warm"));

        let mut explicit = AgentConfig { model: model("anthropic", ""), ..AgentConfig::default() };
        apply_default_model(&mut explicit, &default);
        assert_eq!(explicit.model, model("anthropic", ""));

        let mut unset = AgentConfig::default();
        apply_default_model(&mut unset, &ModelSettings::default());
        assert_eq!(unset.model, ModelSettings::default());
    }

    #[test]
    fn a_default_is_checked_as_an_agents_model_with_paths_under_model() {
        let fields = |m: &ModelSettings| {
            let mut out = Vec::new();
            check_default_model(m, &mut out);
            out.into_iter().map(|v| v.field).collect::<Vec<_>>()
        };
        assert!(fields(&model("openai", "gpt-4o-mini")).is_empty());
        assert!(fields(&ModelSettings::default()).is_empty());
        let bad = ModelSettings { temperature: Some(3.0), max_tokens: Some(0), ..model("openai", "gpt") };
        assert_eq!(fields(&bad), ["model.temperature", "model.max_tokens"]);
        assert_eq!(fields(&ModelSettings { temperature: Some(0.5), ..ModelSettings::default() }), ["model"]);
    }
}
