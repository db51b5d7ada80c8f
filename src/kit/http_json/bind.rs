//! A request message from an HTTP request: the JSON body, then the query parameters, then the
//! path's variables, each parsed with the proto3 JSON mapping (prost-reflect), so that a field
//! takes the same spellings everywhere (enums by name or number, 64-bit integers as strings,
//! timestamps as RFC 3339, field masks as `a,b`).
//!
//! Whatever cannot be bound is INVALID_ARGUMENT naming the field or parameter: bad JSON, an
//! unknown JSON field or query parameter, a value of the wrong type, a parameter given twice for
//! a singular field. Nothing is silently dropped: a client that misspells a field learns it.

use prost::Message as _;
use prost_reflect::{DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value as Json};

use super::rules::{Binding, BodyTarget};
use super::template::Variable;

/// A part of the request that does not bind: the field (or parameter) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindError {
    pub field: String,
    pub description: String,
}

impl BindError {
    fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self { field: field.into(), description: description.into() }
    }

    /// INVALID_ARGUMENT with the violation as google.rpc.BadRequest, as a gRPC call's would be.
    pub fn into_status(self) -> tonic::Status {
        use tonic_types::{ErrorDetails, StatusExt as _};
        let message = format!("{}: {}", self.field, self.description);
        tonic::Status::with_error_details(
            tonic::Code::InvalidArgument,
            message,
            ErrorDetails::with_bad_request_violation(self.field, self.description),
        )
    }
}

/// The request message of `binding` from the path's `variables`, the `query` string and `body`.
pub fn request_message(
    binding: &Binding,
    variables: &[(&Variable, String)],
    query: Option<&str>,
    body: &[u8],
) -> Result<DynamicMessage, BindError> {
    let input = binding.rpc.input();
    let mut message = DynamicMessage::new(input.clone());
    let body_is_empty = body.iter().all(u8::is_ascii_whitespace);
    match &binding.body {
        BodyTarget::Whole if !body_is_empty => message = parse_body(&input, body)?,
        BodyTarget::Field(field) if !body_is_empty => {
            let value: Json = serde_json::from_slice(body).map_err(|e| BindError::new("body", json_error(&e)))?;
            let wrapped = Json::Object(Map::from_iter([(field.json_name().to_owned(), value)]));
            message = deserialize(&input, wrapped).map_err(|e| BindError::new(field.name(), e))?;
        }
        BodyTarget::None if !body_is_empty => {
            return Err(BindError::new("body", "this call takes no body: pass its fields as query parameters"));
        }
        _ => {}
    }
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        bind_query(binding, variables, &input, query, &mut message)?;
    }
    for (variable, value) in variables {
        let name = variable.field_path.join(".");
        let (fields, leaf) =
            resolve(&input, &variable.field_path).ok_or_else(|| BindError::new(&name, "no such field"))?;
        let json = nest(&fields, scalar_json(&leaf, value));
        let bound = deserialize(&input, json).map_err(|e| BindError::new(&name, e))?;
        merge(&mut message, &bound);
    }
    Ok(message)
}

fn parse_body(input: &MessageDescriptor, body: &[u8]) -> Result<DynamicMessage, BindError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let message =
        DynamicMessage::deserialize_with_options(input.clone(), &mut deserializer, &DeserializeOptions::new())
            .map_err(|e| body_error(&e))?;
    deserializer.end().map_err(|e| BindError::new("body", json_error(&e)))?;
    Ok(message)
}

/// A body that does not bind: an unknown field is named as the violation's field.
fn body_error(e: &serde_json::Error) -> BindError {
    // prost-reflect's wording: "unrecognized field name 'x' at line 1 column 7".
    let text = e.to_string();
    match text.strip_prefix("unrecognized field name '").and_then(|rest| rest.split_once('\'')) {
        Some((field, _)) => BindError::new(field, format!("unknown field ({text})")),
        None => BindError::new("body", json_error(e)),
    }
}

fn json_error(e: &serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => format!("not valid JSON: {e}"),
        _ => e.to_string(),
    }
}

/// Binds the query parameters: each names a field by its path (proto or JSON names, dotted for
/// nested fields), repeated for a repeated field.
fn bind_query(
    binding: &Binding,
    variables: &[(&Variable, String)],
    input: &MessageDescriptor,
    query: &str,
    message: &mut DynamicMessage,
) -> Result<(), BindError> {
    let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match grouped.iter_mut().find(|(k, _)| *k == key) {
            Some((_, values)) => values.push(value.into_owned()),
            None => grouped.push((key.into_owned(), vec![value.into_owned()])),
        }
    }
    for (key, values) in grouped {
        if matches!(binding.body, BodyTarget::Whole) {
            return Err(BindError::new(key, "this call takes its fields in the JSON body, not as query parameters"));
        }
        let path: Vec<String> = key.split('.').map(str::to_owned).collect();
        let (fields, leaf) = resolve(input, &path).ok_or_else(|| BindError::new(&key, "no such field"))?;
        let proto_path: Vec<&str> = fields.iter().map(FieldDescriptor::name).collect();
        if variables.iter().any(|(v, _)| v.field_path.iter().map(String::as_str).eq(proto_path.iter().copied())) {
            return Err(BindError::new(&key, "already given by the path"));
        }
        if let BodyTarget::Field(body) = &binding.body
            && fields[0].number() == body.number()
        {
            return Err(BindError::new(&key, "given by the body"));
        }
        if leaf.is_map() {
            return Err(BindError::new(&key, "a map cannot be given as a query parameter"));
        }
        let value = if leaf.is_list() {
            Json::Array(values.iter().map(|v| scalar_json(&leaf, v)).collect())
        } else if values.len() > 1 {
            return Err(BindError::new(&key, "given more than once for a field that holds one value"));
        } else {
            scalar_json(&leaf, &values[0])
        };
        let bound = deserialize(input, nest(&fields, value)).map_err(|e| BindError::new(&key, e))?;
        merge(message, &bound);
    }
    Ok(())
}

/// The fields along `path` from `input` (each by its proto or JSON name, each but the last a
/// singular message), and the last one.
fn resolve(input: &MessageDescriptor, path: &[String]) -> Option<(Vec<FieldDescriptor>, FieldDescriptor)> {
    let mut message = input.clone();
    let mut fields = Vec::with_capacity(path.len());
    for (i, part) in path.iter().enumerate() {
        let field = message.get_field_by_name(part).or_else(|| message.get_field_by_json_name(part))?;
        if i + 1 < path.len() {
            match field.kind() {
                Kind::Message(inner) if !field.is_list() && !is_well_known(&inner) => message = inner,
                _ => return None,
            }
        }
        fields.push(field);
    }
    let leaf = fields.last()?.clone();
    Some((fields, leaf))
}

fn is_well_known(message: &MessageDescriptor) -> bool {
    message.package_name() == "google.protobuf"
}

/// `{"a": {"b": value}}` for the fields a.b.
fn nest(fields: &[FieldDescriptor], value: Json) -> Json {
    fields
        .iter()
        .rev()
        .fold(value, |inner, field| Json::Object(Map::from_iter([(field.json_name().to_owned(), inner)])))
}

/// The JSON a text value of `field` stands for: its text, except for booleans (JSON has no
/// string spelling of them) and enum numbers. The proto3 JSON parser accepts numbers, 64-bit
/// integers and the well-known types' string forms as strings.
fn scalar_json(field: &FieldDescriptor, text: &str) -> Json {
    match field.kind() {
        Kind::Bool => match text {
            "true" => Json::Bool(true),
            "false" => Json::Bool(false),
            _ => Json::String(text.to_owned()),
        },
        Kind::Enum(_) => match text.parse::<i64>() {
            Ok(number) => Json::from(number),
            Err(_) => Json::String(text.to_owned()),
        },
        Kind::Message(inner) if inner.full_name() == "google.protobuf.BoolValue" => match text {
            "true" => Json::Bool(true),
            "false" => Json::Bool(false),
            _ => Json::String(text.to_owned()),
        },
        _ => Json::String(text.to_owned()),
    }
}

fn deserialize(input: &MessageDescriptor, json: Json) -> Result<DynamicMessage, String> {
    DynamicMessage::deserialize_with_options(input.clone(), json, &DeserializeOptions::new()).map_err(|e| e.to_string())
}

/// Merges `from` into `into` with protobuf's rules: set fields replace, repeated ones append,
/// messages merge field by field.
fn merge(into: &mut DynamicMessage, from: &DynamicMessage) {
    // Both are of the same descriptor, so the encoding always merges back.
    if let Err(e) = into.merge(from.encode_to_vec().as_slice()) {
        tracing::error!(error = %e, "merging a request's parts failed");
    }
}

#[cfg(test)]
mod tests {
    use prost_reflect::{DescriptorPool, Value};

    use super::*;
    use crate::kit::http_json::template::PathTemplate;

    /// A binding of CreateAgent (nested messages, a repeated field, an enum, a map) at
    /// `template`, its body going to `body`.
    fn binding(template: &str, body: &str) -> Binding {
        let pool = DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET).unwrap();
        let rpc = pool
            .get_service_by_name("engarde.agent.v1.AgentService")
            .unwrap()
            .methods()
            .find(|m| m.name() == "CreateAgent")
            .unwrap();
        let body = match body {
            "" => BodyTarget::None,
            "*" => BodyTarget::Whole,
            field => BodyTarget::Field(rpc.input().get_field_by_name(field).unwrap()),
        };
        Binding {
            http_method: http::Method::POST,
            template: PathTemplate::parse(template).unwrap(),
            body,
            response_body: None,
            grpc_path: "/engarde.agent.v1.AgentService/CreateAgent".into(),
            rpc,
        }
    }

    fn bind(binding: &Binding, path: &str, query: &str, body: &str) -> Result<DynamicMessage, BindError> {
        let variables = binding.template.matches(path).expect("the path matches");
        request_message(binding, &variables, Some(query), body.as_bytes())
    }

    fn at(message: &DynamicMessage, path: &str) -> Value {
        let mut value = Value::Message(message.clone());
        for part in path.split('.') {
            let Value::Message(m) = value else { panic!("{path}: not a message") };
            value = m.get_field_by_name(part).unwrap().into_owned();
        }
        value
    }

    #[test]
    fn query_parameters_bind_nested_repeated_and_enum_fields() {
        let b = binding("/v1/agents", "");
        let query = "name=Ann&configuration.tone=warm&configuration.model.temperature=0.5&capabilities=a&capabilities=b\
                     &agentType=AGENT_TYPE_WALKER&configuration.model.maxTokens=7";
        let message = bind(&b, "/v1/agents", query, "").unwrap();
        assert_eq!(at(&message, "name"), Value::String("Ann".into()));
        assert_eq!(at(&message, "configuration.tone"), Value::String("warm".into()));
        assert_eq!(at(&message, "configuration.model.temperature"), Value::F64(0.5));
        assert_eq!(at(&message, "configuration.model.max_tokens"), Value::I32(7));
        assert_eq!(
            at(&message, "capabilities"),
            Value::List(vec![Value::String("a".into()), Value::String("b".into())])
        );
        let walker = b.rpc.input().get_field_by_name("agent_type").unwrap();
        let Kind::Enum(agent_type) = walker.kind() else { panic!("enum") };
        let number = agent_type.get_value_by_name("AGENT_TYPE_WALKER").unwrap().number();
        assert_eq!(at(&message, "agent_type"), Value::EnumNumber(number));
        // An enum by number too, and spaces encoded as '+'.
        let message = bind(&b, "/v1/agents", &format!("agent_type={number}&name=A+B"), "").unwrap();
        assert_eq!(at(&message, "agent_type"), Value::EnumNumber(number));
        assert_eq!(at(&message, "name"), Value::String("A B".into()));
    }

    #[test]
    fn what_does_not_bind_names_the_parameter() {
        let b = binding("/v1/agents", "");
        let field = |query: &str| bind(&b, "/v1/agents", query, "").unwrap_err().field;
        assert_eq!(field("colour=blue"), "colour");
        assert_eq!(field("configuration.colour=blue"), "configuration.colour");
        assert_eq!(field("name.first=x"), "name.first");
        assert_eq!(field("name=a&name=b"), "name");
        assert_eq!(field("agentType=NOT_A_TYPE"), "agentType");
        assert_eq!(field("configuration.model.maxTokens=many"), "configuration.model.maxTokens");
        assert_eq!(field("configuration.extra=x"), "configuration.extra");
        assert_eq!(bind(&b, "/v1/agents", "", "{}").unwrap_err().field, "body");
    }

    #[test]
    fn the_path_wins_over_the_body_and_a_whole_body_takes_no_query() {
        let b = binding("/v1/agents/{name}", "*");
        let message = bind(&b, "/v1/agents/from-path", "", r#"{"name": "from-body", "tone": 1}"#).unwrap_err();
        assert_eq!(message.field, "tone", "unknown body fields are named");
        let message = bind(&b, "/v1/agents/from-path", "", r#"{"name": "from-body", "capabilities": ["x"]}"#).unwrap();
        assert_eq!(at(&message, "name"), Value::String("from-path".into()));
        assert_eq!(at(&message, "capabilities"), Value::List(vec![Value::String("x".into())]));
        assert_eq!(bind(&b, "/v1/agents/p", "capabilities=y", "{}").unwrap_err().field, "capabilities");
        // An empty body is an empty message, not bad JSON.
        assert!(bind(&b, "/v1/agents/p", "", " ").is_ok());
    }

    #[test]
    fn a_body_field_takes_the_body_and_the_rest_comes_from_the_query() {
        let b = binding("/v1/agents/{configuration.model.provider}", "configuration");
        let message = bind(&b, "/v1/agents/openai", "name=Ann", r#"{"tone": "warm"}"#).unwrap();
        assert_eq!(at(&message, "configuration.tone"), Value::String("warm".into()));
        assert_eq!(at(&message, "configuration.model.provider"), Value::String("openai".into()));
        assert_eq!(at(&message, "name"), Value::String("Ann".into()));
        assert_eq!(bind(&b, "/v1/agents/x", "configuration.tone=a", "{}").unwrap_err().field, "configuration.tone");
    }
}
