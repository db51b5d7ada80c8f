//! Conversions between the walker's contracts (runs, steps, reviews, events) and its model.

use engarde::kit::error::{ServiceError, ServiceResult};
use engarde::proto::agent::v1 as pb;

use super::convert::timestamp;
use crate::walker::model::{Review, ReviewStatus, Run, RunEvent, RunStatus, RunStep, RunTrigger, StepStatus};

pub fn run_status_from_pb(value: i32) -> ServiceResult<Option<RunStatus>> {
    Ok(match pb::RunStatus::try_from(value) {
        Ok(pb::RunStatus::Unspecified) => None,
        Ok(pb::RunStatus::Queued) => Some(RunStatus::Queued),
        Ok(pb::RunStatus::Running) => Some(RunStatus::Running),
        Ok(pb::RunStatus::WaitingReview) => Some(RunStatus::WaitingReview),
        Ok(pb::RunStatus::Succeeded) => Some(RunStatus::Succeeded),
        Ok(pb::RunStatus::Failed) => Some(RunStatus::Failed),
        Ok(pb::RunStatus::Rejected) => Some(RunStatus::Rejected),
        Ok(pb::RunStatus::Cancelled) => Some(RunStatus::Cancelled),
        Err(_) => return Err(ServiceError::invalid("status", format!("{value} is not a RunStatus"))),
    })
}

fn run_status_to_pb(s: RunStatus) -> pb::RunStatus {
    match s {
        RunStatus::Queued => pb::RunStatus::Queued,
        RunStatus::Running => pb::RunStatus::Running,
        RunStatus::WaitingReview => pb::RunStatus::WaitingReview,
        RunStatus::Succeeded => pb::RunStatus::Succeeded,
        RunStatus::Failed => pb::RunStatus::Failed,
        RunStatus::Rejected => pb::RunStatus::Rejected,
        RunStatus::Cancelled => pb::RunStatus::Cancelled,
    }
}

fn step_status_to_pb(s: StepStatus) -> pb::StepStatus {
    match s {
        StepStatus::Pending => pb::StepStatus::Pending,
        StepStatus::Running => pb::StepStatus::Running,
        StepStatus::WaitingReview => pb::StepStatus::WaitingReview,
        StepStatus::Succeeded => pb::StepStatus::Succeeded,
        StepStatus::Failed => pb::StepStatus::Failed,
        StepStatus::Rejected => pb::StepStatus::Rejected,
        StepStatus::Skipped => pb::StepStatus::Skipped,
    }
}

fn review_status_to_pb(s: ReviewStatus) -> pb::ReviewStatus {
    match s {
        ReviewStatus::Pending => pb::ReviewStatus::Pending,
        ReviewStatus::Approved => pb::ReviewStatus::Approved,
        ReviewStatus::Rejected => pb::ReviewStatus::Rejected,
        ReviewStatus::Expired => pb::ReviewStatus::Expired,
    }
}

fn step_to_pb(s: &RunStep) -> pb::RunStep {
    pb::RunStep {
        index: s.index,
        step_id: s.step_id.clone(),
        kind: s.kind.as_str().to_owned(),
        status: step_status_to_pb(s.status) as i32,
        input: s.input.clone(),
        output: s.output.clone(),
        attempts: s.attempts,
        error: s.error.clone(),
        start_time: s.started_at.map(timestamp),
        finish_time: s.finished_at.map(timestamp),
    }
}

pub fn run_to_pb(r: &Run) -> pb::Run {
    pb::Run {
        id: r.id.to_string(),
        agent_id: r.agent_id.to_string(),
        status: run_status_to_pb(r.status) as i32,
        trigger: match r.trigger {
            RunTrigger::Manual => pb::RunTrigger::Manual,
            RunTrigger::Scheduled => pb::RunTrigger::Scheduled,
        } as i32,
        input: r.input.clone(),
        output: r.output.clone(),
        error: r.error.clone(),
        steps: r.steps.iter().map(step_to_pb).collect(),
        scheduled_time: r.scheduled_for.map(timestamp),
        create_time: Some(timestamp(r.created_at)),
        update_time: Some(timestamp(r.updated_at)),
        finish_time: r.finished_at.map(timestamp),
    }
}

pub fn review_to_pb(r: &Review) -> pb::Review {
    pb::Review {
        id: r.id.to_string(),
        run_id: r.run_id.to_string(),
        agent_id: r.agent_id.to_string(),
        step_id: r.step_id.clone(),
        output: r.output.clone(),
        status: review_status_to_pb(r.status) as i32,
        deadline: Some(timestamp(r.deadline)),
        default_action: r.default_action.as_str().to_uppercase(),
        create_time: Some(timestamp(r.created_at)),
        decide_time: r.decided_at.map(timestamp),
    }
}

pub fn event_to_pb(e: RunEvent) -> pb::RunEvent {
    pb::RunEvent {
        sequence: e.sequence,
        run_id: e.run_id.to_string(),
        kind: e.kind,
        step_id: e.step_id,
        detail: e.detail,
        time: Some(timestamp(e.created_at)),
    }
}
