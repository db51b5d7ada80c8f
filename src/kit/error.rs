//! The one table from service errors to gRPC statuses.
//!
//! Handlers return [`ServiceError`]; the conversion into [`tonic::Status`] lives here and nowhere
//! else. Internal details are logged and never sent to the caller.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// One bad field of a request, as google.rpc.BadRequest reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The path of the field, e.g. `workflow_config.steps[2].id`.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self { field: field.into(), description: description.into() }
    }
}

/// Every way a request can fail, in terms the caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid request: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A limit that protects the server is reached (the message names it); retry later.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A bug or an unexpected failure: logged in full, answered as INTERNAL without details.
    #[error("internal error: {0:#}")]
    Internal(anyhow::Error),
}

fn describe(violations: &[FieldViolation]) -> String {
    let text = violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; ");
    clip(&text, MAX_MESSAGE_CHARS)
}

/// Bounds on what an error echoes back: a field path or message may quote the caller's input
/// (a map key, an id), and gRPC carries them in headers, which peers cap (16 KiB in h2).
const MAX_FIELD_CHARS: usize = 200;
const MAX_DESCRIPTION_CHARS: usize = 500;
const MAX_MESSAGE_CHARS: usize = 2000;
const MAX_VIOLATIONS: usize = 20;

/// `text` cut to `max` characters, marked when cut.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max).collect();
    out.push('…');
    out
}

pub type ServiceResult<T> = Result<T, ServiceError>;

impl ServiceError {
    /// INVALID_ARGUMENT for a single field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::NotFound(what.into())
    }

    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        Self::Internal(err.into())
    }

    /// The gRPC code this error is answered with.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::Aborted(_) => Code::Aborted,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::Unavailable(_) => Code::Unavailable,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::Internal(_) => Code::Internal,
        }
    }
}

impl From<ServiceError> for Status {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::InvalidArgument(violations) => {
                let mut details = ErrorDetails::new();
                for v in violations.iter().take(MAX_VIOLATIONS) {
                    details.add_bad_request_violation(
                        clip(&v.field, MAX_FIELD_CHARS),
                        clip(&v.description, MAX_DESCRIPTION_CHARS),
                    );
                }
                Status::with_error_details(
                    Code::InvalidArgument,
                    format!("invalid request: {}", describe(&violations)),
                    details,
                )
            }
            ServiceError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "internal error");
                Status::internal("internal error")
            }
            ServiceError::Unavailable(msg) => {
                tracing::warn!(reason = %msg, "dependency unavailable");
                Status::unavailable(clip(&msg, MAX_MESSAGE_CHARS))
            }
            other => Status::new(other.code(), clip(&other.to_string(), MAX_MESSAGE_CHARS)),
        }
    }
}

/// Database failures: an unreachable database is UNAVAILABLE (the caller may retry); anything
/// else is a bug until proven otherwise.
impl From<sqlx::Error> for ServiceError {
    fn from(err: sqlx::Error) -> Self {
        if is_unavailable(&err) {
            return ServiceError::Unavailable(format!("database unavailable: {err}"));
        }
        ServiceError::Internal(err.into())
    }
}

/// Whether a database error means "the database cannot be reached right now".
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // PostgreSQL: class 08 connection exceptions, 57P0x shutdown/cannot connect now,
            // 53xxx insufficient resources. SQLite: 5 BUSY, 6 LOCKED (after busy_timeout).
            code.starts_with("08") || code.starts_with("57P") || code.starts_with("53") || code == "5" || code == "6"
        }
        _ => false,
    }
}

/// Whether a database error is a unique-key violation (a duplicate the database refused).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db.kind() == sqlx::error::ErrorKind::UniqueViolation,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_never_echo_unbounded_input() {
        let huge = "x".repeat(100_000);
        let status: Status =
            ServiceError::InvalidArgument(vec![FieldViolation::new(format!("extra.{huge}"), huge.clone()); 50]).into();
        assert!(status.message().len() <= 2 * MAX_MESSAGE_CHARS + 10);
        let details = status.get_details_bad_request().expect("details");
        assert_eq!(details.field_violations.len(), MAX_VIOLATIONS);
        assert!(details.field_violations[0].field.chars().count() <= MAX_FIELD_CHARS + 1);
        let status: Status = ServiceError::NotFound(huge).into();
        assert!(status.message().chars().count() <= MAX_MESSAGE_CHARS + 1);
    }
}
