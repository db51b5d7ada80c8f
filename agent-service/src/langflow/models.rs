//! The language models a Langflow server offers, read from its component catalog
//! (`GET /api/v1/all`), and the model node of a generated flow.
//!
//! A provider is a model component of the catalog: one whose outputs include a `LanguageModel`
//! and which takes a model name and an input (in Langflow 1.13: "OpenAI", "Anthropic",
//! "Ollama", "Google Generative AI", "IBM watsonx.ai"). It is named by its display name, as
//! Langflow's own UI names it. The generic "Language Model" component is left out: its
//! provider is a runtime override with no base URL for OpenAI-compatible servers.

use serde_json::{Map, Value, json};

use crate::domain::ModelSettings;

/// The fields of a model component that hold its server's base URL, by component.
const BASE_URL_FIELDS: &[&str] = &["openai_api_base", "base_url", "ollama_base_url"];

/// One model provider of the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelProvider {
    /// The display name, e.g. "OpenAI".
    pub name: String,
    /// The catalog entry (a node's `data.node`).
    entry: Value,
    /// The component's type name, e.g. "OpenAIModel" (a node's `data.type`).
    node_type: String,
    /// The field holding the base URL, if the component takes one.
    base_url_field: Option<&'static str>,
}

impl ModelProvider {
    fn from_entry(entry: &Value) -> Option<Self> {
        let template = entry.get("template")?.as_object()?;
        let outputs = entry.get("outputs")?.as_array()?;
        let makes_model = outputs.iter().any(|o| {
            o["types"].as_array().is_some_and(|t| t.iter().any(|t| t == "LanguageModel")) || o["name"] == "model_output"
        });
        let has_text = outputs.iter().any(|o| o["name"] == "text_output");
        let usable = makes_model
            && has_text
            && template.contains_key("model_name")
            && template.contains_key("input_value")
            && entry["legacy"] != true;
        let name = entry["display_name"].as_str()?;
        let node_type = entry["name"].as_str()?;
        if !usable || name.is_empty() || node_type.is_empty() {
            return None;
        }
        Some(Self {
            name: name.to_owned(),
            entry: entry.clone(),
            node_type: node_type.to_owned(),
            base_url_field: BASE_URL_FIELDS.iter().copied().find(|f| template.contains_key(*f)),
        })
    }

    fn has(&self, field: &str) -> bool {
        self.entry["template"].get(field).is_some()
    }

    /// Whether the component takes a base URL.
    pub fn takes_base_url(&self) -> bool {
        self.base_url_field.is_some()
    }

    /// Whether the component takes a token limit.
    pub fn takes_max_tokens(&self) -> bool {
        self.has("max_tokens")
    }

    /// Whether the component takes an API key.
    pub fn takes_api_key(&self) -> bool {
        self.has("api_key")
    }

    /// The component's type name, e.g. "OpenAIModel".
    pub fn node_type(&self) -> &str {
        &self.node_type
    }

    /// The node's catalog entry with `model` applied: what the flow is created with.
    pub fn node_entry(&self, model: &ModelSettings) -> Value {
        let mut entry = self.entry.clone();
        let fields = &mut entry["template"];
        for (name, value) in self.settings(model) {
            if let Some(field) = fields.get_mut(&name) {
                match value {
                    // A reference: Langflow reads the global variable (or environment variable)
                    // it names when the flow runs.
                    Value::Object(map) => {
                        for (k, v) in map {
                            field[k] = v;
                        }
                    }
                    value => field["value"] = value,
                }
            }
        }
        // Runs are streamed when the caller streams (Langflow sets `stream` per run); failed
        // calls are not retried inside Langflow, whose retries would outlast the caller's
        // deadline: the caller decides whether to try again.
        if let Some(field) = fields.get_mut("stream") {
            field["value"] = json!(true);
        }
        if let Some(field) = fields.get_mut("max_retries") {
            field["value"] = json!(0);
        }
        entry
    }

    /// The tweaks of one run for the model node: its settings as they are now, so that a
    /// configuration change takes effect at the next run without rebuilding the flow.
    pub fn tweaks(&self, model: &ModelSettings) -> Value {
        Value::Object(self.settings(model).into_iter().filter(|(name, _)| self.has(name)).collect())
    }

    /// The component's fields for `model`; unset settings keep the component's defaults.
    fn settings(&self, model: &ModelSettings) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert("model_name".into(), json!(model.model_name));
        out.insert("system_message".into(), json!(model.system_message));
        if let Some(t) = model.temperature {
            out.insert("temperature".into(), json!(t));
        }
        if let Some(m) = model.max_tokens {
            out.insert("max_tokens".into(), json!(m));
        }
        if let (Some(field), false) = (self.base_url_field, model.base_url.is_empty()) {
            out.insert(field.into(), json!(model.base_url));
        }
        if !model.api_key_ref.is_empty() {
            out.insert("api_key".into(), json!({"value": model.api_key_ref, "load_from_db": true}));
        }
        out
    }
}

/// The model providers of a catalog, sorted by name.
pub fn providers(catalog: &Value) -> Vec<ModelProvider> {
    let mut found: Vec<ModelProvider> = catalog
        .as_object()
        .into_iter()
        .flat_map(|categories| categories.values())
        .filter_map(Value::as_object)
        .flat_map(|components| components.values())
        .filter_map(ModelProvider::from_entry)
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found.dedup_by(|a, b| a.name == b.name);
    found
}

/// The provider named `name`, matched without regard to case.
pub fn find<'a>(providers: &'a [ModelProvider], name: &str) -> Option<&'a ModelProvider> {
    providers.iter().find(|p| p.name.eq_ignore_ascii_case(name))
}

/// The providers' names, quoted and comma-separated, for error messages.
pub fn names(providers: &[ModelProvider]) -> String {
    providers.iter().map(|p| format!("{:?}", p.name)).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A catalog with Langflow 1.13's shape: two model components, a legacy one, the generic
    /// one, and a component that is no model.
    pub fn catalog() -> Value {
        let model = |name: &str, display: &str, extra: Value| {
            let mut template = json!({
                "model_name": {"value": "default-model"}, "input_value": {"input_types": ["Message"]},
                "system_message": {"value": ""}, "stream": {"value": false}, "temperature": {"value": 0.1},
                "api_key": {"value": "", "load_from_db": false},
            });
            for (k, v) in extra.as_object().unwrap() {
                template[k] = v.clone();
            }
            json!({
                "name": name, "display_name": display, "template": template,
                "outputs": [{"name": "text_output", "types": ["Message"]}, {"name": "model_output", "types": ["LanguageModel"]}],
            })
        };
        json!({
            "openai": {"ext:openai:OpenAIModelComponent@official": model("OpenAIModel", "OpenAI", json!({
                "openai_api_base": {"value": ""}, "max_tokens": {"value": 0}, "max_retries": {"value": 5},
            }))},
            "ollama": {"ext:ollama:ChatOllamaComponent@official": model("OllamaModel", "Ollama", json!({
                "base_url": {"value": "http://localhost:11434"},
            }))},
            "amazon": {"old": {
                "name": "Old", "display_name": "Old", "legacy": true, "template": {"model_name": {}, "input_value": {}},
                "outputs": [{"name": "text_output"}, {"name": "model_output", "types": ["LanguageModel"]}],
            }},
            "models_and_agents": {
                "LanguageModelComponent": {
                    "display_name": "Language Model", "template": {"model": {}, "input_value": {}},
                    "outputs": [{"name": "text_output"}, {"name": "model_output", "types": ["LanguageModel"]}],
                },
                "Prompt Template": {"name": "Prompt Template", "display_name": "Prompt Template", "template": {}, "outputs": []},
            },
        })
    }

    #[test]
    fn the_providers_are_the_catalogs_model_components() {
        let found = providers(&catalog());
        let names: Vec<&str> = found.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["Ollama", "OpenAI"]);
        assert_eq!(find(&found, "openai").unwrap().node_type(), "OpenAIModel");
        assert!(find(&found, "Open AI").is_none());
        assert_eq!(names_of(&found), "\"Ollama\", \"OpenAI\"");
        assert!(!find(&found, "Ollama").unwrap().takes_max_tokens());
    }

    fn names_of(found: &[ModelProvider]) -> String {
        names(found)
    }

    #[test]
    fn a_node_carries_the_settings_and_the_key_by_reference() {
        let found = providers(&catalog());
        let openai = find(&found, "OpenAI").unwrap();
        let model = ModelSettings {
            provider: "OpenAI".into(),
            model_name: "gpt-x".into(),
            base_url: "http://127.0.0.1:9/v1".into(),
            system_message: "Be brief.".into(),
            api_key_ref: "MY_KEY".into(),
            temperature: Some(0.5),
            ..Default::default()
        };
        let entry = openai.node_entry(&model);
        let t = &entry["template"];
        assert_eq!(t["model_name"]["value"], "gpt-x");
        assert_eq!(t["openai_api_base"]["value"], "http://127.0.0.1:9/v1");
        assert_eq!(t["api_key"], json!({"value": "MY_KEY", "load_from_db": true}));
        assert_eq!(t["system_message"]["value"], "Be brief.");
        assert_eq!(t["temperature"]["value"], 0.5);
        assert_eq!(t["max_tokens"]["value"], 0, "unset keeps the default");
        assert_eq!(t["stream"]["value"], true);
        assert_eq!(t["max_retries"]["value"], 0);

        let tweaks = openai.tweaks(&model);
        assert_eq!(tweaks["api_key"], json!({"value": "MY_KEY", "load_from_db": true}));
        assert_eq!(tweaks["openai_api_base"], "http://127.0.0.1:9/v1");
        let ollama = find(&found, "Ollama").unwrap();
        let tweaks = ollama.tweaks(&ModelSettings { max_tokens: Some(5), base_url: "http://o:1".into(), ..model });
        assert_eq!(tweaks["base_url"], "http://o:1");
        assert!(tweaks.get("max_tokens").is_none(), "a field the component lacks is not sent");
    }
}
