//! Executions, conversation memory and feedback as the service understands them, and the checks
//! of their inputs. Nothing here knows about gRPC or SQL.

use chrono::{DateTime, Utc};
use engarde::kit::error::{FieldViolation, ServiceError};
use engarde::named_enum;
use engarde::proto::workflow::v1 as workflow_pb;
use uuid::Uuid;

use super::WorkflowSnapshot;
use super::run::is_llm;

/// The longest input an execution takes, in characters.
pub const MAX_INPUT_CHARS: usize = 32_000;
/// The longest session id, in characters.
pub const MAX_SESSION_ID_CHARS: usize = 128;
/// The longest feedback comment, in characters.
pub const MAX_COMMENT_CHARS: usize = 2_000;

named_enum!(
    /// Where an execution is.
    ExecutionStatus {
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
    }
);

named_enum!(
    /// Why a failed execution failed, as the gRPC code it is answered with.
    FailureKind {
        Unavailable => "unavailable",
        DeadlineExceeded => "deadline_exceeded",
        FailedPrecondition => "failed_precondition",
        ResourceExhausted => "resource_exhausted",
    }
);

named_enum!(
    /// Who said a message of a conversation.
    MessageRole {
        User => "user",
        Agent => "agent",
    }
);

impl FailureKind {
    /// The error a failed execution is answered with; its message names the execution.
    pub fn error(self, execution_id: Uuid, error: &str) -> ServiceError {
        let message = format!("execution {execution_id} failed: {error}");
        match self {
            Self::Unavailable => ServiceError::Unavailable(message),
            Self::DeadlineExceeded => ServiceError::DeadlineExceeded(message),
            Self::FailedPrecondition => ServiceError::FailedPrecondition(message),
            Self::ResourceExhausted => ServiceError::ResourceExhausted(message),
        }
    }
}

/// The tokens a model reported for one execution (or, summed, for an agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct TokenUsage {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

/// One run of an agent's flow.
#[derive(Debug, Clone, PartialEq)]
pub struct Execution {
    pub id: Uuid,
    pub tenant_id: String,
    pub agent_id: Uuid,
    pub session_id: String,
    pub step_id: String,
    pub input: String,
    /// Empty unless succeeded.
    pub output: String,
    pub status: ExecutionStatus,
    /// Empty unless failed.
    pub error: String,
    /// Set when failed.
    pub failure: Option<FailureKind>,
    pub latency_ms: f64,
    /// The tokens the model reported, when it reported any.
    pub usage: Option<TokenUsage>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl Execution {
    /// The answer of a finished execution: itself when it succeeded, else its error. A running
    /// one (a retry of a request still being worked on) is ABORTED.
    pub fn into_answer(self) -> Result<Self, ServiceError> {
        match (self.status, self.failure) {
            (ExecutionStatus::Succeeded, _) => Ok(self),
            (ExecutionStatus::Running, _) => {
                Err(ServiceError::Aborted(format!("execution {} is still running; retry", self.id)))
            }
            (ExecutionStatus::Failed, kind) => {
                Err(kind.unwrap_or(FailureKind::Unavailable).error(self.id, &self.error))
            }
        }
    }
}

/// A new execution, before it is stored.
#[derive(Debug, Clone)]
pub struct NewExecution {
    pub id: Uuid,
    pub tenant_id: String,
    pub agent_id: Uuid,
    pub session_id: String,
    pub step_id: String,
    pub input: String,
    pub started_at: DateTime<Utc>,
    /// The request id and fingerprint it was started with, if any.
    pub request: Option<engarde::kit::idempotency::IdempotencyKey>,
    /// Where to report its outcome: the agent's source workflow, if any.
    pub report_workflow_id: Option<Uuid>,
}

impl NewExecution {
    /// It, as stored: running.
    pub fn running(&self) -> Execution {
        Execution {
            id: self.id,
            tenant_id: self.tenant_id.clone(),
            agent_id: self.agent_id,
            session_id: self.session_id.clone(),
            step_id: self.step_id.clone(),
            input: self.input.clone(),
            output: String::new(),
            status: ExecutionStatus::Running,
            error: String::new(),
            failure: None,
            latency_ms: 0.0,
            usage: None,
            started_at: self.started_at,
            finished_at: None,
        }
    }
}

/// How an execution ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded { output: String, usage: Option<TokenUsage> },
    Failed { kind: FailureKind, error: String },
}

/// What finishing an execution records, in one transaction.
#[derive(Debug, Clone)]
pub struct Finish {
    pub execution_id: Uuid,
    pub outcome: Outcome,
    pub latency_ms: f64,
    pub finished_at: DateTime<Utc>,
    /// Set when Langflow said the agent's flow is gone: the agent moves to ERROR, unless it has
    /// been linked to another flow meanwhile.
    pub flow_gone: Option<String>,
    /// Set when the execution was never stored RUNNING (its run ended before its RUNNING row
    /// was due): the finish stores it, finished, in the same statement or transaction.
    pub unstored: Option<Box<NewExecution>>,
}

impl Finish {
    /// What this finish writes: the execution's columns, whether it counts as a success, and
    /// what the session remembers.
    pub fn bookkeeping(&self) -> Bookkeeping<'_> {
        match &self.outcome {
            Outcome::Succeeded { output, usage } => Bookkeeping {
                status: ExecutionStatus::Succeeded,
                output,
                error: "",
                failure: None,
                succeeded: true,
                remember: Some(output),
                usage: *usage,
            },
            Outcome::Failed { kind, error } => Bookkeeping {
                status: ExecutionStatus::Failed,
                output: "",
                error,
                failure: Some(*kind),
                succeeded: false,
                remember: None,
                usage: None,
            },
        }
    }
}

/// What finishing an execution writes, decided from how it ended (see [`Finish::bookkeeping`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Bookkeeping<'a> {
    pub status: ExecutionStatus,
    pub output: &'a str,
    pub error: &'a str,
    pub failure: Option<FailureKind>,
    /// Whether it counts as successful, in the agent's statistics and in the report to
    /// workflow-service.
    pub succeeded: bool,
    /// The agent's answer the session remembers (after the input): successes only, so that a
    /// failed call leaves no half conversation.
    pub remember: Option<&'a str>,
    /// The tokens the model reported.
    pub usage: Option<TokenUsage>,
}

impl Bookkeeping<'_> {
    /// The stored error code: the failure kind's name, empty on success.
    pub fn error_code(&self) -> &'static str {
        self.failure.map_or("", FailureKind::as_str)
    }
}

/// An agent's execution statistics.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ExecutionStats {
    pub total: i64,
    pub successful: i64,
    pub average_response_time_ms: f64,
}

impl ExecutionStats {
    /// The statistics after one more finished execution: counted, and its latency folded into
    /// the running mean (so no history of latencies is kept).
    pub fn record(self, succeeded: bool, latency_ms: f64) -> Self {
        let total = self.total + 1;
        Self {
            total,
            successful: self.successful + i64::from(succeeded),
            average_response_time_ms: (self.average_response_time_ms * self.total as f64 + latency_ms) / total as f64,
        }
    }
}

/// Finished executions of one agent, summed: what they add to its statistics together (a group
/// of finishes committed at once updates the agent's row once, with this).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Tally {
    pub count: i64,
    pub successful: i64,
    pub latency_sum_ms: f64,
    pub usage: TokenUsage,
}

impl Tally {
    /// Counts one more finished execution, as recorded.
    pub fn add(&mut self, execution: &Execution) {
        self.count += 1;
        self.successful += i64::from(execution.status == ExecutionStatus::Succeeded);
        self.latency_sum_ms += execution.latency_ms;
        if let Some(usage) = execution.usage {
            self.usage.prompt_tokens += usage.prompt_tokens;
            self.usage.completion_tokens += usage.completion_tokens;
        }
    }
}

impl ExecutionStats {
    /// The statistics after the executions of `tally`: the same as [`Self::record`] of each in
    /// turn, as the mean of `total` latencies and `count` more is weighted by their counts
    /// (`(mean·total + sum) / (total + count)`).
    pub fn record_tally(self, tally: &Tally) -> Self {
        if tally.count == 0 {
            return self;
        }
        let total = self.total + tally.count;
        Self {
            total,
            successful: self.successful + tally.successful,
            average_response_time_ms: (self.average_response_time_ms * self.total as f64 + tally.latency_sum_ms)
                / total as f64,
        }
    }
}

impl Execution {
    /// The running execution as `finish` records it.
    pub fn finished(mut self, finish: &Finish) -> Self {
        let book = finish.bookkeeping();
        self.status = book.status;
        self.output = book.output.to_owned();
        self.error = book.error.to_owned();
        self.failure = book.failure;
        self.latency_ms = finish.latency_ms;
        self.usage = book.usage;
        self.finished_at = Some(finish.finished_at);
        self
    }
}

/// The outcome of recording a finish.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The execution as recorded.
    pub execution: Execution,
    /// Whether a report to workflow-service was queued.
    pub reported: bool,
}

/// A filter of ListExecutions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecutionFilter {
    pub agent_id: Option<Uuid>,
    pub session_id: Option<String>,
    pub status: Option<ExecutionStatus>,
}

impl ExecutionFilter {
    /// The parts a page token is bound to.
    pub fn fingerprint_parts(&self) -> [String; 3] {
        [
            self.agent_id.map(|id| id.to_string()).unwrap_or_default(),
            self.session_id.clone().unwrap_or_default(),
            self.status.map(|s| s.as_str()).unwrap_or("").to_owned(),
        ]
    }
}

/// A conversation of an agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub session_id: String,
    pub message_count: i64,
    pub last_message_at: DateTime<Utc>,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionMessage {
    pub sequence: i64,
    pub role: MessageRole,
    pub text: String,
    pub execution_id: Uuid,
    pub created_at: DateTime<Utc>,
}

/// A score given to an execution.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Feedback {
    pub id: Uuid,
    pub execution_id: Uuid,
    pub agent_id: Uuid,
    pub score: i32,
    pub comment: String,
    pub created_at: DateTime<Utc>,
}

/// A report of a finished execution to workflow-service, from the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub execution_id: Uuid,
    pub tenant_id: String,
    pub workflow_id: Uuid,
    pub succeeded: bool,
    /// Failed deliveries so far.
    pub attempts: i32,
}

/// Checks an execution's input.
pub fn check_input(field: &str, input: &str, violations: &mut Vec<FieldViolation>) {
    let chars = input.chars().count();
    if input.trim().is_empty() {
        violations.push(FieldViolation::new(field, "is required"));
    } else if chars > MAX_INPUT_CHARS {
        violations.push(FieldViolation::new(field, format!("must be at most {MAX_INPUT_CHARS} characters")));
    }
}

/// Whether `id` is a valid session id: 1-128 letters, digits, '-', '_', '.'.
pub fn valid_session_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_SESSION_ID_CHARS
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Checks a session id that must be given.
pub fn check_session_id(field: &str, id: &str, violations: &mut Vec<FieldViolation>) {
    if id.is_empty() {
        violations.push(FieldViolation::new(field, "is required"));
    } else if !valid_session_id(id) {
        violations.push(FieldViolation::new(
            field,
            format!("must be 1-{MAX_SESSION_ID_CHARS} letters, digits, '-', '_' or '.'"),
        ));
    }
}

/// The session id Langflow gets: its sessions are global, so the agent's id keeps agents (and
/// so tenants) apart.
pub fn langflow_session_id(agent_id: Uuid, session_id: &str) -> String {
    format!("{agent_id}:{session_id}")
}

/// The step an execution runs: `(step id, prompt)`. An empty `step_id` means the snapshot's
/// first llm step; an agent without a snapshot (or without llm steps) runs with an empty prompt.
pub fn pick_step(snapshot: Option<&WorkflowSnapshot>, step_id: &str) -> Result<(String, String), ServiceError> {
    let steps = snapshot.map(|s| s.config.steps.as_slice()).unwrap_or_default();
    let llm = |s: &&workflow_pb::Step| is_llm(s.kind);
    if step_id.is_empty() {
        return Ok(steps.iter().find(llm).map(|s| (s.id.clone(), s.prompt.clone())).unwrap_or_default());
    }
    match steps.iter().find(|s| s.id == step_id) {
        Some(step) if llm(&step) => Ok((step.id.clone(), step.prompt.clone())),
        Some(_) => Err(ServiceError::invalid("step_id", format!("step {step_id:?} is not an llm step"))),
        None => Err(ServiceError::invalid("step_id", format!("the agent's workflow has no step {step_id:?}"))),
    }
}

/// Checks a feedback score and comment.
pub fn check_feedback(score: i32, comment: &str, violations: &mut Vec<FieldViolation>) {
    if !(1..=5).contains(&score) {
        violations.push(FieldViolation::new("score", "must be 1 to 5"));
    }
    if comment.chars().count() > MAX_COMMENT_CHARS {
        violations.push(FieldViolation::new("comment", format!("must be at most {MAX_COMMENT_CHARS} characters")));
    }
}

/// The wait before retrying a report that failed `attempts` times: 1 s, doubling, at most 60 s.
pub fn report_backoff(attempts: i32) -> std::time::Duration {
    let exponent = attempts.clamp(1, 7) as u32 - 1;
    std::time::Duration::from_secs((1u64 << exponent).min(60))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::WorkflowCategory;

    fn snapshot() -> WorkflowSnapshot {
        let step = |id: &str, kind: workflow_pb::StepKind, prompt: &str| workflow_pb::Step {
            id: id.into(),
            kind: kind as i32,
            prompt: prompt.into(),
            ..Default::default()
        };
        WorkflowSnapshot {
            workflow_id: Uuid::now_v7(),
            workflow_version: 1,
            workflow_name: "w".into(),
            category: WorkflowCategory::ContentGeneration,
            config: workflow_pb::WorkflowConfig {
                steps: vec![
                    step("review", workflow_pb::StepKind::Review, ""),
                    step("write", workflow_pb::StepKind::Unspecified, "Write {input}"),
                    step("polish", workflow_pb::StepKind::Llm, "Polish {input}"),
                ],
                ..Default::default()
            },
        }
    }

    #[test]
    fn the_step_is_the_first_llm_one_unless_named() {
        let s = snapshot();
        assert_eq!(pick_step(Some(&s), "").unwrap(), ("write".into(), "Write {input}".into()));
        assert_eq!(pick_step(Some(&s), "polish").unwrap(), ("polish".into(), "Polish {input}".into()));
        assert_eq!(pick_step(None, "").unwrap(), (String::new(), String::new()));
        for bad in ["review", "nope"] {
            let err = pick_step(Some(&s), bad).unwrap_err();
            assert!(matches!(err, ServiceError::InvalidArgument(ref v) if v[0].field == "step_id"), "{bad}");
        }
        assert!(pick_step(None, "write").is_err());
    }

    #[test]
    fn inputs_and_session_ids_are_checked() {
        let mut v = Vec::new();
        check_input("input", "hello", &mut v);
        check_session_id("session_id", "a-b_c.1", &mut v);
        assert!(v.is_empty());
        check_input("input", " ", &mut v);
        check_input("input", &"x".repeat(MAX_INPUT_CHARS + 1), &mut v);
        check_session_id("session_id", "a b", &mut v);
        check_session_id("session_id", &"s".repeat(129), &mut v);
        check_session_id("session_id", "", &mut v);
        assert_eq!(v.len(), 5);
        assert!(valid_session_id(&"s".repeat(128)));
    }

    #[test]
    fn failures_answer_their_codes_naming_the_execution() {
        let id = Uuid::now_v7();
        let err = FailureKind::DeadlineExceeded.error(id, "slow");
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
        assert!(err.to_string().contains(&id.to_string()));
    }

    fn finish(outcome: Outcome) -> Finish {
        Finish {
            execution_id: Uuid::nil(),
            outcome,
            latency_ms: 30.0,
            finished_at: Utc::now(),
            flow_gone: None,
            unstored: None,
        }
    }

    #[test]
    fn a_success_is_counted_remembered_and_recorded_with_its_output() {
        let usage = TokenUsage { prompt_tokens: 11, completion_tokens: 9 };
        let done = finish(Outcome::Succeeded { output: "hi".into(), usage: Some(usage) });
        let book = done.bookkeeping();
        assert_eq!(book.usage, Some(usage));
        assert_eq!(book.status, ExecutionStatus::Succeeded);
        assert_eq!((book.output, book.error, book.error_code()), ("hi", "", ""));
        assert!(book.succeeded);
        assert_eq!(book.remember, Some("hi"));
    }

    #[test]
    fn a_failure_is_counted_unsuccessful_recorded_with_its_code_and_not_remembered() {
        for kind in [
            FailureKind::Unavailable,
            FailureKind::DeadlineExceeded,
            FailureKind::FailedPrecondition,
            FailureKind::ResourceExhausted,
        ] {
            let done = finish(Outcome::Failed { kind, error: "boom".into() });
            let book = done.bookkeeping();
            assert_eq!(book.status, ExecutionStatus::Failed);
            assert_eq!((book.output, book.error, book.error_code()), ("", "boom", kind.as_str()));
            assert_eq!(book.failure, Some(kind));
            assert!(!book.succeeded);
            assert_eq!(book.remember, None);
        }
    }

    #[test]
    fn statistics_count_every_finish_and_keep_a_running_mean_of_latency() {
        let stats = ExecutionStats::default().record(true, 30.0);
        assert_eq!(stats, ExecutionStats { total: 1, successful: 1, average_response_time_ms: 30.0 });
        let stats = stats.record(false, 60.0);
        assert_eq!(stats, ExecutionStats { total: 2, successful: 1, average_response_time_ms: 45.0 });
        let stats = stats.record(true, 0.0);
        assert_eq!(stats, ExecutionStats { total: 3, successful: 2, average_response_time_ms: 30.0 });
    }

    /// An execution of `agent` finished with `latency_ms` (succeeded or not).
    fn finished(latency_ms: f64, succeeded: bool) -> Execution {
        let mut e = NewExecution {
            id: Uuid::now_v7(),
            tenant_id: "t1".into(),
            agent_id: Uuid::nil(),
            session_id: "s".into(),
            step_id: "a".into(),
            input: "in".into(),
            started_at: Utc::now(),
            request: None,
            report_workflow_id: None,
        }
        .running();
        e.status = if succeeded { ExecutionStatus::Succeeded } else { ExecutionStatus::Failed };
        e.latency_ms = latency_ms;
        e.usage = succeeded.then_some(TokenUsage { prompt_tokens: 3, completion_tokens: 2 });
        e
    }

    #[test]
    fn a_tally_of_a_batch_gives_the_statistics_of_recording_its_executions_one_by_one() {
        // Uneven latencies, failures among them, on top of statistics that already count some.
        let before = ExecutionStats { total: 1_000_003, successful: 999_000, average_response_time_ms: 12.345_678 };
        let latencies = [0.213, 3.5, 1_234.5, 0.0, 17.25, 99.999, 0.001, 42.0, 7.77, 500.5, 2.0];
        let mut one_by_one = before;
        let mut tally = Tally::default();
        for (n, latency) in latencies.iter().enumerate() {
            let succeeded = n % 3 != 0;
            one_by_one = one_by_one.record(succeeded, *latency);
            tally.add(&finished(*latency, succeeded));
        }
        let together = before.record_tally(&tally);
        assert_eq!((together.total, together.successful), (one_by_one.total, one_by_one.successful));
        let (a, b) = (together.average_response_time_ms, one_by_one.average_response_time_ms);
        assert!((a - b).abs() <= 1e-9 * b, "{a} vs {b}");
        let succeeded = latencies.iter().enumerate().filter(|(n, _)| n % 3 != 0).count() as i64;
        assert_eq!(tally.usage, TokenUsage { prompt_tokens: 3 * succeeded, completion_tokens: 2 * succeeded });
        // From nothing, the batch's mean is the plain mean of its latencies.
        let fresh = ExecutionStats::default().record_tally(&tally);
        let mean = latencies.iter().sum::<f64>() / latencies.len() as f64;
        assert!((fresh.average_response_time_ms - mean).abs() <= 1e-12 * mean);
        // An empty tally changes nothing.
        assert_eq!(before.record_tally(&Tally::default()), before);
    }

    #[test]
    fn a_finished_execution_carries_what_the_finish_recorded() {
        let new = NewExecution {
            id: Uuid::nil(),
            tenant_id: "t1".into(),
            agent_id: Uuid::nil(),
            session_id: "s".into(),
            step_id: "a".into(),
            input: "in".into(),
            request: None,
            started_at: Utc::now(),
            report_workflow_id: None,
        };
        let done = finish(Outcome::Failed { kind: FailureKind::Unavailable, error: "down".into() });
        let execution = new.running().finished(&done);
        assert_eq!(execution.status, ExecutionStatus::Failed);
        assert_eq!(execution.failure, Some(FailureKind::Unavailable));
        assert_eq!(execution.error, "down");
        assert_eq!(execution.latency_ms, 30.0);
        assert_eq!(execution.finished_at, Some(done.finished_at));
    }

    #[test]
    fn report_backoff_doubles_up_to_a_minute() {
        let secs: Vec<u64> = (1..=9).map(|a| report_backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(report_backoff(0).as_secs(), 1);
    }
}
