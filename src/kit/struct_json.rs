//! `google.protobuf.Struct` <-> JSON objects: how free-form data a request carries (a workflow's
//! `extra_rules`) is stored as JSON and answered again. A Struct's numbers are doubles, so an
//! integer comes back as the same number, and NaN or infinity (which JSON cannot hold) is refused.

use prost_types::value::Kind;
use serde_json::{Map, Number, Value};

/// The JSON object of a Struct; `Err` names the path (below `field`) of a number JSON cannot hold.
pub fn struct_to_json(field: &str, object: &prost_types::Struct) -> Result<Map<String, Value>, (String, String)> {
    object
        .fields
        .iter()
        .map(|(key, value)| Ok((key.clone(), value_to_json(&format!("{field}[{key:?}]"), value)?)))
        .collect()
}

fn value_to_json(path: &str, value: &prost_types::Value) -> Result<Value, (String, String)> {
    Ok(match &value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::NumberValue(n)) => Value::Number(
            Number::from_f64(*n)
                .ok_or_else(|| (path.to_owned(), "must be a finite number (JSON has no NaN or infinity)".to_owned()))?,
        ),
        Some(Kind::StructValue(s)) => Value::Object(struct_to_json(path, s)?),
        Some(Kind::ListValue(list)) => Value::Array(
            list.values
                .iter()
                .enumerate()
                .map(|(i, v)| value_to_json(&format!("{path}[{i}]"), v))
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// The Struct of a JSON object. Numbers become doubles (exact up to 2^53).
pub fn json_to_struct(object: &Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct { fields: object.iter().map(|(k, v)| (k.clone(), json_to_value(v))).collect() }
}

fn json_to_value(value: &Value) -> prost_types::Value {
    let kind = match value {
        Value::Null => Kind::NullValue(prost_types::NullValue::NullValue as i32),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => {
            Kind::ListValue(prost_types::ListValue { values: items.iter().map(json_to_value).collect() })
        }
        Value::Object(object) => Kind::StructValue(json_to_struct(object)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// How deeply `value` nests: 0 for a scalar, 1 for an object or list of scalars, and so on.
pub fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(object) => 1 + object.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Whether any key or string of `value` holds U+0000 (which PostgreSQL's `jsonb` refuses).
pub fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(object) => object.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_struct_round_trips_through_json() {
        let json = serde_json::json!({"a": 1.5, "b": [true, null, "x", {"c": 2.0}], "d": {}});
        let object = json.as_object().unwrap();
        let back = struct_to_json("rules", &json_to_struct(object)).unwrap();
        assert_eq!(Value::Object(back), json);
        assert_eq!(depth(&json), 3);
    }

    #[test]
    fn nan_is_refused_with_its_path() {
        let mut s = json_to_struct(serde_json::json!({"a": [1.0]}).as_object().unwrap());
        let Some(Kind::ListValue(list)) = &mut s.fields.get_mut("a").unwrap().kind else { panic!() };
        list.values[0].kind = Some(Kind::NumberValue(f64::NAN));
        let (path, _) = struct_to_json("extra_rules", &s).unwrap_err();
        assert_eq!(path, "extra_rules[\"a\"][0]");
    }

    #[test]
    fn nul_is_found_in_keys_and_strings() {
        assert!(contains_nul(&serde_json::json!({"a": ["x\u{0}"]})));
        assert!(contains_nul(&serde_json::json!({"k\u{0}": 1})));
        assert!(!contains_nul(&serde_json::json!({"k": "v"})));
    }
}
