//! The walker's state machine: given a run as it stands and something that happened to it, the
//! changes to apply — or why the event does not apply. Pure: storage loads and locks the run,
//! asks [`decide`], and writes the answer in the same transaction; no rule of how a run moves
//! lives in SQL.

use std::time::Duration;

use super::run::{
    INTERRUPTION_RETRIES, Review, ReviewAction, ReviewStatus, RunRules, RunStatus, RunStep, StepKind, StepStatus,
    Verdict,
};

/// A run as the state machine needs to see it.
#[derive(Debug, Clone, Copy)]
pub struct RunState<'a> {
    pub status: RunStatus,
    /// Whether the worker the event comes from holds the run's lease (worker events only).
    pub holds_lease: bool,
    pub current_step: i32,
    /// The run's input: the first step's.
    pub input: &'a str,
    pub rules: RunRules,
    pub steps: &'a [RunStep],
}

/// Something that happened to a run.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEventIn<'a> {
    /// A worker holding the lease takes the run's current step. Finding that step RUNNING means
    /// its previous worker was interrupted mid-call (a restart, a crash).
    Take,
    /// The llm step at `index` answered.
    StepSucceeded { index: i32, output: String },
    /// The llm step at `index` failed; `retriable`: whether the rules' retries apply.
    StepFailed { index: i32, error: String, retriable: bool },
    /// A person decided on a review.
    ReviewDecided { review: &'a Review, verdict: Verdict },
    /// A review's deadline passed: its default action applies.
    ReviewExpired { review: &'a Review },
    /// Someone cancelled the run; an empty reason is "cancelled".
    Cancel { reason: String },
}

/// One change to write. Applied in order, each in the run's transaction; the events of a run
/// are written where the list says, so their order is the machine's.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The run leaves QUEUED for RUNNING.
    RunStarted,
    /// An attempt of the step begins: `status`, one more attempt, `input`, no error, started now.
    StepStarted { index: i32, status: StepStatus, input: String },
    /// The step's status and error; `output` when given; `finished` stamps its end.
    SetStep { index: i32, status: StepStatus, output: Option<String>, error: String, finished: bool },
    /// The run's result.
    RunOutput(String),
    /// Appends an event to the run.
    Event { kind: &'static str, step_id: String, detail: String },
    /// The run waits for any worker at step `next`; the lease is released.
    MoveTo { next: i32 },
    /// The run SUCCEEDED with `output`, `current_step` past its last; the lease is released.
    Succeed { current_step: i32, output: String },
    /// The step waits for a review of `text` (deadline and default action from the run's rules);
    /// the run waits too, its lease released, and a `review_requested` event names the review.
    RequestReview { index: i32, step_id: String, text: String },
    /// The run is tried again after `delay`; the lease is released.
    RetryLater { delay: Duration },
    /// The review is decided: `status`, with `edited_output` when a person edited it.
    DecideReview { status: ReviewStatus, edited_output: Option<String> },
    /// The run ends in `status` with `error`: its unfinished steps are SKIPPED, its pending
    /// reviews EXPIRED, its lease released.
    End { status: RunStatus, error: String },
}

/// An llm call for the worker to make after the changes are written.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmCall {
    pub step_index: i32,
    pub step_id: String,
    pub prompt: String,
    pub input: String,
    /// Which attempt this is (1 for the first).
    pub attempts: i32,
}

/// What an event does to a run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Transition {
    pub changes: Vec<Change>,
    /// For [`RunEventIn::Take`] of an llm step: the call to make.
    pub call: Option<LlmCall>,
}

/// Why an event does not apply. Nothing is written for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The run is no longer the worker's: cancelled, ended, waiting, or taken over.
    NotOurs,
    /// The step the event names is not the one running (a late or repeated report).
    StaleStep,
    /// The run has ended already.
    Ended(RunStatus),
    /// The review was decided already.
    ReviewNotPending(ReviewStatus),
}

/// The changes `happened` makes to `run`.
pub fn decide(run: &RunState<'_>, happened: RunEventIn<'_>) -> Result<Transition, Refusal> {
    match happened {
        RunEventIn::Take => take(run),
        RunEventIn::StepSucceeded { index, output } => {
            let step = running_step(run, index)?;
            if run.rules.approval_required {
                return Ok(changes(vec![Change::RequestReview { index, step_id: step.step_id.clone(), text: output }]));
            }
            let mut out = succeed_step(step, output.clone());
            out.extend(advance(run, index + 1, output));
            Ok(changes(out))
        }
        RunEventIn::StepFailed { index, error, retriable } => {
            let step = running_step(run, index)?;
            match run.rules.after_failure(step.attempts).filter(|_| retriable) {
                Some(delay) => Ok(changes(vec![
                    Change::SetStep {
                        index,
                        status: StepStatus::Pending,
                        output: None,
                        error: error.clone(),
                        finished: false,
                    },
                    Change::RetryLater { delay },
                    event("step_retrying", &step.step_id, format!("retry in {} s: {error}", delay.as_secs())),
                ])),
                None => Ok(changes(fail_step(step, &error, format!("step {} failed: {error}", step.step_id)))),
            }
        }
        RunEventIn::ReviewDecided { review, verdict } => verdict_on(run, review, verdict, false),
        RunEventIn::ReviewExpired { review } => {
            let verdict = match review.default_action {
                ReviewAction::Approve => Verdict::Approve { edited_output: None },
                ReviewAction::Reject => Verdict::Reject { reason: "review deadline passed".into() },
            };
            verdict_on(run, review, verdict, true)
        }
        RunEventIn::Cancel { reason } => {
            if run.status.is_final() {
                return Err(Refusal::Ended(run.status));
            }
            let reason = if reason.is_empty() { "cancelled".to_string() } else { reason };
            Ok(changes(end(RunStatus::Cancelled, reason, "run_cancelled")))
        }
    }
}

fn changes(changes: Vec<Change>) -> Transition {
    Transition { changes, call: None }
}

fn event(kind: &'static str, step_id: &str, detail: impl Into<String>) -> Change {
    Change::Event { kind, step_id: step_id.to_string(), detail: detail.into() }
}

fn end(status: RunStatus, error: String, kind: &'static str) -> Vec<Change> {
    vec![Change::End { status, error: error.clone() }, event(kind, "", error)]
}

fn succeed_step(step: &RunStep, output: String) -> Vec<Change> {
    vec![
        Change::SetStep {
            index: step.index,
            status: StepStatus::Succeeded,
            output: Some(output.clone()),
            error: String::new(),
            finished: true,
        },
        event("step_succeeded", &step.step_id, output),
    ]
}

fn fail_step(step: &RunStep, error: &str, why: String) -> Vec<Change> {
    let mut out = vec![
        Change::SetStep {
            index: step.index,
            status: StepStatus::Failed,
            output: None,
            error: error.to_string(),
            finished: true,
        },
        event("step_failed", &step.step_id, error),
    ];
    out.extend(end(RunStatus::Failed, why, "run_failed"));
    out
}

/// Past step `next - 1`, whose output was `last_output`: the next step for any worker, or
/// SUCCEEDED after the last.
fn advance(run: &RunState<'_>, next: i32, last_output: String) -> Vec<Change> {
    if usize::try_from(next).map_or(true, |n| n >= run.steps.len()) {
        return vec![
            Change::Succeed { current_step: next, output: last_output.clone() },
            event("run_succeeded", "", last_output),
        ];
    }
    vec![Change::MoveTo { next }]
}

fn step_at<'a>(run: &RunState<'a>, index: i32) -> Option<&'a RunStep> {
    usize::try_from(index).ok().and_then(|i| run.steps.get(i))
}

/// The step a worker reports on, if the run is still the worker's and that step is running.
fn running_step<'a>(run: &RunState<'a>, index: i32) -> Result<&'a RunStep, Refusal> {
    if !run.holds_lease || run.status != RunStatus::Running {
        return Err(Refusal::NotOurs);
    }
    let step = step_at(run, index).ok_or(Refusal::StaleStep)?;
    if step.status != StepStatus::Running || run.current_step != index {
        return Err(Refusal::StaleStep);
    }
    Ok(step)
}

fn take(run: &RunState<'_>) -> Result<Transition, Refusal> {
    if !run.holds_lease {
        return Err(Refusal::NotOurs);
    }
    let mut out = match run.status {
        RunStatus::Queued => vec![Change::RunStarted, event("run_started", "", "")],
        RunStatus::Running => Vec::new(),
        _ => return Err(Refusal::NotOurs),
    };
    let index = run.current_step;
    let Some(step) = step_at(run, index) else {
        // Every step is done (a worker died between its last step and the end).
        let last = run.steps.last().map(|s| s.output.clone()).unwrap_or_default();
        out.extend(advance(run, index, last));
        return Ok(changes(out));
    };
    let input = match index {
        0 => run.input.to_string(),
        i => step_at(run, i - 1).map(|s| s.output.clone()).unwrap_or_default(),
    };
    match step.status {
        StepStatus::Pending => {}
        StepStatus::Running => {
            // Its worker stopped mid-call. That is not the step's fault: it gets a few attempts
            // beyond the rules' retries.
            let error = "interrupted: the worker running it stopped";
            if step.attempts > run.rules.max_retries + INTERRUPTION_RETRIES {
                out.extend(fail_step(step, error, format!("step {}: {error}", step.step_id)));
                return Ok(changes(out));
            }
            out.push(event("step_retrying", &step.step_id, error));
        }
        StepStatus::Succeeded => {
            out.extend(advance(run, index + 1, step.output.clone()));
            return Ok(changes(out));
        }
        _ => return Err(Refusal::StaleStep),
    }
    let started = |status: StepStatus| {
        [
            Change::StepStarted { index, status, input: input.clone() },
            event("step_started", &step.step_id, format!("attempt {}", step.attempts + 1)),
        ]
    };
    match step.kind {
        StepKind::Llm => {
            out.extend(started(StepStatus::Running));
            let call = LlmCall {
                step_index: index,
                step_id: step.step_id.clone(),
                prompt: step.prompt.clone(),
                input: input.clone(),
                attempts: step.attempts + 1,
            };
            Ok(Transition { changes: out, call: Some(call) })
        }
        StepKind::Output => {
            // The run's result: what reached this step.
            out.extend(started(StepStatus::Running));
            out.push(Change::RunOutput(input.clone()));
            out.extend(succeed_step(step, input.clone()));
            out.extend(advance(run, index + 1, input));
            Ok(changes(out))
        }
        StepKind::Review => {
            let reviewed = step
                .reviews_index
                .and_then(|i| step_at(run, i))
                .map(|s| s.output.clone())
                .unwrap_or_else(|| input.clone());
            out.extend(started(StepStatus::WaitingReview));
            out.push(Change::RequestReview { index, step_id: step.step_id.clone(), text: reviewed });
            Ok(changes(out))
        }
    }
}

fn verdict_on(run: &RunState<'_>, review: &Review, verdict: Verdict, expired: bool) -> Result<Transition, Refusal> {
    if review.status != ReviewStatus::Pending {
        return Err(Refusal::ReviewNotPending(review.status));
    }
    // A pending review belongs to a run that waits (ending a run expires its reviews).
    if run.status.is_final() {
        return Err(Refusal::Ended(run.status));
    }
    let step_id = review.step_id.as_str();
    match verdict {
        Verdict::Approve { edited_output } => {
            let status = if expired { ReviewStatus::Expired } else { ReviewStatus::Approved };
            let (kind, detail) = match (expired, &edited_output) {
                (true, _) => ("review_expired", "approved by default at the deadline"),
                (false, Some(_)) => ("review_approved", "approved with an edited output"),
                (false, None) => ("review_approved", "approved"),
            };
            let text = edited_output.clone().unwrap_or_else(|| review.output.clone());
            let mut out = vec![Change::DecideReview { status, edited_output }, event(kind, step_id, detail)];
            out.push(Change::SetStep {
                index: review.step_index,
                status: StepStatus::Succeeded,
                output: Some(text.clone()),
                error: String::new(),
                finished: true,
            });
            out.push(event("step_succeeded", step_id, text.clone()));
            out.extend(advance(run, review.step_index + 1, text));
            Ok(changes(out))
        }
        Verdict::Reject { reason } => {
            let (status, kind) = if expired {
                (ReviewStatus::Expired, "review_expired")
            } else {
                (ReviewStatus::Rejected, "review_rejected")
            };
            let mut out = vec![
                Change::DecideReview { status, edited_output: None },
                event(kind, step_id, reason.clone()),
                Change::SetStep {
                    index: review.step_index,
                    status: StepStatus::Rejected,
                    output: None,
                    error: reason.clone(),
                    finished: true,
                },
            ];
            out.extend(end(RunStatus::Rejected, reason, "run_rejected"));
            Ok(changes(out))
        }
    }
}

#[cfg(test)]
mod tests;
