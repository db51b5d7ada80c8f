//! Runs, steps, reviews and events as the walker understands them, and the rules that decide
//! what happens next (retries, review deadlines). No SQL, no gRPC.

use std::time::Duration;

use chrono::{DateTime, Utc};
use engarde::named_enum;
use engarde::proto::workflow::v1 as workflow_pb;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

named_enum!(
    /// The state of a run; see the proto's `RunStatus`.
    RunStatus {
        Queued => "queued",
        Running => "running",
        WaitingReview => "waiting_review",
        Succeeded => "succeeded",
        Failed => "failed",
        Rejected => "rejected",
        Cancelled => "cancelled",
    }
);

impl RunStatus {
    /// Whether the run has ended (nothing changes it any more).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Rejected | Self::Cancelled)
    }
}

named_enum!(
    /// The state of one step of a run.
    StepStatus {
        Pending => "pending",
        Running => "running",
        WaitingReview => "waiting_review",
        Succeeded => "succeeded",
        Failed => "failed",
        Rejected => "rejected",
        Skipped => "skipped",
    }
);

named_enum!(
    /// What a step does.
    StepKind {
        Llm => "llm",
        Review => "review",
        Output => "output",
    }
);

named_enum!(
    /// How a run started.
    RunTrigger {
        Manual => "manual",
        Scheduled => "scheduled",
    }
);

named_enum!(
    /// The state of a review.
    ReviewStatus {
        Pending => "pending",
        Approved => "approved",
        Rejected => "rejected",
        Expired => "expired",
    }
);

named_enum!(
    /// What happens to a review nobody answers before its deadline.
    ReviewAction {
        Approve => "approve",
        Reject => "reject",
    }
);

/// One step of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStep {
    pub index: i32,
    pub step_id: String,
    pub kind: StepKind,
    pub prompt: String,
    /// For review steps: the index of the step whose output is reviewed.
    pub reviews_index: Option<i32>,
    pub status: StepStatus,
    pub input: String,
    pub output: String,
    pub attempts: i32,
    pub error: String,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A run with its steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: Uuid,
    pub tenant_id: String,
    pub agent_id: Uuid,
    pub status: RunStatus,
    pub trigger: RunTrigger,
    pub input: String,
    pub output: String,
    pub error: String,
    pub current_step: i32,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub steps: Vec<RunStep>,
}

/// One event of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEvent {
    pub run_id: Uuid,
    pub sequence: i64,
    pub kind: String,
    pub step_id: String,
    pub detail: String,
    pub created_at: DateTime<Utc>,
}

/// Kinds of events that end a run: a watcher stops after one of them.
pub const FINAL_EVENTS: &[&str] = &["run_succeeded", "run_failed", "run_rejected", "run_cancelled"];

/// A review.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Review {
    pub id: Uuid,
    pub tenant_id: String,
    pub run_id: Uuid,
    pub agent_id: Uuid,
    pub step_index: i32,
    pub step_id: String,
    pub status: ReviewStatus,
    pub output: String,
    pub edited_output: Option<String>,
    pub deadline: DateTime<Utc>,
    pub default_action: ReviewAction,
    pub created_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
}

/// The rules of a run, copied from the agent's snapshot when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRules {
    pub max_retries: i32,
    pub approval_required: bool,
    pub review_timeout_secs: i64,
    pub review_default_action: ReviewAction,
}

/// How many times a step whose worker stopped mid-call (a restart, a crash) is tried again
/// beyond the rules' retries: a rolling deploy never fails a run, while a step that keeps
/// killing its worker still ends.
pub const INTERRUPTION_RETRIES: i32 = 3;

/// Whether a step kind (as the workflow contract encodes it) runs through the flow: an
/// unspecified kind is an llm step (the workflow contract's default). The one place this rule
/// lives.
pub fn is_llm(kind: i32) -> bool {
    matches!(workflow_pb::StepKind::try_from(kind), Ok(workflow_pb::StepKind::Llm | workflow_pb::StepKind::Unspecified))
}

/// A review nobody sets a timeout for still ends: after a day.
pub const DEFAULT_REVIEW_TIMEOUT_SECS: i64 = 24 * 3600;

impl RunRules {
    pub fn of(rules: Option<&workflow_pb::Rules>) -> Self {
        let rules = rules.cloned().unwrap_or_default();
        Self {
            max_retries: rules.max_retries.max(0),
            approval_required: rules.approval_required,
            review_timeout_secs: if rules.review_timeout_seconds > 0 {
                rules.review_timeout_seconds
            } else {
                DEFAULT_REVIEW_TIMEOUT_SECS
            },
            // Unset is REJECT, the safe choice (as the workflow contract says).
            review_default_action: match workflow_pb::ReviewDefaultAction::try_from(rules.review_default_action) {
                Ok(workflow_pb::ReviewDefaultAction::Approve) => ReviewAction::Approve,
                _ => ReviewAction::Reject,
            },
        }
    }

    /// What follows a failed attempt (the `attempts`-th): another after a backoff, or the end.
    pub fn after_failure(&self, attempts: i32) -> Option<Duration> {
        (attempts <= self.max_retries).then(|| backoff(attempts))
    }
}

/// 1 s, 2 s, 4 s, … after the 1st, 2nd, 3rd failed attempt, at most a minute.
pub fn backoff(attempts: i32) -> Duration {
    let exponent = attempts.saturating_sub(1).clamp(0, 6) as u32;
    Duration::from_secs(2u64.pow(exponent)).min(Duration::from_secs(60))
}

/// A step of the plan a run is created with.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedStep {
    pub step_id: String,
    pub kind: StepKind,
    pub prompt: String,
    pub reviews_index: Option<i32>,
}

/// What a run walks: the steps and rules of the agent's pinned snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPlan {
    pub steps: Vec<PlannedStep>,
    pub rules: RunRules,
}

impl RunPlan {
    /// The plan of a workflow's config; `Err` says why it cannot run.
    pub fn of(config: &workflow_pb::WorkflowConfig) -> Result<Self, String> {
        if config.steps.is_empty() {
            return Err("its workflow snapshot has no steps to walk".into());
        }
        let mut steps: Vec<PlannedStep> = Vec::with_capacity(config.steps.len());
        for (i, step) in config.steps.iter().enumerate() {
            let kind = if is_llm(step.kind) {
                StepKind::Llm
            } else {
                match workflow_pb::StepKind::try_from(step.kind) {
                    Ok(workflow_pb::StepKind::Review) => StepKind::Review,
                    Ok(workflow_pb::StepKind::Output) => StepKind::Output,
                    _ => return Err(format!("step {:?} has a kind this service cannot run", step.id)),
                }
            };
            let reviews_index = match kind {
                StepKind::Review if i == 0 => return Err(format!("review step {:?} has no step before it", step.id)),
                StepKind::Review if step.reviews_step.is_empty() => Some(i as i32 - 1),
                StepKind::Review => match steps.iter().position(|s| s.step_id == step.reviews_step) {
                    Some(p) => Some(p as i32),
                    None => {
                        return Err(format!(
                            "review step {:?} reviews an unknown step {:?}",
                            step.id, step.reviews_step
                        ));
                    }
                },
                _ => None,
            };
            steps.push(PlannedStep { step_id: step.id.clone(), kind, prompt: step.prompt.clone(), reviews_index });
        }
        Ok(Self { steps, rules: RunRules::of(config.rules.as_ref()) })
    }

    pub fn has_llm_steps(&self) -> bool {
        self.steps.iter().any(|s| s.kind == StepKind::Llm)
    }
}

/// A run to create.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub id: Uuid,
    pub tenant_id: String,
    pub agent_id: Uuid,
    pub trigger: RunTrigger,
    pub input: String,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub plan: RunPlan,
}

/// StartRun's idempotency key, kept on the run itself.
#[derive(Debug, Clone)]
pub struct RunRequestKey {
    pub request_id: String,
    pub fingerprint: String,
}

/// A page of runs.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub agent_id: Option<Uuid>,
    pub status: Option<RunStatus>,
}

/// A person's decision on a review, naming the run, step and review it is about.
#[derive(Debug, Clone)]
pub struct ReviewDecision {
    pub run_id: Uuid,
    pub step_id: String,
    pub review_id: Uuid,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Continue, with this output instead of the reviewed one when set.
    Approve { edited_output: Option<String> },
    /// End the run REJECTED, for this reason.
    Reject { reason: String },
}

/// Whether a workflow has a trigger the scheduler fires.
pub fn has_scheduled_trigger(config: &workflow_pb::WorkflowConfig) -> bool {
    config.triggers.iter().any(|t| t.r#type == workflow_pb::TriggerType::Scheduled as i32)
}

/// An active agent with scheduled triggers, as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct ScheduledAgent {
    pub tenant_id: String,
    pub agent_id: Uuid,
    /// The workflow it was made from: its triggers fire only while that is ACTIVE.
    pub workflow_id: Uuid,
    /// When the agent last changed (e.g. was activated): ticks before it do not fire.
    pub updated_at: DateTime<Utc>,
    /// The row's version as read: its next tick is written only if it is still the same.
    pub version: i64,
    pub config: workflow_pb::WorkflowConfig,
    /// Whether it has a flow (llm steps need one).
    pub has_flow: bool,
}

/// What a scheduler's claim of a tick did.
#[derive(Debug, Clone, PartialEq)]
pub enum TickOutcome {
    /// Another process (or an earlier pass) claimed it.
    AlreadyClaimed,
    /// Claimed, and no run made: one of the agent's runs was still going.
    SkippedOverlap,
    /// Claimed, and this run made.
    Started(Uuid),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_until_the_rules_say_stop() {
        let rules = RunRules::of(Some(&workflow_pb::Rules { max_retries: 2, ..Default::default() }));
        assert_eq!(rules.after_failure(1), Some(Duration::from_secs(1)));
        assert_eq!(rules.after_failure(2), Some(Duration::from_secs(2)));
        assert_eq!(rules.after_failure(3), None);
        assert_eq!(RunRules::of(None).after_failure(1), None);
    }

    #[test]
    fn unset_review_rules_are_a_day_and_reject() {
        let rules = RunRules::of(None);
        assert_eq!(rules.review_timeout_secs, DEFAULT_REVIEW_TIMEOUT_SECS);
        assert_eq!(rules.review_default_action, ReviewAction::Reject);
    }

    #[test]
    fn a_plan_resolves_what_each_review_step_reviews() {
        let step = |id: &str, kind: workflow_pb::StepKind, reviews: &str| workflow_pb::Step {
            id: id.into(),
            kind: kind as i32,
            reviews_step: reviews.into(),
            ..Default::default()
        };
        let config = workflow_pb::WorkflowConfig {
            steps: vec![
                step("a", workflow_pb::StepKind::Llm, ""),
                step("b", workflow_pb::StepKind::Llm, ""),
                step("check_b", workflow_pb::StepKind::Review, ""),
                step("check_a", workflow_pb::StepKind::Review, "a"),
            ],
            ..Default::default()
        };
        let plan = RunPlan::of(&config).unwrap();
        assert_eq!(plan.steps[2].reviews_index, Some(1));
        assert_eq!(plan.steps[3].reviews_index, Some(0));
        assert!(RunPlan::of(&workflow_pb::WorkflowConfig::default()).is_err());
    }
}
