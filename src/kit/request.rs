//! Parsing requests at the edge: ids, field masks, and collecting field violations, so that a
//! handler answers every bad field at once and, past this point, works with valid values.

use uuid::Uuid;

use super::error::{FieldViolation, ServiceError, ServiceResult};

/// Parses a resource id. An id that is not a UUID names nothing, but it is the caller's mistake.
pub fn parse_id(field: &str, id: &str) -> ServiceResult<Uuid> {
    if id.is_empty() {
        return Err(ServiceError::invalid(field, "is required"));
    }
    Uuid::parse_str(id).map_err(|_| ServiceError::invalid(field, "must be a UUID"))
}

/// An id that is part of a request with other fields: its violation is collected with theirs.
pub fn collect_id(field: &str, id: &str, violations: &mut Vec<FieldViolation>) -> Option<Uuid> {
    match parse_id(field, id) {
        Ok(id) => Some(id),
        Err(ServiceError::InvalidArgument(v)) => {
            violations.extend(v);
            None
        }
        Err(_) => None,
    }
}

/// INVALID_ARGUMENT with every violation found, or nothing when there is none.
pub fn invalid_if_any(violations: Vec<FieldViolation>) -> ServiceResult<()> {
    if violations.is_empty() { Ok(()) } else { Err(ServiceError::InvalidArgument(violations)) }
}

/// The fields an update mask names. Unknown paths are added to `violations`, each saying which
/// paths are allowed (`allowed`, e.g. "name, description or configuration"); an empty mask is
/// an error of its own.
pub fn parse_update_mask<F>(
    paths: &[String],
    parse: impl Fn(&str) -> Option<F>,
    allowed: &str,
    violations: &mut Vec<FieldViolation>,
) -> ServiceResult<Vec<F>> {
    if paths.is_empty() {
        return Err(ServiceError::invalid("update_mask", "name at least one field to change"));
    }
    let mut fields = Vec::with_capacity(paths.len());
    for (i, path) in paths.iter().enumerate() {
        match parse(path) {
            Some(field) => fields.push(field),
            None => violations.push(FieldViolation::new(
                format!("update_mask.paths[{i}]"),
                format!("{path:?} cannot be updated; use {allowed}"),
            )),
        }
    }
    Ok(fields)
}

/// Declares a closed set of names stored as lowercase text: the enum, `ALL`, `as_str` and
/// `parse`, with serde in snake_case.
#[macro_export]
macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }
    };
}
