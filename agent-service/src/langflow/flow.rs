//! The Langflow flow of an agent, generated from its workflow's steps out of the Langflow
//! server's own component catalog (so the nodes match the server's version):
//!
//! ```text
//! Chat Input ──message──▶ Prompt Template ──prompt──▶ [Language Model] ──▶ Chat Output
//! ```
//!
//! The Prompt node's template is set per run through a tweak: one flow serves every step of a
//! walk. Its variables are fixed ([`VARIABLES`]): `{input}` is fed by Chat Input, the others by
//! tweaks from the agent's configuration. Without a language model the flow runs offline and
//! answers the rendered prompt.

use serde_json::{Value, json};

use super::error::LangflowError;
use super::models::{self, ModelProvider};
use crate::domain::{AgentConfig, FlowOrigin};

/// Node ids of generated flows: fixed, so that tweaks can name them.
pub const CHAT_INPUT_ID: &str = "ChatInput-engarde";
pub const PROMPT_ID: &str = "Prompt-engarde";
pub const MODEL_ID: &str = "LanguageModel-engarde";
pub const CHAT_OUTPUT_ID: &str = "ChatOutput-engarde";

/// The variables a generated Prompt node declares.
pub const VARIABLES: &[&str] = &["input", "brand_voice", "tone", "target_audience"];

/// The catalog entry of a component, or an error naming what the server lacks.
fn component<'a>(catalog: &'a Value, category: &str, name: &str) -> Result<&'a Value, LangflowError> {
    catalog
        .get(category)
        .and_then(|c| c.get(name))
        .ok_or_else(|| LangflowError::BadResponse(format!("the Langflow component catalog has no {category}/{name}")))
}

fn node(id: &str, kind: &str, entry: Value, x: i64) -> Value {
    json!({
        "id": id,
        "type": "genericNode",
        "position": {"x": x, "y": 0},
        "data": {"id": id, "type": kind, "node": entry},
    })
}

fn edge(
    source: &str,
    source_type: &str,
    output: &str,
    target: &str,
    field: &str,
    input_types: &Value,
    field_type: &str,
) -> Value {
    let source_handle = json!({"dataType": source_type, "id": source, "name": output, "output_types": ["Message"]});
    let target_handle = json!({"fieldName": field, "id": target, "inputTypes": input_types, "type": field_type});
    json!({
        "id": format!("edge-{source}-{target}"),
        "source": source,
        "target": target,
        "sourceHandle": source_handle.to_string(),
        "targetHandle": target_handle.to_string(),
        "data": {"sourceHandle": source_handle, "targetHandle": target_handle},
    })
}

fn variable_field(name: &str, value: &str) -> Value {
    json!({
        "advanced": false, "display_name": name, "dynamic": false, "field_type": "str", "fileTypes": [],
        "file_path": "", "info": "", "input_types": ["Message"], "list": false, "load_from_db": false,
        "multiline": true, "name": name, "placeholder": "", "required": false, "show": true,
        "title_case": false, "type": "str", "value": value,
    })
}

/// The flow data (`{"nodes", "edges"}`) of an agent whose first step prompt is `prompt`.
pub fn generate(catalog: &Value, prompt: &str, config: &AgentConfig) -> Result<Value, LangflowError> {
    let chat_input = component(catalog, "input_output", "ChatInput")?.clone();
    let chat_output = component(catalog, "input_output", "ChatOutput")?.clone();
    let mut prompt_node = component(catalog, "models_and_agents", "Prompt Template")?.clone();

    let template = prompt_node
        .get_mut("template")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| LangflowError::BadResponse("the Prompt Template component has no template".into()))?;
    if let Some(field) = template.get_mut("template") {
        field["value"] = json!(compose_template(prompt, config, ""));
    }
    // Every variable needs a field of its own; `input` is fed by the edge from Chat Input.
    template.insert("input".to_owned(), variable_field("input", ""));
    for (name, value) in variable_values(config) {
        template.insert(name.to_owned(), variable_field(name, &value));
    }
    prompt_node["custom_fields"] = json!({"template": VARIABLES});

    let output_types = chat_output["template"]["input_value"]["input_types"].clone();
    let mut nodes =
        vec![node(CHAT_INPUT_ID, "ChatInput", chat_input, 0), node(PROMPT_ID, "Prompt Template", prompt_node, 400)];
    let mut edges = vec![edge(CHAT_INPUT_ID, "ChatInput", "message", PROMPT_ID, "input", &json!(["Message"]), "str")];

    let model = &config.model;
    if model.is_set() {
        let offered = models::providers(catalog);
        let provider = models::find(&offered, &model.provider).ok_or_else(|| {
            LangflowError::ModelNotOffered(format!(
                "this Langflow offers no model provider {:?}; it offers {}",
                model.provider,
                models::names(&offered)
            ))
        })?;
        let model_node = provider.node_entry(model);
        let model_input_types = model_node["template"]["input_value"]["input_types"].clone();
        nodes.push(node(MODEL_ID, provider.node_type(), model_node, 800));
        edges.push(edge(PROMPT_ID, "Prompt Template", "prompt", MODEL_ID, "input_value", &model_input_types, "str"));
        edges.push(edge(
            MODEL_ID,
            provider.node_type(),
            "text_output",
            CHAT_OUTPUT_ID,
            "input_value",
            &output_types,
            "other",
        ));
    } else {
        edges.push(edge(PROMPT_ID, "Prompt Template", "prompt", CHAT_OUTPUT_ID, "input_value", &output_types, "other"));
    }
    nodes.push(node(CHAT_OUTPUT_ID, "ChatOutput", chat_output, 1200));
    Ok(json!({"nodes": nodes, "edges": edges}))
}

/// The flow data of a Langflow export carried by a template (`{"data": {...}}` or the data
/// itself), by the rules workflow-service validates it with.
pub fn from_export(export: &str) -> Result<Value, engarde::flow_export::FlowExportError> {
    engarde::flow_export::flow_data(export)
}

fn variable_values(config: &AgentConfig) -> [(&'static str, String); 3] {
    [
        ("brand_voice", config.brand_voice.clone()),
        ("tone", config.tone.clone()),
        ("target_audience", config.target_audience.clone()),
    ]
}

/// The Prompt template for a step: the conversation so far (`history`, when there is one), the
/// step's prompt with its `{input}` (appended when the prompt has none), then the agent's voice,
/// tone and audience when they are set. Braces that are not one of [`VARIABLES`] are escaped,
/// so a prompt cannot break the template; the history's braces are all escaped, so nothing a
/// caller said earlier becomes a variable.
pub fn compose_template(step_prompt: &str, config: &AgentConfig, history: &str) -> String {
    let mut template = String::new();
    if !history.is_empty() {
        template.push_str("Conversation so far:\n");
        template.push_str(&history.replace('{', "{{").replace('}', "}}"));
        template.push_str("\n\n");
    }
    let prompt = escape_foreign_braces(step_prompt.trim());
    if prompt.is_empty() {
        template.push_str("{input}");
    } else {
        template.push_str(&prompt);
        if !prompt.contains("{input}") {
            template.push_str("\n\n{input}");
        }
    }
    let context: Vec<&str> = [
        (!config.brand_voice.is_empty()).then_some("Brand voice: {brand_voice}"),
        (!config.tone.is_empty()).then_some("Tone: {tone}"),
        (!config.target_audience.is_empty()).then_some("Target audience: {target_audience}"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !context.is_empty() {
        template.push_str("\n\n");
        template.push_str(&context.join("\n"));
    }
    template
}

fn escape_foreign_braces(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find(['{', '}']) {
        out.push_str(&rest[..open]);
        let tail = &rest[open..];
        let known = VARIABLES.iter().find(|v| tail.starts_with(&format!("{{{v}}}")));
        match known {
            Some(v) => {
                out.push_str(&format!("{{{v}}}"));
                rest = &tail[v.len() + 2..];
            }
            None => {
                let brace = &tail[..1];
                out.push_str(brace);
                out.push_str(brace);
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// What one run of an agent's flow is given besides its input.
#[derive(Debug, Clone, Copy)]
pub struct RunContext<'a> {
    pub step_prompt: &'a str,
    pub config: &'a AgentConfig,
    /// The conversation so far, as text (empty for none).
    pub history: &'a str,
    /// The provider of the configured model, as the catalog has it (`None`: no model).
    pub provider: Option<&'a ModelProvider>,
}

/// The tweaks of one run of an agent's flow: only a flow agent-service generated has the nodes
/// the tweaks address; any other flow runs as it is.
pub fn tweaks_for(origin: FlowOrigin, run: &RunContext<'_>) -> Value {
    match origin {
        FlowOrigin::Generated => tweaks(run),
        _ => Value::Object(Default::default()),
    }
}

/// The tweaks of one run of a generated flow: the step's template, the configuration, and the
/// model's settings as they are now.
pub fn tweaks(run: &RunContext<'_>) -> Value {
    let mut prompt = serde_json::Map::new();
    prompt.insert("template".into(), json!(compose_template(run.step_prompt, run.config, run.history)));
    for (name, value) in variable_values(run.config) {
        prompt.insert(name.into(), json!(value));
    }
    let mut tweaks = serde_json::Map::new();
    tweaks.insert(PROMPT_ID.into(), Value::Object(prompt));
    if let Some(provider) = run.provider {
        tweaks.insert(MODEL_ID.into(), provider.tweaks(&run.config.model));
    }
    Value::Object(tweaks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<'a>(config: &'a AgentConfig, history: &'a str) -> RunContext<'a> {
        RunContext { step_prompt: "p", config, history, provider: None }
    }

    #[test]
    fn only_a_generated_flow_is_given_tweaks() {
        let config = AgentConfig::default();
        assert_ne!(tweaks_for(FlowOrigin::Generated, &run(&config, "")), json!({}));
        for origin in [FlowOrigin::None, FlowOrigin::Uploaded, FlowOrigin::Linked] {
            assert_eq!(tweaks_for(origin, &run(&config, "")), json!({}), "{origin:?}");
        }
    }

    fn catalog() -> Value {
        let entry = |fields: Value| json!({"template": fields, "outputs": []});
        let mut catalog = models::tests::catalog();
        catalog["input_output"] = json!({
            "ChatInput": entry(json!({"input_value": {"value": ""}})),
            "ChatOutput": entry(json!({"input_value": {"input_types": ["Data", "Message"], "value": ""}})),
        });
        catalog["models_and_agents"]["Prompt Template"] = entry(json!({"template": {"type": "prompt", "value": ""}}));
        catalog
    }

    #[test]
    fn a_generated_flow_renders_the_prompt_offline() {
        let config = AgentConfig { tone: "warm".into(), ..Default::default() };
        let flow = generate(&catalog(), "Write about {input}", &config).unwrap();
        let ids: Vec<&str> = flow["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
        assert_eq!(ids, [CHAT_INPUT_ID, PROMPT_ID, CHAT_OUTPUT_ID]);
        let prompt = &flow["nodes"][1]["data"]["node"];
        assert_eq!(prompt["template"]["template"]["value"], "Write about {input}\n\nTone: {tone}");
        assert_eq!(prompt["template"]["tone"]["value"], "warm");
        for variable in VARIABLES {
            assert!(prompt["template"][variable].is_object(), "a field for {{{variable}}}");
        }
        assert_eq!(prompt["custom_fields"]["template"], json!(VARIABLES));
        let edges = flow["edges"].as_array().unwrap();
        assert_eq!(edges.len(), 2);
        assert_eq!(edges[1]["data"]["targetHandle"]["inputTypes"], json!(["Data", "Message"]));
        // The handles are also sent as JSON strings, as Langflow's own exports do.
        let handle: Value = serde_json::from_str(edges[0]["sourceHandle"].as_str().unwrap()).unwrap();
        assert_eq!(handle, edges[0]["data"]["sourceHandle"]);
    }

    #[test]
    fn a_configured_model_sits_between_prompt_and_output() {
        let mut config = AgentConfig::default();
        config.model.provider = "openai".into();
        config.model.model_name = "gpt-4o-mini".into();
        let flow = generate(&catalog(), "Hi {input}", &config).unwrap();
        let ids: Vec<&str> = flow["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
        assert_eq!(ids, [CHAT_INPUT_ID, PROMPT_ID, MODEL_ID, CHAT_OUTPUT_ID]);
        assert_eq!(flow["nodes"][2]["data"]["type"], "OpenAIModel");
        assert_eq!(flow["nodes"][2]["data"]["node"]["template"]["model_name"]["value"], "gpt-4o-mini");
        // Langflow streams a model's tokens only when its node feeds a node whose id starts
        // with "ChatOutput-".
        assert!(CHAT_OUTPUT_ID.starts_with("ChatOutput-"));
        assert_eq!(flow["edges"][2]["target"], CHAT_OUTPUT_ID);

        config.model.provider = "Mistral".into();
        let err = generate(&catalog(), "Hi", &config).unwrap_err();
        assert!(err.to_string().contains("\"Ollama\", \"OpenAI\""), "{err}");
    }

    #[test]
    fn the_history_comes_first_with_every_brace_escaped() {
        let config = AgentConfig::default();
        assert_eq!(
            compose_template("Answer {input}", &config, "User: {input}?\nAssistant: ok"),
            "Conversation so far:\nUser: {{input}}?\nAssistant: ok\n\nAnswer {input}"
        );
        let tweaks = tweaks(&run(&config, "User: hi"));
        assert!(tweaks[PROMPT_ID]["template"].as_str().unwrap().starts_with("Conversation so far:\nUser: hi"));
        assert!(tweaks.get(MODEL_ID).is_none(), "no model, no model tweaks");
    }

    #[test]
    fn templates_keep_known_variables_and_escape_the_rest() {
        let config = AgentConfig::default();
        assert_eq!(compose_template("Use {input} and {json}", &config, ""), "Use {input} and {{json}}");
        assert_eq!(compose_template("No placeholder", &config, ""), "No placeholder\n\n{input}");
        assert_eq!(compose_template("", &config, ""), "{input}");
        assert_eq!(compose_template("a } b {", &config, ""), "a }} b {{\n\n{input}");
    }

    #[test]
    fn a_catalog_without_the_components_is_an_error() {
        assert!(generate(&json!({}), "x", &AgentConfig::default()).is_err());
    }

    #[test]
    fn exports_are_accepted_with_or_without_their_envelope() {
        assert!(from_export(r#"{"data": {"nodes": [{"id": "a"}], "edges": []}}"#).is_ok());
        assert!(from_export(r#"{"nodes": [{"id": "a"}], "edges": []}"#).is_ok());
        assert!(from_export(r#"{"data": {}}"#).is_err());
        assert!(from_export(r#"{"name": "x"}"#).is_err());
        assert!(from_export("nope").is_err());
    }
}
