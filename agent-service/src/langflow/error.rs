//! What can go wrong talking to Langflow, and the gRPC status each answers with.

use engarde::kit::error::ServiceError;
use reqwest::StatusCode;

use crate::domain::execution::FailureKind;

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum LangflowError {
    /// Unreachable, refusing connections, or failing on its side (5xx).
    #[error("Langflow unavailable: {0}")]
    Unavailable(String),
    /// No answer within the deadline.
    #[error("Langflow did not answer in time: {0}")]
    Timeout(String),
    /// The flow does not exist (any more).
    #[error("Langflow flow {0} not found")]
    FlowNotFound(String),
    /// Langflow refused the request (4xx other than 404).
    #[error("Langflow refused the request: {0}")]
    Rejected(String),
    /// An answer that is not what Langflow's API promises.
    #[error("unexpected answer from Langflow: {0}")]
    BadResponse(String),
    /// No Langflow is configured.
    #[error("no Langflow is configured (set LANGFLOW_URL)")]
    NotConfigured,
}

/// At most 300 characters of `text` (with U+0000 replaced, which PostgreSQL cannot store), for
/// error messages that quote what Langflow answered.
pub fn excerpt(text: &str) -> String {
    let mut out: String = text.chars().take(300).map(|c| if c == '\0' { '\u{FFFD}' } else { c }).collect();
    if text.chars().nth(300).is_some() {
        out.push('…');
    }
    out
}

impl LangflowError {
    /// The kind of failure an execution records for this error (the same codes its
    /// `ServiceError` mapping answers).
    pub fn failure_kind(&self) -> FailureKind {
        match ServiceError::from(self.clone()) {
            ServiceError::DeadlineExceeded(_) => FailureKind::DeadlineExceeded,
            ServiceError::FailedPrecondition(_) => FailureKind::FailedPrecondition,
            _ => FailureKind::Unavailable,
        }
    }

    pub fn from_transport(what: &str, err: &reqwest::Error) -> Self {
        if err.is_timeout() {
            Self::Timeout(format!("{what}: {err}"))
        } else if err.is_decode() {
            Self::BadResponse(format!("{what}: {err}"))
        } else {
            Self::Unavailable(format!("{what}: {err}"))
        }
    }

    pub fn from_status(what: &str, status: StatusCode, body: &str) -> Self {
        let detail = format!("{what}: HTTP {status}: {}", excerpt(body));
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            Self::Unavailable(detail)
        } else {
            Self::Rejected(detail)
        }
    }
}

impl From<LangflowError> for ServiceError {
    fn from(err: LangflowError) -> Self {
        match err {
            LangflowError::Unavailable(_) => ServiceError::Unavailable(err.to_string()),
            LangflowError::Timeout(_) => ServiceError::DeadlineExceeded(err.to_string()),
            LangflowError::FlowNotFound(_) | LangflowError::NotConfigured => {
                ServiceError::FailedPrecondition(err.to_string())
            }
            // Langflow refusing what we built, or answering nonsense, is our bug or its: not the
            // caller's. Unavailable lets the caller retry once it is fixed.
            LangflowError::Rejected(_) | LangflowError::BadResponse(_) => ServiceError::Unavailable(err.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn langflow_errors_are_recorded_as_the_failure_kind_of_their_status() {
        assert_eq!(LangflowError::Timeout("t".into()).failure_kind(), FailureKind::DeadlineExceeded);
        assert_eq!(LangflowError::FlowNotFound("f".into()).failure_kind(), FailureKind::FailedPrecondition);
        assert_eq!(LangflowError::BadResponse("b".into()).failure_kind(), FailureKind::Unavailable);
    }
}
