//! StartRun, GetRun, ListRuns, CancelRun, WatchRun, reviews and PreviewSchedule: parsing at the
//! edge, the walker and its repository behind.

use std::pin::Pin;

use engarde::kit::error::{FieldViolation, ServiceError, ServiceResult};
use engarde::kit::idempotency::IdempotencyKey;
use engarde::kit::pagination::time_id_key;
use engarde::kit::pagination::{PageRequest, filter_fingerprint};
use engarde::kit::request::{invalid_if_any, parse_id};
use engarde::proto::agent::v1 as pb;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::agent_service::{AgentApi, handle};
use super::convert::timestamp;
use crate::walker::model::{
    Review, ReviewDecision, ReviewStatus, Run, RunEvent, RunFilter, RunRequestKey, RunStatus, RunStep, RunTrigger,
    StepStatus, Verdict,
};
use crate::walker::scheduler_preview;
use crate::walker::watch::WatchEnd;

/// The events of a watched run.
pub type RunEventStream = Pin<Box<dyn Stream<Item = Result<pb::RunEvent, Status>> + Send>>;

/// The longest run input, and edited output, in characters.
const MAX_TEXT_CHARS: usize = 32_000;
/// The longest reason (of a cancellation or a rejection), in characters.
const MAX_REASON_CHARS: usize = 1000;
/// PreviewSchedule's count: default and bounds.
const DEFAULT_PREVIEW: i32 = 5;
const MAX_PREVIEW: i32 = 100;

fn check_text(field: &str, text: &str, required: bool, max: usize, violations: &mut Vec<FieldViolation>) {
    let chars = text.chars().count();
    if required && text.trim().is_empty() {
        violations.push(FieldViolation::new(field, "is required"));
    } else if chars > max {
        violations.push(FieldViolation::new(field, format!("at most {max} characters (got {chars})")));
    }
}

/// An id field, its violation collected with the others.
fn id_field(field: &str, value: &str, violations: &mut Vec<FieldViolation>) -> Option<Uuid> {
    match parse_id(field, value) {
        Ok(id) => Some(id),
        Err(ServiceError::InvalidArgument(v)) => {
            violations.extend(v);
            None
        }
        Err(_) => None,
    }
}

fn optional_id(field: &str, value: &str) -> ServiceResult<Option<Uuid>> {
    if value.is_empty() { Ok(None) } else { parse_id(field, value).map(Some) }
}

fn lost_field() -> ServiceError {
    ServiceError::internal(anyhow::anyhow!("validated request lost a field"))
}

fn run_status_from_pb(value: i32) -> ServiceResult<Option<RunStatus>> {
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

fn run_to_pb(r: &Run) -> pb::Run {
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

fn review_to_pb(r: &Review) -> pb::Review {
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

fn event_to_pb(e: RunEvent) -> pb::RunEvent {
    pb::RunEvent {
        sequence: e.sequence,
        run_id: e.run_id.to_string(),
        kind: e.kind,
        step_id: e.step_id,
        detail: e.detail,
        time: Some(timestamp(e.created_at)),
    }
}

/// How a watch that ended before its run is answered.
fn watch_end(end: WatchEnd) -> Status {
    match end {
        WatchEnd::Failed(e) => Status::from(e),
        // Not a failure of anything: said plainly, and not logged as one.
        WatchEnd::Expired { resume_from, lifetime } => Status::unavailable(format!(
            "this watch reached its lifetime of {} s (WATCH_MAX_LIFETIME_SECS); resume with from_sequence={resume_from}",
            lifetime.as_secs()
        )),
    }
}

impl AgentApi {
    /// The review decision named by a request's run, step and review ids.
    fn decision(
        run_id: &str,
        step_id: &str,
        review_id: &str,
        mut violations: Vec<FieldViolation>,
        verdict: Verdict,
    ) -> ServiceResult<ReviewDecision> {
        let run = id_field("run_id", run_id, &mut violations);
        let review = id_field("review_id", review_id, &mut violations);
        if step_id.is_empty() {
            violations.push(FieldViolation::new("step_id", "is required"));
        }
        invalid_if_any(violations)?;
        let (Some(run_id), Some(review_id)) = (run, review) else { return Err(lost_field()) };
        Ok(ReviewDecision { run_id, step_id: step_id.to_owned(), review_id, verdict })
    }

    pub(super) async fn run_start(&self, request: Request<pb::StartRunRequest>) -> Result<Response<pb::Run>, Status> {
        handle(request, |caller, req| async move {
            let key = IdempotencyKey::from_request("StartRun", &req.request_id, &req)?
                .map(|k| RunRequestKey { request_id: k.request_id, fingerprint: k.fingerprint });
            let mut violations = Vec::new();
            let agent_id = id_field("agent_id", &req.agent_id, &mut violations);
            check_text("input", &req.input, true, MAX_TEXT_CHARS, &mut violations);
            invalid_if_any(violations)?;
            let agent_id = agent_id.ok_or_else(lost_field)?;
            let run = self.walker.start_run(caller.tenant.as_str(), agent_id, req.input, key).await?;
            tracing::info!(run_id = %run.id, agent_id = %agent_id, "run started");
            Ok(run_to_pb(&run))
        })
        .await
    }

    pub(super) async fn run_get(&self, request: Request<pb::GetRunRequest>) -> Result<Response<pb::Run>, Status> {
        handle(request, |caller, req| async move {
            let id = parse_id("id", &req.id)?;
            Ok(run_to_pb(&self.walker.runs().get(caller.tenant.as_str(), id).await?))
        })
        .await
    }

    pub(super) async fn run_list(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        handle(request, |caller, req| async move {
            let filter = RunFilter {
                agent_id: optional_id("agent_id", &req.agent_id)?,
                status: run_status_from_pb(req.status)?,
            };
            let fingerprint = filter_fingerprint(&[
                &filter.agent_id.map(|id| id.to_string()).unwrap_or_default(),
                filter.status.map(|s| s.as_str()).unwrap_or(""),
            ]);
            let page = PageRequest::parse(req.page_size, &req.page_token, fingerprint)?;
            let runs = self.walker.runs().list(caller.tenant.as_str(), &filter, &page).await?;
            let filled = page.fill(
                &runs,
                self.pages,
                run_to_pb,
                |r| time_id_key(r.created_at, r.id),
                |r| format!("run {}", r.id),
            )?;
            Ok(pb::ListRunsResponse { next_page_token: filled.next_page_token, runs: filled.items })
        })
        .await
    }

    pub(super) async fn run_cancel(&self, request: Request<pb::CancelRunRequest>) -> Result<Response<pb::Run>, Status> {
        handle(request, |caller, req| async move {
            let key = IdempotencyKey::from_request("CancelRun", &req.request_id, &req)?;
            let mut violations = Vec::new();
            let id = id_field("id", &req.id, &mut violations);
            check_text("reason", &req.reason, false, MAX_REASON_CHARS, &mut violations);
            invalid_if_any(violations)?;
            let id = id.ok_or_else(lost_field)?;
            let run = self.walker.runs().cancel(caller.tenant.as_str(), id, req.reason.trim(), key.as_ref()).await?;
            tracing::info!(run_id = %id, "run cancelled");
            Ok(run_to_pb(&run))
        })
        .await
    }

    pub(super) async fn run_watch(
        &self,
        request: Request<pb::WatchRunRequest>,
    ) -> Result<Response<RunEventStream>, Status> {
        handle(request, |caller, req| async move {
            let id = parse_id("id", &req.id)?;
            let from = match req.from_sequence {
                0 => 1,
                n if n < 0 => return Err(ServiceError::invalid("from_sequence", "must be 1 or more (0 means 1)")),
                n => n,
            };
            let tenant = caller.tenant.as_str().to_owned();
            // Counted before any database work: past a limit, a watch costs nothing.
            let permit = self.walker.admit_watch(&tenant)?;
            if self.walker.runs().status(&tenant, id).await?.is_none() {
                return Err(ServiceError::not_found(format!("run {id}")));
            }
            let events =
                self.walker.watch(permit, tenant, id, from).map(|event| event.map(event_to_pb).map_err(watch_end));
            Ok(Box::pin(events) as RunEventStream)
        })
        .await
    }

    pub(super) async fn reviews_pending(
        &self,
        request: Request<pb::ListPendingReviewsRequest>,
    ) -> Result<Response<pb::ListPendingReviewsResponse>, Status> {
        handle(request, |caller, req| async move {
            let agent = optional_id("agent_id", &req.agent_id)?;
            let fingerprint = filter_fingerprint(&[&agent.map(|id| id.to_string()).unwrap_or_default()]);
            let page = PageRequest::parse(req.page_size, &req.page_token, fingerprint)?;
            let reviews = self.walker.runs().pending_reviews(caller.tenant.as_str(), agent, &page).await?;
            let filled = page.fill(
                &reviews,
                self.pages,
                review_to_pb,
                |r| time_id_key(r.created_at, r.id),
                |r| format!("review {}", r.id),
            )?;
            Ok(pb::ListPendingReviewsResponse { next_page_token: filled.next_page_token, reviews: filled.items })
        })
        .await
    }

    pub(super) async fn review_approve(
        &self,
        request: Request<pb::ApproveStepRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        handle(request, |caller, req| async move {
            let key = IdempotencyKey::from_request("ApproveStep", &req.request_id, &req)?;
            let mut violations = Vec::new();
            if let Some(edited) = &req.edited_output {
                check_text("edited_output", edited, false, MAX_TEXT_CHARS, &mut violations);
            }
            let verdict = Verdict::Approve { edited_output: req.edited_output.clone() };
            let decision = Self::decision(&req.run_id, &req.step_id, &req.review_id, violations, verdict)?;
            let run = self.walker.runs().decide(caller.tenant.as_str(), decision, key.as_ref()).await?;
            tracing::info!(run_id = %run.id, review_id = req.review_id, "review approved");
            self.walker.wake();
            Ok(run_to_pb(&run))
        })
        .await
    }

    pub(super) async fn review_reject(
        &self,
        request: Request<pb::RejectStepRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        handle(request, |caller, req| async move {
            let key = IdempotencyKey::from_request("RejectStep", &req.request_id, &req)?;
            let mut violations = Vec::new();
            check_text("reason", &req.reason, false, MAX_REASON_CHARS, &mut violations);
            let reason = match req.reason.trim() {
                "" => "rejected by a reviewer".to_owned(),
                reason => reason.to_owned(),
            };
            let decision =
                Self::decision(&req.run_id, &req.step_id, &req.review_id, violations, Verdict::Reject { reason })?;
            let run = self.walker.runs().decide(caller.tenant.as_str(), decision, key.as_ref()).await?;
            tracing::info!(run_id = %run.id, review_id = req.review_id, "review rejected");
            Ok(run_to_pb(&run))
        })
        .await
    }

    pub(super) async fn schedule_preview(
        &self,
        request: Request<pb::PreviewScheduleRequest>,
    ) -> Result<Response<pb::PreviewScheduleResponse>, Status> {
        handle(request, |caller, req| async move {
            let mut violations = Vec::new();
            let agent_id = id_field("agent_id", &req.agent_id, &mut violations);
            let count = match req.count {
                0 => DEFAULT_PREVIEW,
                n if (1..=MAX_PREVIEW).contains(&n) => n,
                n => {
                    violations.push(FieldViolation::new("count", format!("must be 1-{MAX_PREVIEW} (got {n})")));
                    DEFAULT_PREVIEW
                }
            };
            invalid_if_any(violations)?;
            let agent = self.walker.agents().get(caller.tenant.as_str(), agent_id.ok_or_else(lost_field)?).await?;
            let fires = match &agent.snapshot {
                Some(snapshot) => scheduler_preview(&snapshot.config, crate::domain::now(), count as usize),
                None => Vec::new(),
            };
            Ok(pb::PreviewScheduleResponse {
                fires: fires
                    .into_iter()
                    .map(|(time, cron, timezone)| pb::ScheduledFire { time: Some(timestamp(time)), cron, timezone })
                    .collect(),
            })
        })
        .await
    }
}
