//! What can go wrong talking to Langflow, and the gRPC status each answers with.

use std::time::Duration;

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
    /// The agent's model cannot be run by this Langflow (its catalog lacks the provider).
    #[error("{0}")]
    ModelNotOffered(String),
    /// The model refused the credential (missing, wrong or revoked key).
    #[error("the model refused its credential: {0}")]
    ModelCredentials(String),
    /// The model's rate limit is reached; `retry_after` is its hint, when it gave one.
    #[error("the model's rate limit is reached{}: {detail}", retry_hint(*.retry_after))]
    ModelRateLimited { detail: String, retry_after: Option<Duration> },
    /// The model failed on its side (5xx) or could not be reached.
    #[error("the model is unavailable: {0}")]
    ModelUnavailable(String),
    /// The model did not answer in time.
    #[error("the model did not answer in time: {0}")]
    ModelTimeout(String),
    /// No Langflow is configured.
    #[error("no Langflow is configured (set LANGFLOW_URL)")]
    NotConfigured,
}

/// The innermost cause of a transport error, in parentheses: reqwest's own message ("error
/// sending request") does not say whether the connection was refused or Langflow's
/// certificate was not trusted.
fn root_cause(err: &reqwest::Error) -> String {
    let mut cause: Option<&dyn std::error::Error> = None;
    let mut next = std::error::Error::source(err);
    while let Some(source) = next {
        cause = Some(source);
        next = source.source();
    }
    cause.map(|c| format!(" ({c})")).unwrap_or_default()
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
            ServiceError::ResourceExhausted(_) => FailureKind::ResourceExhausted,
            _ => FailureKind::Unavailable,
        }
    }

    pub fn from_transport(what: &str, err: &reqwest::Error) -> Self {
        if err.is_timeout() {
            Self::Timeout(format!("{what}: {err}"))
        } else if err.is_decode() {
            Self::BadResponse(format!("{what}: {err}"))
        } else {
            Self::Unavailable(format!("{what}: {err}{}", root_cause(err)))
        }
    }

    /// A flow that failed while it ran, from what Langflow said about it (an `error` event of a
    /// streamed run, or the body of a failed run): a model's fault when the text shows one (see
    /// [`model_fault`]), else the flow's own failure.
    pub fn flow_failed(text: &str) -> Self {
        model_fault(text).unwrap_or_else(|| Self::Rejected(format!("the flow failed: {}", excerpt(&redact(text)))))
    }

    pub fn from_status(what: &str, status: StatusCode, body: &str) -> Self {
        // A run whose graph failed is answered 500 with the failure in its body.
        if body.contains("Error running graph") || body.contains("Error building Component") {
            return Self::flow_failed(body);
        }
        let detail = format!("{what}: HTTP {status}: {}", excerpt(body));
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            Self::Unavailable(detail)
        } else {
            Self::Rejected(detail)
        }
    }
}

fn retry_hint(retry_after: Option<Duration>) -> String {
    match retry_after {
        Some(d) if d.subsec_millis() == 0 => format!(" (retry after {} s)", d.as_secs()),
        Some(d) => format!(" (retry after {} ms)", d.as_millis()),
        None => String::new(),
    }
}

/// The model's fault in what Langflow said of a failed run, if it shows one. Langflow 1.13
/// wraps the provider client's exception: its text carries the HTTP status the model answered
/// (`Error code: 429 - {...}`) or the exception's class (`AuthenticationError`,
/// `APIConnectionError`, `APITimeoutError`, …).
pub fn model_fault(text: &str) -> Option<LangflowError> {
    let detail = || model_message(text);
    let status = http_status(text);
    let has = |needle: &str| text.contains(needle);
    if matches!(status, Some(401 | 403))
        || has("AuthenticationError")
        || has("PermissionDeniedError")
        || has("Missing credentials")
        || has("Incorrect API key")
        || has("invalid_api_key")
    {
        return Some(LangflowError::ModelCredentials(detail()));
    }
    if status == Some(429) || has("RateLimitError") {
        return Some(LangflowError::ModelRateLimited { detail: detail(), retry_after: retry_after(text) });
    }
    if has("APITimeoutError") || has("Request timed out") || has("ReadTimeout") {
        return Some(LangflowError::ModelTimeout(detail()));
    }
    if status.is_some_and(|s| (500..600).contains(&s))
        || has("InternalServerError")
        || has("APIConnectionError")
        || has("Connection error")
        || has("ConnectError")
    {
        return Some(LangflowError::ModelUnavailable(detail()));
    }
    None
}

/// The status after "Error code: " in a provider client's exception text.
fn http_status(text: &str) -> Option<u16> {
    let at = text.find("Error code: ")? + "Error code: ".len();
    text.get(at..at + 3)?.parse().ok()
}

/// The model's own message, when the text quotes one (`'message': '…'`), else an excerpt of the
/// text; with anything that looks like a key removed.
fn model_message(text: &str) -> String {
    let quoted = ["'message': '", "\"message\": \""].iter().find_map(|open| {
        let start = text.find(open)? + open.len();
        let close = if open.starts_with('\'') { '\'' } else { '"' };
        let end = text[start..].find(close)?;
        Some(&text[start..start + end])
    });
    let status = http_status(text).map(|s| format!("HTTP {s}: ")).unwrap_or_default();
    excerpt(&redact(&format!("{status}{}", quoted.unwrap_or(text))))
}

/// The retry hint of a rate limit's message ("Please try again in 7s", "in 1.5s", "in 120ms").
fn retry_after(text: &str) -> Option<Duration> {
    let at = text.find("try again in ")? + "try again in ".len();
    let rest = &text[at..];
    let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    let amount: f64 = rest[..digits].parse().ok()?;
    let unit = &rest[digits..];
    let seconds = if unit.starts_with("ms") {
        amount / 1000.0
    } else if unit.starts_with('s') {
        amount
    } else if unit.starts_with('m') {
        amount * 60.0
    } else {
        return None;
    };
    (0.0..86_400.0).contains(&seconds).then(|| Duration::from_secs_f64(seconds))
}

/// `text` with what looks like a secret replaced: provider keys (`sk-…`, `sk-ant-…`), bearer
/// tokens. Model errors may quote part of the key they were given; none of it is kept.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let next = ["sk-", "Bearer "].iter().filter_map(|m| rest.find(m).map(|at| (at, *m))).min();
        let Some((at, marker)) = next else { break };
        out.push_str(&rest[..at]);
        let tail = &rest[at + marker.len()..];
        let secret = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '*' | '.')))
            .unwrap_or(tail.len());
        // A marker inside a word ("task-sk-1") is no key.
        let starts_word = !rest[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
        if secret >= 4 && starts_word {
            out.push_str(marker);
            out.push_str("[redacted]");
        } else {
            out.push_str(&rest[at..at + marker.len() + secret]);
        }
        rest = &tail[secret..];
    }
    out.push_str(rest);
    out
}

impl From<LangflowError> for ServiceError {
    fn from(err: LangflowError) -> Self {
        match err {
            LangflowError::Unavailable(_) => ServiceError::Unavailable(err.to_string()),
            LangflowError::Timeout(_) => ServiceError::DeadlineExceeded(err.to_string()),
            LangflowError::FlowNotFound(_)
            | LangflowError::NotConfigured
            | LangflowError::ModelNotOffered(_)
            | LangflowError::ModelCredentials(_) => ServiceError::FailedPrecondition(err.to_string()),
            LangflowError::ModelRateLimited { .. } => ServiceError::ResourceExhausted(err.to_string()),
            LangflowError::ModelUnavailable(_) => ServiceError::Unavailable(err.to_string()),
            LangflowError::ModelTimeout(_) => ServiceError::DeadlineExceeded(err.to_string()),
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
        let limited = LangflowError::ModelRateLimited { detail: "d".into(), retry_after: None };
        assert_eq!(limited.failure_kind(), FailureKind::ResourceExhausted);
    }

    /// What Langflow 1.13 answered, around the OpenAI client's exceptions.
    fn langflow_said(inner: &str) -> String {
        format!(
            r#"{{"detail":"{{\"message\":\"Error running graph: Error building Component OpenAI: \\n\\n{inner}\",\"traceback\":null}}"}}"#
        )
    }

    #[test]
    fn model_faults_are_told_apart() {
        let said = langflow_said(
            "Error code: 429 - {'error': {'message': 'Rate limit reached. Please try again in 7s.', 'type': 'requests'}}",
        );
        let LangflowError::ModelRateLimited { detail, retry_after } =
            LangflowError::from_status("run", StatusCode::INTERNAL_SERVER_ERROR, &said)
        else {
            panic!("{said}")
        };
        assert_eq!(retry_after, Some(Duration::from_secs(7)));
        assert_eq!(detail, "HTTP 429: Rate limit reached. Please try again in 7s.");
        let e = LangflowError::flow_failed(&said);
        assert_eq!(ServiceError::from(e.clone()).code(), tonic::Code::ResourceExhausted);
        assert!(e.to_string().contains("(retry after 7 s)"), "{e}");

        let unauthorized =
            langflow_said("Error code: 401 - {'error': {'message': 'Incorrect API key provided: sk-abc****wxyz'}}");
        let e = LangflowError::flow_failed(&unauthorized);
        assert!(matches!(e, LangflowError::ModelCredentials(_)), "{e:?}");
        assert!(!e.to_string().contains("abc"), "{e}");
        let missing = langflow_said("Missing credentials. Please pass an `api_key`");
        assert!(matches!(LangflowError::flow_failed(&missing), LangflowError::ModelCredentials(_)));
        let down = langflow_said("Error code: 503 - {'error': {'message': 'overloaded'}}");
        assert!(matches!(LangflowError::flow_failed(&down), LangflowError::ModelUnavailable(_)));
        let unreachable = langflow_said("Connection error.");
        assert!(matches!(LangflowError::flow_failed(&unreachable), LangflowError::ModelUnavailable(_)));
        let slow = langflow_said("Request timed out.");
        assert!(matches!(LangflowError::flow_failed(&slow), LangflowError::ModelTimeout(_)));
        let other = langflow_said("division by zero");
        assert!(matches!(LangflowError::flow_failed(&other), LangflowError::Rejected(_)));
        // Not a run's failure: the status decides, as before.
        assert!(matches!(
            LangflowError::from_status("run", StatusCode::BAD_GATEWAY, "upstream"),
            LangflowError::Unavailable(_)
        ));
    }

    #[test]
    fn retry_hints_and_secrets() {
        assert_eq!(retry_after("Please try again in 1.5s."), Some(Duration::from_millis(1500)));
        assert_eq!(retry_after("try again in 120ms"), Some(Duration::from_millis(120)));
        assert_eq!(retry_after("try again in 2m"), Some(Duration::from_secs(120)));
        assert_eq!(retry_after("try again later"), None);
        assert_eq!(
            redact("key sk-live-0123456789 and Bearer abc.def-ghi, ok"),
            "key sk-[redacted] and Bearer [redacted], ok"
        );
        assert_eq!(redact("task-sk-1 is fine"), "task-sk-1 is fine");
    }
}
