//! Field-level validation of what callers send about an agent (names, capabilities, the
//! configuration) and the field mask of UpdateAgentConfig. Every problem is reported with the
//! exact path of the field, all at once.

use engarde::kit::error::FieldViolation;

use super::model::{AgentConfig, ModelSettings};

pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_DESCRIPTION_CHARS: usize = 2000;
pub const MAX_BRAND_VOICE_CHARS: usize = 2000;
pub const MAX_TONE_CHARS: usize = 200;
pub const MAX_TARGET_AUDIENCE_CHARS: usize = 2000;
pub const MAX_PROVIDER_CHARS: usize = 64;
pub const MAX_MODEL_NAME_CHARS: usize = 128;
pub const MAX_TEMPERATURE: f64 = 2.0;
pub const MAX_TOKENS: i32 = 32_000;
pub const MAX_BASE_URL_CHARS: usize = 2048;
pub const MAX_SYSTEM_MESSAGE_CHARS: usize = 8000;
pub const MAX_API_KEY_REF_CHARS: usize = 128;
pub const MAX_EXTRA_ENTRIES: usize = 50;
pub const MAX_EXTRA_KEY_CHARS: usize = 64;
pub const MAX_EXTRA_VALUE_CHARS: usize = 4000;
pub const MAX_CAPABILITIES: usize = 50;
pub const MAX_CAPABILITY_CHARS: usize = 64;

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
    check_length(field, description, MAX_DESCRIPTION_CHARS, out);
}

fn check_length(field: &str, text: &str, max: usize, out: &mut Vec<FieldViolation>) {
    if text.chars().count() > max {
        out.push(FieldViolation::new(field, format!("must be at most {max} characters")));
    }
}

/// Whether `key` may name an entry of `extra`: 1-64 characters, lowercase letters, digits,
/// '_', '-' and '.', starting with a letter.
pub fn valid_extra_key(key: &str) -> bool {
    key.len() <= MAX_EXTRA_KEY_CHARS
        && key.starts_with(|c: char| c.is_ascii_lowercase())
        && key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'))
}

fn valid_capability(capability: &str) -> bool {
    capability.len() <= MAX_CAPABILITY_CHARS
        && capability.starts_with(|c: char| c.is_ascii_lowercase())
        && capability.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Checks capabilities and answers them sorted and unique (a repeat is harmless, not an error).
pub fn check_capabilities(field: &str, capabilities: &[String], out: &mut Vec<FieldViolation>) -> Vec<String> {
    if capabilities.len() > MAX_CAPABILITIES {
        out.push(FieldViolation::new(field, format!("at most {MAX_CAPABILITIES} capabilities are allowed")));
    }
    for (i, capability) in capabilities.iter().enumerate() {
        if !valid_capability(capability) {
            out.push(FieldViolation::new(
                format!("{field}[{i}]"),
                "must be 1-64 lowercase letters, digits or underscores, starting with a letter",
            ));
        }
    }
    let mut sorted = capabilities.to_vec();
    sorted.sort();
    sorted.dedup();
    sorted
}

/// Checks a configuration; `prefix` is its path in the request (e.g. `configuration`).
pub fn check_config(prefix: &str, config: &AgentConfig, out: &mut Vec<FieldViolation>) {
    check_length(&format!("{prefix}.brand_voice"), &config.brand_voice, MAX_BRAND_VOICE_CHARS, out);
    check_length(&format!("{prefix}.tone"), &config.tone, MAX_TONE_CHARS, out);
    check_length(&format!("{prefix}.target_audience"), &config.target_audience, MAX_TARGET_AUDIENCE_CHARS, out);

    check_model(&format!("{prefix}.model"), &config.model, out);

    if config.extra.len() > MAX_EXTRA_ENTRIES {
        out.push(FieldViolation::new(format!("{prefix}.extra"), format!("at most {MAX_EXTRA_ENTRIES} entries")));
    }
    for (key, value) in &config.extra {
        let field = format!("{prefix}.extra[{key:?}]");
        if !valid_extra_key(key) {
            out.push(FieldViolation::new(
                &field,
                "keys must be 1-64 lowercase letters, digits, '_', '-' or '.', starting with a letter",
            ));
        }
        check_length(&field, value, MAX_EXTRA_VALUE_CHARS, out);
    }
}

/// Checks model settings offline (their form); which providers exist is the Langflow catalog's
/// to say (see `crate::model_catalog`). `prefix` is their path, e.g. `configuration.model`.
///
/// No message quotes `api_key_ref`: a caller who pasted the key itself must not see it echoed
/// (nor find it in our logs).
pub fn check_model(prefix: &str, model: &ModelSettings, out: &mut Vec<FieldViolation>) {
    let provider_ok = model.provider.chars().count() <= MAX_PROVIDER_CHARS
        && model.provider.chars().all(|c| c.is_alphanumeric() || matches!(c, ' ' | '_' | '-' | '.'))
        && model.provider.trim() == model.provider;
    if !provider_ok {
        out.push(FieldViolation::new(
            format!("{prefix}.provider"),
            "must be a provider as Langflow names it (e.g. \"OpenAI\", \"Ollama\"): at most 64 letters, digits, spaces, '_', '-' or '.'",
        ));
    }
    let model_name_ok =
        model.model_name.len() <= MAX_MODEL_NAME_CHARS && model.model_name.chars().all(|c| c.is_ascii_graphic());
    if !model_name_ok {
        out.push(FieldViolation::new(
            format!("{prefix}.model_name"),
            "must be at most 128 printable characters without spaces",
        ));
    } else if model.is_set() && model.model_name.is_empty() {
        out.push(FieldViolation::new(format!("{prefix}.model_name"), "is required with a provider"));
    }
    if let Some(t) = model.temperature
        && !(t.is_finite() && (0.0..=MAX_TEMPERATURE).contains(&t))
    {
        out.push(FieldViolation::new(format!("{prefix}.temperature"), "must be between 0 and 2"));
    }
    if let Some(n) = model.max_tokens
        && !(1..=MAX_TOKENS).contains(&n)
    {
        out.push(FieldViolation::new(format!("{prefix}.max_tokens"), format!("must be 1-{MAX_TOKENS}")));
    }
    if !model.base_url.is_empty() {
        if let Err(reason) = check_base_url(&model.base_url) {
            out.push(FieldViolation::new(format!("{prefix}.base_url"), reason));
        } else if !model.is_set() {
            out.push(FieldViolation::new(format!("{prefix}.base_url"), "needs a provider"));
        }
    }
    check_length(&format!("{prefix}.system_message"), &model.system_message, MAX_SYSTEM_MESSAGE_CHARS, out);
    if !model.api_key_ref.is_empty() && !valid_api_key_ref(&model.api_key_ref) {
        out.push(FieldViolation::new(
            format!("{prefix}.api_key_ref"),
            "must name the Langflow global variable or environment variable that holds the key (1-128 letters, \
             digits and '_', not starting with a digit), never the key itself",
        ));
    }
}

/// Whether `name` can name a Langflow global variable or an environment variable.
pub fn valid_api_key_ref(name: &str) -> bool {
    name.len() <= MAX_API_KEY_REF_CHARS
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_base_url(text: &str) -> Result<(), String> {
    if text.chars().count() > MAX_BASE_URL_CHARS {
        return Err(format!("must be at most {MAX_BASE_URL_CHARS} characters"));
    }
    let url = url::Url::parse(text).map_err(|e| format!("is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http or https URL".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        // A credential in the URL would be stored and shown: it goes by reference only.
        return Err("must not carry credentials (give the key by api_key_ref)".into());
    }
    Ok(())
}

/// A path of UpdateAgentConfig's field mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigField {
    BrandVoice,
    Tone,
    TargetAudience,
    Model,
    ModelProvider,
    ModelName,
    ModelTemperature,
    ModelMaxTokens,
    ModelBaseUrl,
    ModelSystemMessage,
    ModelApiKeyRef,
    Extra,
    ExtraEntry(String),
}

impl ConfigField {
    pub fn parse(path: &str) -> Option<Self> {
        Some(match path {
            "brand_voice" => Self::BrandVoice,
            "tone" => Self::Tone,
            "target_audience" => Self::TargetAudience,
            "model" => Self::Model,
            "model.provider" => Self::ModelProvider,
            "model.model_name" => Self::ModelName,
            "model.temperature" => Self::ModelTemperature,
            "model.max_tokens" => Self::ModelMaxTokens,
            "model.base_url" => Self::ModelBaseUrl,
            "model.system_message" => Self::ModelSystemMessage,
            "model.api_key_ref" => Self::ModelApiKeyRef,
            "extra" => Self::Extra,
            other => {
                let key = other.strip_prefix("extra.")?;
                if !valid_extra_key(key) {
                    return None;
                }
                Self::ExtraEntry(key.to_owned())
            }
        })
    }

    /// Copies this field from `patch` into `config`.
    pub fn apply(&self, patch: &AgentConfig, config: &mut AgentConfig) {
        match self {
            Self::BrandVoice => config.brand_voice = patch.brand_voice.clone(),
            Self::Tone => config.tone = patch.tone.clone(),
            Self::TargetAudience => config.target_audience = patch.target_audience.clone(),
            Self::Model => config.model = patch.model.clone(),
            Self::ModelProvider => config.model.provider = patch.model.provider.clone(),
            Self::ModelName => config.model.model_name = patch.model.model_name.clone(),
            Self::ModelTemperature => config.model.temperature = patch.model.temperature,
            Self::ModelMaxTokens => config.model.max_tokens = patch.model.max_tokens,
            Self::ModelBaseUrl => config.model.base_url = patch.model.base_url.clone(),
            Self::ModelSystemMessage => config.model.system_message = patch.model.system_message.clone(),
            Self::ModelApiKeyRef => config.model.api_key_ref = patch.model.api_key_ref.clone(),
            Self::Extra => config.extra = patch.extra.clone(),
            Self::ExtraEntry(key) => match patch.extra.get(key) {
                Some(value) => {
                    config.extra.insert(key.clone(), value.clone());
                }
                None => {
                    config.extra.remove(key);
                }
            },
        }
    }
}

/// The configuration after an update: `patch` as a whole when `fields` is empty, otherwise
/// `current` with the named fields copied from `patch`.
pub fn apply_config_update(current: &AgentConfig, patch: &AgentConfig, fields: &[ConfigField]) -> AgentConfig {
    if fields.is_empty() {
        return patch.clone();
    }
    let mut updated = current.clone();
    for field in fields {
        field.apply(patch, &mut updated);
    }
    updated
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violations(config: &AgentConfig) -> Vec<String> {
        let mut out = Vec::new();
        check_config("configuration", config, &mut out);
        out.into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn a_sound_config_passes() {
        let mut config = AgentConfig { brand_voice: "Warm".into(), tone: "playful".into(), ..Default::default() };
        config.model.provider = "OpenAI".into();
        config.model.model_name = "gpt-4o-mini".into();
        config.model.base_url = "http://127.0.0.1:11434/v1".into();
        config.model.api_key_ref = "OPENAI_API_KEY".into();
        config.model.system_message = "Be brief.".into();
        config.model.temperature = Some(0.0);
        config.model.max_tokens = Some(32_000);
        config.extra.insert("cta.style".into(), "soft".into());
        assert!(violations(&config).is_empty());
    }

    #[test]
    fn each_problem_names_its_field() {
        let mut config = AgentConfig { tone: "x".repeat(201), ..Default::default() };
        config.model.provider = "Open{AI}".into();
        config.model.temperature = Some(2.5);
        config.model.max_tokens = Some(0);
        config.model.base_url = "ftp://models".into();
        config.model.api_key_ref = "sk-secret-key".into();
        config.extra.insert("Bad Key".into(), "v".into());
        assert_eq!(
            violations(&config),
            vec![
                "configuration.tone",
                "configuration.model.provider",
                "configuration.model.model_name",
                "configuration.model.temperature",
                "configuration.model.max_tokens",
                "configuration.model.base_url",
                "configuration.model.api_key_ref",
                "configuration.extra[\"Bad Key\"]",
            ]
        );
        let nan = AgentConfig {
            model: super::super::model::ModelSettings { temperature: Some(f64::NAN), ..Default::default() },
            ..Default::default()
        };
        assert_eq!(violations(&nan), vec!["configuration.model.temperature"]);
    }

    #[test]
    fn a_key_given_in_place_of_its_reference_is_refused_without_being_echoed() {
        let mut out = Vec::new();
        let model = ModelSettings {
            provider: "OpenAI".into(),
            model_name: "m".into(),
            api_key_ref: "sk-live-abcdef0123456789".into(),
            base_url: "http://user:sk-live-abcdef0123456789@host/v1".into(),
            ..Default::default()
        };
        check_model("model", &model, &mut out);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|v| !v.description.contains("abcdef")), "{out:?}");
    }

    #[test]
    fn base_urls_are_http_urls_with_a_host() {
        assert!(check_base_url("http://localhost:11434").is_ok());
        assert!(check_base_url("https://vllm.internal:8000/v1").is_ok());
        for bad in ["localhost:11434", "file:///etc/passwd", "http://", "not a url", "http://a:b@host"] {
            assert!(check_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn capabilities_are_sorted_unique_and_checked() {
        let mut out = Vec::new();
        let caps = check_capabilities("capabilities", &["b".into(), "a".into(), "b".into()], &mut out);
        assert_eq!(caps, vec!["a", "b"]);
        assert!(out.is_empty());
        check_capabilities("capabilities", &["ok".into(), "Not OK".into()], &mut out);
        assert_eq!(out[0].field, "capabilities[1]");
    }

    #[test]
    fn a_mask_updates_only_what_it_names() {
        let mut current = AgentConfig { brand_voice: "old".into(), tone: "calm".into(), ..Default::default() };
        current.extra.insert("keep".into(), "1".into());
        current.extra.insert("drop".into(), "2".into());
        let mut patch = AgentConfig { brand_voice: "new".into(), ..Default::default() };
        patch.extra.insert("add".into(), "3".into());
        let fields: Vec<ConfigField> =
            ["brand_voice", "extra.drop", "extra.add"].iter().map(|p| ConfigField::parse(p).unwrap()).collect();
        let updated = apply_config_update(&current, &patch, &fields);
        assert_eq!(updated.brand_voice, "new");
        assert_eq!(updated.tone, "calm");
        assert_eq!(updated.extra.keys().collect::<Vec<_>>(), vec!["add", "keep"]);
        assert_eq!(apply_config_update(&current, &patch, &[]), patch);
        assert!(ConfigField::parse("extra.Bad Key").is_none());
        assert!(ConfigField::parse("colour").is_none());
    }
}
