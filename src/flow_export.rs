//! What makes a Langflow flow export usable, in one place: workflow-service validates a
//! workflow's `langflow_flow_json` with these rules and agent-service uploads the flow data they
//! answer, so a flow export that one service accepts the other can use.

use serde_json::Value;

/// The largest flow export accepted, in bytes.
pub const MAX_BYTES: usize = 1024 * 1024;

/// Why a flow export cannot be used. Each is a problem of the export itself, permanent until
/// the workflow carrying it is changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowExportError {
    TooLarge,
    NotJson(String),
    NotAnObject,
    DataNotAnObject,
    NoNodes,
    NodeWithoutId(usize),
    EdgesNotAList,
    ContainsNul,
}

impl std::fmt::Display for FlowExportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge => write!(f, "must be at most 1 MiB"),
            Self::NotJson(e) => write!(f, "is not valid JSON: {e}"),
            Self::NotAnObject => write!(f, "must be a Langflow flow export: a JSON object with \"data\""),
            Self::DataNotAnObject => write!(f, "\"data\" must be a JSON object with \"nodes\""),
            Self::NoNodes => {
                write!(f, "has no nodes: \"data.nodes\" must be a non-empty list (a flow needs nodes to run)")
            }
            Self::NodeWithoutId(i) => write!(f, "node {i} of \"data.nodes\" must be an object with a string \"id\""),
            Self::EdgesNotAList => write!(f, "\"data.edges\" must be a list"),
            Self::ContainsNul => write!(f, "must not contain the NUL character (U+0000 or \\u0000)"),
        }
    }
}

impl std::error::Error for FlowExportError {}

/// The flow data (`{"nodes": [...], "edges": [...]}`) of a flow export, given either as
/// Langflow exports it (`{"data": {...}, "name": ...}`) or as the data itself.
pub fn flow_data(export: &str) -> Result<Value, FlowExportError> {
    if export.len() > MAX_BYTES {
        return Err(FlowExportError::TooLarge);
    }
    let value: Value = serde_json::from_str(export).map_err(|e| FlowExportError::NotJson(e.to_string()))?;
    let Value::Object(mut export) = value else { return Err(FlowExportError::NotAnObject) };
    let data = match export.remove("data") {
        Some(data @ Value::Object(_)) => data,
        Some(_) => return Err(FlowExportError::DataNotAnObject),
        None if export.contains_key("nodes") => Value::Object(export),
        None => return Err(FlowExportError::NotAnObject),
    };
    let nodes =
        data.get("nodes").and_then(Value::as_array).filter(|n| !n.is_empty()).ok_or(FlowExportError::NoNodes)?;
    if let Some(i) = nodes.iter().position(|n| !n.get("id").is_some_and(Value::is_string)) {
        return Err(FlowExportError::NodeWithoutId(i));
    }
    if data.get("edges").is_some_and(|e| !e.is_array()) {
        return Err(FlowExportError::EdgesNotAList);
    }
    // Langflow stores what it is sent; a PostgreSQL-backed one refuses NUL as we would.
    if holds_nul(&data) {
        return Err(FlowExportError::ContainsNul);
    }
    Ok(data)
}

/// Whether a string (or an object's key) anywhere in `value` holds U+0000.
pub fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = r#"{"id": "ChatInput-1", "data": {}}"#;

    #[test]
    fn exports_are_accepted_with_or_without_their_envelope() {
        let data = flow_data(&format!(r#"{{"name": "f", "data": {{"nodes": [{NODE}], "edges": []}}}}"#)).unwrap();
        assert_eq!(data["nodes"][0]["id"], "ChatInput-1");
        assert!(flow_data(&format!(r#"{{"nodes": [{NODE}]}}"#)).is_ok());
    }

    #[test]
    fn each_unusable_export_says_why() {
        let cases = [
            ("nope", "not JSON"),
            ("[1]", "not an object"),
            (r#"{"name": "x"}"#, "not an object"),
            (r#"{"data": []}"#, "data not an object"),
            (r#"{"data": {}}"#, "no nodes"),
            (r#"{"data": {"nodes": []}}"#, "no nodes"),
            (r#"{"data": {"nodes": {}}}"#, "no nodes"),
            (r#"{"data": {"nodes": [{"data": {}}]}}"#, "node without id"),
            (r#"{"data": {"nodes": [{"id": "a"}], "edges": {}}}"#, "edges"),
            (r#"{"data": {"nodes": [{"id": "a\u0000"}]}}"#, "nul"),
        ];
        let errors: Vec<FlowExportError> = cases.iter().map(|(export, _)| flow_data(export).unwrap_err()).collect();
        assert!(matches!(errors[0], FlowExportError::NotJson(_)));
        assert_eq!(
            errors[1..],
            [
                FlowExportError::NotAnObject,
                FlowExportError::NotAnObject,
                FlowExportError::DataNotAnObject,
                FlowExportError::NoNodes,
                FlowExportError::NoNodes,
                FlowExportError::NoNodes,
                FlowExportError::NodeWithoutId(0),
                FlowExportError::EdgesNotAList,
                FlowExportError::ContainsNul,
            ]
        );
        assert_eq!(flow_data(&" ".repeat(MAX_BYTES + 1)), Err(FlowExportError::TooLarge));
    }
}
