//! The OpenAPI 3 document of the HTTP/JSON port, generated at start from the same bindings the
//! router serves (so it cannot drift from them) and from the message descriptors, with the
//! `.proto` comments (build.rs keeps source info in the descriptor set) as descriptions.

use std::collections::{BTreeMap, BTreeSet};

use prost_reflect::{DescriptorPool, FieldDescriptor, FileDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value as Json, json};

use super::rules::{BodyTarget, Router};

/// How deep query parameters of nested messages are listed (`filter.category` is depth 2).
const MAX_QUERY_DEPTH: usize = 3;

/// The document, as JSON.
pub fn document(title: &str, router: &Router, pool: &DescriptorPool) -> Json {
    let comments = Comments::of(pool);
    let mut paths: BTreeMap<String, Map<String, Json>> = BTreeMap::new();
    let mut schemas = Schemas::default();
    let mut operation_ids: BTreeMap<String, usize> = BTreeMap::new();
    for binding in router.bindings() {
        let rpc = &binding.rpc;
        let input = rpc.input();
        let output = rpc.output();
        let path_fields: Vec<String> = binding.template.variables().iter().map(|v| v.field_path.join(".")).collect();
        let mut parameters: Vec<Json> = path_fields
            .iter()
            .map(|name| {
                let field = field_at(&input, name);
                json!({
                    "name": name,
                    "in": "path",
                    "required": true,
                    "description": field.as_ref().map(|f| comments.field(f)).unwrap_or_default(),
                    "schema": field.as_ref().map(|f| schemas.field(f)).unwrap_or_else(|| json!({"type": "string"})),
                })
            })
            .collect();
        if matches!(binding.body, BodyTarget::None | BodyTarget::Field(_)) {
            let body_field = match &binding.body {
                BodyTarget::Field(field) => Some(field.name().to_owned()),
                _ => None,
            };
            query_parameters(
                &input,
                "",
                1,
                &path_fields,
                body_field.as_deref(),
                &comments,
                &mut schemas,
                &mut parameters,
            );
        }
        let mut operation = Map::new();
        // Unique per operation, as OpenAPI requires: an RPC's additional bindings are numbered.
        let base_id = format!("{}_{}", rpc.parent_service().name(), rpc.name());
        let seen = operation_ids.entry(base_id.clone()).or_insert(0usize);
        *seen += 1;
        let operation_id = if *seen == 1 { base_id } else { format!("{base_id}_{seen}") };
        operation.insert("operationId".into(), json!(operation_id));
        operation.insert("tags".into(), json!([rpc.parent_service().name()]));
        let description = comments.method(rpc);
        if let Some(summary) = description.lines().next().filter(|l| !l.is_empty()) {
            operation.insert("summary".into(), json!(summary));
        }
        operation.insert("description".into(), json!(description));
        operation.insert("parameters".into(), Json::Array(parameters));
        let body_schema = match &binding.body {
            BodyTarget::None => None,
            BodyTarget::Whole => Some(schemas.message(&input)),
            BodyTarget::Field(field) => Some(schemas.field(field)),
        };
        if let Some(schema) = body_schema {
            operation.insert(
                "requestBody".into(),
                json!({"required": true, "content": {"application/json": {"schema": schema}}}),
            );
        }
        let answer = match &binding.response_body {
            Some(field) => schemas.field(field),
            None => schemas.message(&output),
        };
        let (content_type, description) = if rpc.is_server_streaming() {
            (
                "application/x-ndjson",
                "A stream of messages, one JSON object a line; an error ends it as {\"error\": ...}.",
            )
        } else {
            ("application/json", "The answer.")
        };
        operation.insert(
            "responses".into(),
            json!({
                "200": {"description": description, "content": {content_type: {"schema": answer}}},
                "default": {
                    "description": "An error (the Google JSON error model).",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
                }
            }),
        );
        paths
            .entry(binding.template.openapi_path())
            .or_default()
            .insert(binding.http_method.as_str().to_ascii_lowercase(), Json::Object(operation));
    }
    let mut components = schemas.finish(&comments);
    components.insert(
        "Error".into(),
        json!({
            "type": "object",
            "properties": {
                "error": {
                    "type": "object",
                    "properties": {
                        "code": {"type": "integer", "description": "The HTTP status."},
                        "message": {"type": "string"},
                        "status": {"type": "string", "description": "The google.rpc.Code name, e.g. INVALID_ARGUMENT."},
                        "details": {"type": "array", "items": {"type": "object", "properties": {"@type": {"type": "string"}}, "additionalProperties": true}}
                    }
                }
            }
        }),
    );
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": title,
            "version": "v1",
            "description": "The gRPC API transcoded to HTTP/JSON from its google.api.http annotations. \
                            Errors follow the Google JSON error model."
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}
        },
        "security": [{"bearer": []}]
    })
}

/// The query parameters of `message`'s fields not bound elsewhere, nested fields dotted.
#[allow(clippy::too_many_arguments)]
fn query_parameters(
    message: &MessageDescriptor,
    prefix: &str,
    depth: usize,
    path_fields: &[String],
    body_field: Option<&str>,
    comments: &Comments,
    schemas: &mut Schemas,
    out: &mut Vec<Json>,
) {
    for field in message.fields() {
        let name = format!("{prefix}{}", field.name());
        if path_fields.contains(&name) || (depth == 1 && Some(field.name()) == body_field) || field.is_map() {
            continue;
        }
        match field.kind() {
            Kind::Message(inner) if !field.is_list() && inner.package_name() != "google.protobuf" => {
                if depth < MAX_QUERY_DEPTH {
                    let prefix = format!("{name}.");
                    query_parameters(&inner, &prefix, depth + 1, path_fields, body_field, comments, schemas, out);
                }
            }
            Kind::Message(_) if field.is_list() => {}
            _ => out.push(json!({
                "name": name,
                "in": "query",
                "required": false,
                "description": comments.field(&field),
                "schema": schemas.field(&field),
            })),
        }
    }
}

fn field_at(message: &MessageDescriptor, dotted: &str) -> Option<FieldDescriptor> {
    let mut message = message.clone();
    let mut found = None;
    for part in dotted.split('.') {
        let field = message.get_field_by_name(part)?;
        if let Kind::Message(inner) = field.kind() {
            message = inner;
        }
        found = Some(field);
    }
    found
}

/// The component schemas referenced so far, filled in at the end.
#[derive(Default)]
struct Schemas {
    referenced: BTreeMap<String, MessageDescriptor>,
    enums: BTreeSet<String>,
}

impl Schemas {
    /// A reference to `message`'s schema (or the inline schema of a well-known type).
    fn message(&mut self, message: &MessageDescriptor) -> Json {
        if let Some(schema) = well_known(message.full_name()) {
            return schema;
        }
        self.referenced.entry(message.full_name().to_owned()).or_insert_with(|| message.clone());
        json!({"$ref": format!("#/components/schemas/{}", message.full_name())})
    }

    fn field(&mut self, field: &FieldDescriptor) -> Json {
        if field.is_map() {
            let Kind::Message(entry) = field.kind() else { return json!({"type": "object"}) };
            let value = entry.map_entry_value_field();
            return json!({"type": "object", "additionalProperties": self.single(&value)});
        }
        let single = self.single(field);
        if field.is_list() { json!({"type": "array", "items": single}) } else { single }
    }

    fn single(&mut self, field: &FieldDescriptor) -> Json {
        match field.kind() {
            Kind::Double | Kind::Float => json!({"type": "number"}),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => json!({"type": "integer", "format": "int32"}),
            Kind::Uint32 | Kind::Fixed32 => json!({"type": "integer", "format": "int64", "minimum": 0}),
            // The proto3 JSON mapping writes 64-bit integers as strings.
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({"type": "string", "format": "int64"}),
            Kind::Uint64 | Kind::Fixed64 => json!({"type": "string", "format": "uint64"}),
            Kind::Bool => json!({"type": "boolean"}),
            Kind::String => json!({"type": "string"}),
            Kind::Bytes => json!({"type": "string", "format": "byte"}),
            Kind::Enum(e) => {
                self.enums.insert(e.full_name().to_owned());
                json!({"type": "string", "enum": e.values().map(|v| v.name().to_owned()).collect::<Vec<_>>()})
            }
            Kind::Message(m) => self.message(&m),
        }
    }

    /// The component schemas of every message referenced, and of those they reference.
    fn finish(mut self, comments: &Comments) -> Map<String, Json> {
        let mut out = Map::new();
        while let Some(name) = self.referenced.keys().find(|k| !out.contains_key(*k)).cloned() {
            let message = self.referenced[&name].clone();
            let mut properties = Map::new();
            for field in message.fields() {
                let mut schema = self.field(&field);
                let description = comments.field(&field);
                if !description.is_empty() {
                    schema = match schema {
                        // A $ref takes no siblings in OpenAPI 3.0: wrap it.
                        Json::Object(o) if o.contains_key("$ref") => {
                            json!({"allOf": [Json::Object(o)], "description": description})
                        }
                        Json::Object(mut o) => {
                            o.insert("description".into(), json!(description));
                            Json::Object(o)
                        }
                        other => other,
                    };
                }
                properties.insert(field.json_name().to_owned(), schema);
            }
            out.insert(
                name,
                json!({"type": "object", "description": comments.message(&message), "properties": properties}),
            );
        }
        out
    }
}

/// The proto3 JSON forms of the well-known types.
fn well_known(full_name: &str) -> Option<Json> {
    Some(match full_name {
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => {
            json!({"type": "string", "description": "Seconds with an 's' suffix, e.g. \"1.5s\"."})
        }
        "google.protobuf.FieldMask" => json!({"type": "string", "description": "Field paths, comma-separated."}),
        "google.protobuf.Struct" => json!({"type": "object", "additionalProperties": true}),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({"type": "array", "items": {}}),
        "google.protobuf.Empty" => json!({"type": "object"}),
        "google.protobuf.Any" => {
            json!({"type": "object", "properties": {"@type": {"type": "string"}}, "additionalProperties": true})
        }
        "google.protobuf.StringValue" | "google.protobuf.BytesValue" => json!({"type": "string"}),
        "google.protobuf.BoolValue" => json!({"type": "boolean"}),
        "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => json!({"type": "integer"}),
        "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => json!({"type": "string", "format": "int64"}),
        "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => json!({"type": "number"}),
        _ => return None,
    })
}

/// The leading comments of every element, by file and path in its FileDescriptorProto.
struct Comments {
    by_location: BTreeMap<(String, Vec<i32>), String>,
}

impl Comments {
    fn of(pool: &DescriptorPool) -> Self {
        let mut by_location = BTreeMap::new();
        for file in pool.files() {
            collect(&file, &mut by_location);
        }
        Self { by_location }
    }

    fn get(&self, file: &FileDescriptor, path: &[i32]) -> String {
        self.by_location.get(&(file.name().to_owned(), path.to_vec())).cloned().unwrap_or_default()
    }

    fn message(&self, message: &MessageDescriptor) -> String {
        self.get(&message.parent_file(), message.path())
    }

    fn field(&self, field: &FieldDescriptor) -> String {
        self.get(&field.parent_file(), field.path())
    }

    fn method(&self, method: &prost_reflect::MethodDescriptor) -> String {
        self.get(&method.parent_file(), method.path())
    }
}

fn collect(file: &FileDescriptor, out: &mut BTreeMap<(String, Vec<i32>), String>) {
    let Some(info) = &file.file_descriptor_proto().source_code_info else { return };
    for location in &info.location {
        let Some(text) = location.leading_comments.as_deref() else { continue };
        // Proto comments are indented by one space after `//`; paragraphs stay paragraphs.
        let text = text.lines().map(|l| l.strip_prefix(' ').unwrap_or(l)).collect::<Vec<_>>().join("\n");
        let text = text.trim().to_owned();
        if !text.is_empty() {
            out.insert((file.name().to_owned(), location.path.clone()), text);
        }
    }
}
