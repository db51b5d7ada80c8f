//! Errors over HTTP/JSON: the Google JSON error model
//! (`{"error": {"code": 404, "message": "...", "status": "NOT_FOUND", "details": [...]}}`), with
//! the HTTP status of each gRPC code as google/rpc/code.proto documents it, in one table.

use http::StatusCode;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage};
use tonic::Code;

/// The HTTP status google/rpc/code.proto gives `code`.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        Code::Aborted => StatusCode::CONFLICT,
        Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
    }
}

/// The name google.rpc.Code gives `code` (the error model's `status`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// One error, ready to answer: its HTTP status and its JSON body.
#[derive(Debug, Clone)]
pub struct JsonError {
    pub http_status: StatusCode,
    pub body: serde_json::Value,
    /// The `Allow` header of a 405.
    pub allow: Option<String>,
}

impl JsonError {
    /// The error model of `status`, its details (google.rpc.Status in grpc-status-details-bin:
    /// BadRequest, ErrorInfo, ...) as proto3 JSON with their `@type`, resolved in `pool`.
    pub fn from_status(status: &tonic::Status, pool: &DescriptorPool) -> Self {
        Self::with_http_status(http_status(status.code()), status, pool)
    }

    /// As [`Self::from_status`], with an HTTP status of the transcoder's own (405, 413, ...)
    /// where the HTTP layer knows better than the code's default.
    pub fn with_http_status(http_status: StatusCode, status: &tonic::Status, pool: &DescriptorPool) -> Self {
        let details = details_json(status.details(), pool);
        let body = serde_json::json!({
            "error": {
                "code": http_status.as_u16(),
                "message": status.message(),
                "status": code_name(status.code()),
                "details": details,
            }
        });
        Self { http_status, body, allow: None }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // A serde_json::Value always serializes.
        serde_json::to_vec(&self.body).unwrap_or_default()
    }
}

/// The `details` of an encoded google.rpc.Status; an empty list when there are none or they do
/// not decode (the code and message still reach the caller).
fn details_json(encoded: &[u8], pool: &DescriptorPool) -> serde_json::Value {
    let empty = serde_json::Value::Array(Vec::new());
    if encoded.is_empty() {
        return empty;
    }
    let Some(descriptor) = pool.get_message_by_name("google.rpc.Status") else {
        return empty;
    };
    let Ok(status) = DynamicMessage::decode(descriptor, encoded) else {
        return empty;
    };
    match serde_json::to_value(&status) {
        Ok(serde_json::Value::Object(mut fields)) => fields.remove("details").unwrap_or(empty),
        _ => {
            // A detail whose type the pool does not know cannot be shown as JSON: leave the
            // details out rather than fail the answer.
            tracing::debug!(bytes = status.encoded_len(), "error details not representable as JSON");
            empty
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_the_documented_http_statuses() {
        let table = [
            (Code::Ok, 200),
            (Code::Cancelled, 499),
            (Code::Unknown, 500),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 400),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Unavailable, 503),
            (Code::DataLoss, 500),
            (Code::Unauthenticated, 401),
        ];
        for (code, http) in table {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
        }
    }

    #[test]
    fn the_error_model_carries_code_status_message_and_details() {
        use tonic_types::{ErrorDetails, StatusExt as _};
        let mut pool = DescriptorPool::new();
        pool.decode_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET).unwrap();
        let status = tonic::Status::with_error_details(
            Code::InvalidArgument,
            "name: required",
            ErrorDetails::with_bad_request_violation("name", "required"),
        );
        let error = JsonError::from_status(&status, &pool);
        assert_eq!(error.http_status, StatusCode::BAD_REQUEST);
        let e = &error.body["error"];
        assert_eq!(e["code"], 400);
        assert_eq!(e["status"], "INVALID_ARGUMENT");
        assert_eq!(e["message"], "name: required");
        assert_eq!(e["details"][0]["@type"], "type.googleapis.com/google.rpc.BadRequest");
        assert_eq!(e["details"][0]["fieldViolations"][0]["field"], "name");
    }
}
