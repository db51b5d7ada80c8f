//! Every (run status, event) pair, the illegal ones included, and each step rule.

use std::time::Duration;

use chrono::Utc;
use uuid::Uuid;

use super::*;

const ALL_STATUSES: [RunStatus; 7] = [
    RunStatus::Queued,
    RunStatus::Running,
    RunStatus::WaitingReview,
    RunStatus::Succeeded,
    RunStatus::Failed,
    RunStatus::Rejected,
    RunStatus::Cancelled,
];

const ALL_STEP_STATUSES: [StepStatus; 7] = [
    StepStatus::Pending,
    StepStatus::Running,
    StepStatus::WaitingReview,
    StepStatus::Succeeded,
    StepStatus::Failed,
    StepStatus::Rejected,
    StepStatus::Skipped,
];

fn rules(max_retries: i32, approval_required: bool, default: ReviewAction) -> RunRules {
    RunRules { max_retries, approval_required, review_timeout_secs: 60, review_default_action: default }
}

fn step(index: i32, kind: StepKind, status: StepStatus) -> RunStep {
    RunStep {
        index,
        step_id: format!("s{index}"),
        kind,
        prompt: format!("prompt {index}"),
        reviews_index: None,
        status,
        input: String::new(),
        output: if status == StepStatus::Succeeded { format!("out {index}") } else { String::new() },
        attempts: if status == StepStatus::Pending { 0 } else { 1 },
        error: String::new(),
        started_at: None,
        finished_at: None,
    }
}

fn state(status: RunStatus, current_step: i32, steps: &[RunStep]) -> RunState<'_> {
    RunState {
        status,
        holds_lease: true,
        current_step,
        input: "run input",
        rules: rules(0, false, ReviewAction::Reject),
        steps,
    }
}

fn review(step_index: i32, status: ReviewStatus, default_action: ReviewAction) -> Review {
    Review {
        id: Uuid::nil(),
        tenant_id: "t1".into(),
        run_id: Uuid::nil(),
        agent_id: Uuid::nil(),
        step_index,
        step_id: format!("s{step_index}"),
        status,
        output: "to review".into(),
        edited_output: None,
        deadline: Utc::now(),
        default_action,
        created_at: Utc::now(),
        decided_at: None,
    }
}

fn ev(kind: &'static str, step_id: &str, detail: &str) -> Change {
    Change::Event { kind, step_id: step_id.into(), detail: detail.into() }
}

/// The kinds of event, each with the steps that make it meaningful.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Take,
    Succeeded,
    Failed,
    Approved,
    Rejected,
    Expired,
    Cancel,
}

const ALL_KINDS: [Kind; 7] =
    [Kind::Take, Kind::Succeeded, Kind::Failed, Kind::Approved, Kind::Rejected, Kind::Expired, Kind::Cancel];

fn run_kind(status: RunStatus, kind: Kind) -> Result<Transition, Refusal> {
    let pending = [step(0, StepKind::Llm, StepStatus::Pending), step(1, StepKind::Llm, StepStatus::Pending)];
    let running = [step(0, StepKind::Llm, StepStatus::Running), step(1, StepKind::Llm, StepStatus::Pending)];
    let waiting = [step(0, StepKind::Llm, StepStatus::Succeeded), step(1, StepKind::Review, StepStatus::WaitingReview)];
    let pending_review = review(1, ReviewStatus::Pending, ReviewAction::Reject);
    match kind {
        Kind::Take => decide(&state(status, 0, &pending), RunEventIn::Take),
        Kind::Succeeded => {
            decide(&state(status, 0, &running), RunEventIn::StepSucceeded { index: 0, output: "x".into() })
        }
        Kind::Failed => decide(
            &state(status, 0, &running),
            RunEventIn::StepFailed { index: 0, error: "boom".into(), retriable: true },
        ),
        Kind::Approved => decide(
            &state(status, 1, &waiting),
            RunEventIn::ReviewDecided { review: &pending_review, verdict: Verdict::Approve { edited_output: None } },
        ),
        Kind::Rejected => decide(
            &state(status, 1, &waiting),
            RunEventIn::ReviewDecided { review: &pending_review, verdict: Verdict::Reject { reason: "no".into() } },
        ),
        Kind::Expired => decide(&state(status, 1, &waiting), RunEventIn::ReviewExpired { review: &pending_review }),
        Kind::Cancel => decide(&state(status, 0, &pending), RunEventIn::Cancel { reason: String::new() }),
    }
}

#[test]
fn every_status_and_event_pair_is_either_applied_or_refused_as_the_table_says() {
    for status in ALL_STATUSES {
        for kind in ALL_KINDS {
            let got = run_kind(status, kind);
            let expected: Result<(), Refusal> = match (kind, status) {
                (Kind::Take, RunStatus::Queued | RunStatus::Running) => Ok(()),
                (Kind::Take, _) => Err(Refusal::NotOurs),
                (Kind::Succeeded | Kind::Failed, RunStatus::Running) => Ok(()),
                (Kind::Succeeded | Kind::Failed, _) => Err(Refusal::NotOurs),
                (Kind::Approved | Kind::Rejected | Kind::Expired | Kind::Cancel, s) if s.is_final() => {
                    Err(Refusal::Ended(s))
                }
                (Kind::Approved | Kind::Rejected | Kind::Expired | Kind::Cancel, _) => Ok(()),
            };
            match (&got, expected) {
                (Ok(t), Ok(())) => assert!(!t.changes.is_empty(), "{status:?} × {kind:?} changed nothing"),
                (Err(r), Err(e)) => assert_eq!(*r, e, "{status:?} × {kind:?}"),
                _ => panic!("{status:?} × {kind:?}: got {got:?}, expected {expected:?}"),
            }
        }
    }
}

#[test]
fn a_worker_without_the_lease_changes_nothing_whatever_the_status() {
    let running = [step(0, StepKind::Llm, StepStatus::Running)];
    for status in ALL_STATUSES {
        let run = RunState { holds_lease: false, ..state(status, 0, &running) };
        assert_eq!(decide(&run, RunEventIn::Take), Err(Refusal::NotOurs));
        assert_eq!(decide(&run, RunEventIn::StepSucceeded { index: 0, output: "x".into() }), Err(Refusal::NotOurs));
        assert_eq!(
            decide(&run, RunEventIn::StepFailed { index: 0, error: "e".into(), retriable: true }),
            Err(Refusal::NotOurs)
        );
    }
}

#[test]
fn taking_a_queued_run_starts_it_and_calls_its_first_llm_step_with_the_run_input() {
    let steps = [step(0, StepKind::Llm, StepStatus::Pending)];
    let t = decide(&state(RunStatus::Queued, 0, &steps), RunEventIn::Take).unwrap();
    assert_eq!(
        t.changes,
        vec![
            Change::RunStarted,
            ev("run_started", "", ""),
            Change::StepStarted { index: 0, status: StepStatus::Running, input: "run input".into() },
            ev("step_started", "s0", "attempt 1"),
        ]
    );
    assert_eq!(
        t.call,
        Some(LlmCall {
            step_index: 0,
            step_id: "s0".into(),
            prompt: "prompt 0".into(),
            input: "run input".into(),
            attempts: 1
        })
    );
}

#[test]
fn a_later_step_takes_the_previous_step_output_as_input() {
    let steps = [step(0, StepKind::Llm, StepStatus::Succeeded), step(1, StepKind::Llm, StepStatus::Pending)];
    let t = decide(&state(RunStatus::Running, 1, &steps), RunEventIn::Take).unwrap();
    assert_eq!(t.call.unwrap().input, "out 0");
}

#[test]
fn taking_a_step_in_every_step_status_follows_the_rules() {
    for status in ALL_STEP_STATUSES {
        let steps = [step(0, StepKind::Llm, status), step(1, StepKind::Llm, StepStatus::Pending)];
        let got = decide(&state(RunStatus::Running, 0, &steps), RunEventIn::Take);
        match status {
            StepStatus::Pending => assert!(got.unwrap().call.is_some()),
            // Interrupted: tried again, with a note why.
            StepStatus::Running => {
                let t = got.unwrap();
                assert_eq!(t.changes[0], ev("step_retrying", "s0", "interrupted: the worker running it stopped"));
                assert_eq!(t.call.unwrap().attempts, 2);
            }
            // Done before its worker could move on: moves on now.
            StepStatus::Succeeded => assert_eq!(got.unwrap().changes, vec![Change::MoveTo { next: 1 }]),
            _ => assert_eq!(got, Err(Refusal::StaleStep), "{status:?}"),
        }
    }
}

#[test]
fn an_interrupted_step_fails_the_run_once_it_has_used_the_extra_attempts() {
    let mut interrupted = step(0, StepKind::Llm, StepStatus::Running);
    interrupted.attempts = INTERRUPTION_RETRIES;
    let steps = [interrupted.clone()];
    assert!(decide(&state(RunStatus::Running, 0, &steps), RunEventIn::Take).unwrap().call.is_some());

    interrupted.attempts = INTERRUPTION_RETRIES + 1;
    let steps = [interrupted];
    let t = decide(&state(RunStatus::Running, 0, &steps), RunEventIn::Take).unwrap();
    let error = "interrupted: the worker running it stopped";
    assert_eq!(t.call, None);
    assert_eq!(
        t.changes,
        vec![
            Change::SetStep { index: 0, status: StepStatus::Failed, output: None, error: error.into(), finished: true },
            ev("step_failed", "s0", error),
            Change::End { status: RunStatus::Failed, error: format!("step s0: {error}") },
            ev("run_failed", "", &format!("step s0: {error}")),
        ]
    );
}

#[test]
fn an_output_step_makes_what_reached_it_the_run_result_and_ends_the_run() {
    let steps = [step(0, StepKind::Llm, StepStatus::Succeeded), step(1, StepKind::Output, StepStatus::Pending)];
    let t = decide(&state(RunStatus::Running, 1, &steps), RunEventIn::Take).unwrap();
    assert_eq!(t.call, None);
    assert_eq!(
        t.changes,
        vec![
            Change::StepStarted { index: 1, status: StepStatus::Running, input: "out 0".into() },
            ev("step_started", "s1", "attempt 1"),
            Change::RunOutput("out 0".into()),
            Change::SetStep {
                index: 1,
                status: StepStatus::Succeeded,
                output: Some("out 0".into()),
                error: String::new(),
                finished: true
            },
            ev("step_succeeded", "s1", "out 0"),
            Change::Succeed { current_step: 2, output: "out 0".into() },
            ev("run_succeeded", "", "out 0"),
        ]
    );
}

#[test]
fn a_review_step_asks_for_a_review_of_the_step_it_reviews() {
    let mut first = step(0, StepKind::Llm, StepStatus::Succeeded);
    first.output = "first".into();
    let mut second = step(1, StepKind::Llm, StepStatus::Succeeded);
    second.output = "second".into();
    let mut check = step(2, StepKind::Review, StepStatus::Pending);
    check.reviews_index = Some(0);
    let steps = [first, second, check];
    let t = decide(&state(RunStatus::Running, 2, &steps), RunEventIn::Take).unwrap();
    assert_eq!(
        t.changes,
        vec![
            Change::StepStarted { index: 2, status: StepStatus::WaitingReview, input: "second".into() },
            ev("step_started", "s2", "attempt 1"),
            Change::RequestReview { index: 2, step_id: "s2".into(), text: "first".into() },
        ]
    );
}

#[test]
fn taking_a_run_past_its_last_step_succeeds_it_with_the_last_output() {
    let steps = [step(0, StepKind::Llm, StepStatus::Succeeded)];
    let t = decide(&state(RunStatus::Running, 1, &steps), RunEventIn::Take).unwrap();
    assert_eq!(
        t.changes,
        vec![Change::Succeed { current_step: 1, output: "out 0".into() }, ev("run_succeeded", "", "out 0")]
    );
}

#[test]
fn a_step_answer_moves_to_the_next_step_or_succeeds_the_run_after_the_last() {
    let steps = [step(0, StepKind::Llm, StepStatus::Running), step(1, StepKind::Llm, StepStatus::Pending)];
    let t = decide(&state(RunStatus::Running, 0, &steps), RunEventIn::StepSucceeded { index: 0, output: "a".into() })
        .unwrap();
    assert_eq!(t.changes.last(), Some(&Change::MoveTo { next: 1 }));

    let steps = [step(0, StepKind::Llm, StepStatus::Succeeded), step(1, StepKind::Llm, StepStatus::Running)];
    let t = decide(&state(RunStatus::Running, 1, &steps), RunEventIn::StepSucceeded { index: 1, output: "b".into() })
        .unwrap();
    assert_eq!(
        t.changes,
        vec![
            Change::SetStep {
                index: 1,
                status: StepStatus::Succeeded,
                output: Some("b".into()),
                error: String::new(),
                finished: true
            },
            ev("step_succeeded", "s1", "b"),
            Change::Succeed { current_step: 2, output: "b".into() },
            ev("run_succeeded", "", "b"),
        ]
    );
}

#[test]
fn with_approval_required_a_step_answer_waits_for_a_review_of_it() {
    let steps = [step(0, StepKind::Llm, StepStatus::Running)];
    let run = RunState { rules: rules(0, true, ReviewAction::Reject), ..state(RunStatus::Running, 0, &steps) };
    let t = decide(&run, RunEventIn::StepSucceeded { index: 0, output: "a".into() }).unwrap();
    assert_eq!(t.changes, vec![Change::RequestReview { index: 0, step_id: "s0".into(), text: "a".into() }]);
}

#[test]
fn a_report_on_a_step_that_is_not_the_running_one_is_stale() {
    let steps = [step(0, StepKind::Llm, StepStatus::Succeeded), step(1, StepKind::Llm, StepStatus::Running)];
    let run = state(RunStatus::Running, 1, &steps);
    for index in [0, 2, -1] {
        assert_eq!(
            decide(&run, RunEventIn::StepSucceeded { index, output: "x".into() }),
            Err(Refusal::StaleStep),
            "{index}"
        );
        assert_eq!(
            decide(&run, RunEventIn::StepFailed { index, error: "e".into(), retriable: true }),
            Err(Refusal::StaleStep),
            "{index}"
        );
    }
    // The current step, but no longer running (e.g. reported twice).
    for status in ALL_STEP_STATUSES.into_iter().filter(|s| *s != StepStatus::Running) {
        let steps = [step(0, StepKind::Llm, status)];
        assert_eq!(
            decide(&state(RunStatus::Running, 0, &steps), RunEventIn::StepSucceeded { index: 0, output: "x".into() }),
            Err(Refusal::StaleStep),
            "{status:?}"
        );
    }
}

#[test]
fn a_failed_attempt_is_retried_after_a_backoff_while_the_rules_allow() {
    let steps = [step(0, StepKind::Llm, StepStatus::Running)];
    let run = RunState { rules: rules(2, false, ReviewAction::Reject), ..state(RunStatus::Running, 0, &steps) };
    let t = decide(&run, RunEventIn::StepFailed { index: 0, error: "boom".into(), retriable: true }).unwrap();
    assert_eq!(
        t.changes,
        vec![
            Change::SetStep {
                index: 0,
                status: StepStatus::Pending,
                output: None,
                error: "boom".into(),
                finished: false
            },
            Change::RetryLater { delay: Duration::from_secs(1) },
            ev("step_retrying", "s0", "retry in 1 s: boom"),
        ]
    );
}

#[test]
fn a_failure_fails_the_run_when_retries_are_used_up_or_do_not_apply() {
    let mut tried = step(0, StepKind::Llm, StepStatus::Running);
    tried.attempts = 3;
    let exhausted = [tried];
    let fresh = [step(0, StepKind::Llm, StepStatus::Running)];
    let with_retries =
        |steps| RunState { rules: rules(2, false, ReviewAction::Reject), ..state(RunStatus::Running, 0, steps) };
    for (run, retriable) in [(with_retries(&exhausted), true), (with_retries(&fresh), false)] {
        let t = decide(&run, RunEventIn::StepFailed { index: 0, error: "boom".into(), retriable }).unwrap();
        assert_eq!(
            t.changes,
            vec![
                Change::SetStep {
                    index: 0,
                    status: StepStatus::Failed,
                    output: None,
                    error: "boom".into(),
                    finished: true
                },
                ev("step_failed", "s0", "boom"),
                Change::End { status: RunStatus::Failed, error: "step s0 failed: boom".into() },
                ev("run_failed", "", "step s0 failed: boom"),
            ]
        );
    }
}

fn waiting() -> [RunStep; 3] {
    [
        step(0, StepKind::Llm, StepStatus::Succeeded),
        step(1, StepKind::Review, StepStatus::WaitingReview),
        step(2, StepKind::Llm, StepStatus::Pending),
    ]
}

#[test]
fn an_approval_succeeds_the_reviewed_step_with_the_edited_output_and_moves_on() {
    let steps = waiting();
    let review = review(1, ReviewStatus::Pending, ReviewAction::Reject);
    let verdict = Verdict::Approve { edited_output: Some("edited".into()) };
    let t = decide(&state(RunStatus::WaitingReview, 1, &steps), RunEventIn::ReviewDecided { review: &review, verdict })
        .unwrap();
    assert_eq!(
        t.changes,
        vec![
            Change::DecideReview { status: ReviewStatus::Approved, edited_output: Some("edited".into()) },
            ev("review_approved", "s1", "approved with an edited output"),
            Change::SetStep {
                index: 1,
                status: StepStatus::Succeeded,
                output: Some("edited".into()),
                error: String::new(),
                finished: true
            },
            ev("step_succeeded", "s1", "edited"),
            Change::MoveTo { next: 2 },
        ]
    );
}

#[test]
fn a_rejection_rejects_the_step_and_ends_the_run_rejected() {
    let steps = waiting();
    let review = review(1, ReviewStatus::Pending, ReviewAction::Approve);
    let verdict = Verdict::Reject { reason: "wrong".into() };
    let t = decide(&state(RunStatus::WaitingReview, 1, &steps), RunEventIn::ReviewDecided { review: &review, verdict })
        .unwrap();
    assert_eq!(
        t.changes,
        vec![
            Change::DecideReview { status: ReviewStatus::Rejected, edited_output: None },
            ev("review_rejected", "s1", "wrong"),
            Change::SetStep {
                index: 1,
                status: StepStatus::Rejected,
                output: None,
                error: "wrong".into(),
                finished: true
            },
            Change::End { status: RunStatus::Rejected, error: "wrong".into() },
            ev("run_rejected", "", "wrong"),
        ]
    );
}

#[test]
fn an_expired_review_takes_its_default_action_and_is_marked_expired() {
    let steps = waiting();
    let run = state(RunStatus::WaitingReview, 1, &steps);
    let approve = review(1, ReviewStatus::Pending, ReviewAction::Approve);
    let t = decide(&run, RunEventIn::ReviewExpired { review: &approve }).unwrap();
    assert_eq!(t.changes[0], Change::DecideReview { status: ReviewStatus::Expired, edited_output: None });
    assert_eq!(t.changes[1], ev("review_expired", "s1", "approved by default at the deadline"));
    assert_eq!(t.changes.last(), Some(&Change::MoveTo { next: 2 }));

    let reject = review(1, ReviewStatus::Pending, ReviewAction::Reject);
    let t = decide(&run, RunEventIn::ReviewExpired { review: &reject }).unwrap();
    assert_eq!(t.changes[0], Change::DecideReview { status: ReviewStatus::Expired, edited_output: None });
    assert_eq!(t.changes[1], ev("review_expired", "s1", "review deadline passed"));
    assert_eq!(t.changes.last(), Some(&ev("run_rejected", "", "review deadline passed")));
}

#[test]
fn a_review_decided_already_cannot_be_decided_again() {
    let steps = waiting();
    let run = state(RunStatus::WaitingReview, 1, &steps);
    for status in [ReviewStatus::Approved, ReviewStatus::Rejected, ReviewStatus::Expired] {
        let decided = review(1, status, ReviewAction::Approve);
        for verdict in [Verdict::Approve { edited_output: None }, Verdict::Reject { reason: "r".into() }] {
            assert_eq!(
                decide(&run, RunEventIn::ReviewDecided { review: &decided, verdict }),
                Err(Refusal::ReviewNotPending(status))
            );
        }
        assert_eq!(
            decide(&run, RunEventIn::ReviewExpired { review: &decided }),
            Err(Refusal::ReviewNotPending(status))
        );
    }
}

#[test]
fn a_cancel_ends_the_run_with_its_reason_or_cancelled() {
    let steps = [step(0, StepKind::Llm, StepStatus::Running)];
    let run = state(RunStatus::Running, 0, &steps);
    let t = decide(&run, RunEventIn::Cancel { reason: String::new() }).unwrap();
    assert_eq!(
        t.changes,
        vec![
            Change::End { status: RunStatus::Cancelled, error: "cancelled".into() },
            ev("run_cancelled", "", "cancelled")
        ]
    );
    let t = decide(&run, RunEventIn::Cancel { reason: "not needed".into() }).unwrap();
    assert_eq!(t.changes[0], Change::End { status: RunStatus::Cancelled, error: "not needed".into() });
}
