//! `engarde.agent.v1.RunService`: StartRun, GetRun, ListRuns, CancelRun, WatchRun, reviews and
//! PreviewSchedule: parsing at the edge, the walker and its repository behind.

use std::pin::Pin;

use engarde::kit::error::{FieldViolation, ServiceError, ServiceResult};
use engarde::kit::idempotency::IdempotencyKey;
use engarde::kit::page_budget::PageBudget;
use engarde::kit::pagination::time_id_key;
use engarde::kit::pagination::{PageRequest, filter_fingerprint};
use engarde::kit::request::{collect_id, invalid_if_any, parse_id};
use engarde::proto::agent::v1 as pb;
use engarde::proto::agent::v1::run_service_server::RunService;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::caller::handle;
use super::convert::timestamp;
use super::run_convert::{event_to_pb, review_to_pb, run_status_from_pb, run_to_pb};
use crate::walker::model::{ReviewDecision, RunFilter, RunRequestKey, Verdict};
use crate::walker::watch::WatchEnd;
use crate::walker::{Walker, scheduler_preview};

/// The service's handlers, over the walker (its runs, reviews and watches).
#[derive(Clone)]
pub struct RunApi {
    walker: Walker,
    /// How many bytes of items one page of a List answer may carry.
    pages: PageBudget,
}

impl RunApi {
    pub fn new(walker: Walker, pages: PageBudget) -> Self {
        Self { walker, pages }
    }
}

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

fn optional_id(field: &str, value: &str) -> ServiceResult<Option<Uuid>> {
    if value.is_empty() { Ok(None) } else { parse_id(field, value).map(Some) }
}

fn lost_field() -> ServiceError {
    ServiceError::internal(anyhow::anyhow!("validated request lost a field"))
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

/// The review decision named by a request's run, step and review ids.
fn decision(
    run_id: &str,
    step_id: &str,
    review_id: &str,
    mut violations: Vec<FieldViolation>,
    verdict: Verdict,
) -> ServiceResult<ReviewDecision> {
    let run = collect_id("run_id", run_id, &mut violations);
    let review = collect_id("review_id", review_id, &mut violations);
    if step_id.is_empty() {
        violations.push(FieldViolation::new("step_id", "is required"));
    }
    invalid_if_any(violations)?;
    let (Some(run_id), Some(review_id)) = (run, review) else { return Err(lost_field()) };
    Ok(ReviewDecision { run_id, step_id: step_id.to_owned(), review_id, verdict })
}

#[tonic::async_trait]
impl RunService for RunApi {
    #[tracing::instrument(skip_all)]
    async fn start_run(&self, request: Request<pb::StartRunRequest>) -> Result<Response<pb::Run>, Status> {
        handle(request, |caller, req| async move {
            let key = IdempotencyKey::from_request("StartRun", &req.request_id, &req)?
                .map(|k| RunRequestKey { request_id: k.request_id, fingerprint: k.fingerprint });
            let mut violations = Vec::new();
            let agent_id = collect_id("agent_id", &req.agent_id, &mut violations);
            check_text("input", &req.input, true, MAX_TEXT_CHARS, &mut violations);
            invalid_if_any(violations)?;
            let agent_id = agent_id.ok_or_else(lost_field)?;
            let run = self.walker.start_run(caller.tenant.as_str(), agent_id, req.input, key).await?;
            tracing::info!(run_id = %run.id, agent_id = %agent_id, "run started");
            Ok(run_to_pb(&run))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn get_run(&self, request: Request<pb::GetRunRequest>) -> Result<Response<pb::Run>, Status> {
        handle(request, |caller, req| async move {
            let id = parse_id("id", &req.id)?;
            Ok(run_to_pb(&self.walker.runs().get(caller.tenant.as_str(), id).await?))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn list_runs(&self, request: Request<pb::ListRunsRequest>) -> Result<Response<pb::ListRunsResponse>, Status> {
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

    #[tracing::instrument(skip_all)]
    async fn cancel_run(&self, request: Request<pb::CancelRunRequest>) -> Result<Response<pb::Run>, Status> {
        handle(request, |caller, req| async move {
            let key = IdempotencyKey::from_request("CancelRun", &req.request_id, &req)?;
            let mut violations = Vec::new();
            let id = collect_id("id", &req.id, &mut violations);
            check_text("reason", &req.reason, false, MAX_REASON_CHARS, &mut violations);
            invalid_if_any(violations)?;
            let id = id.ok_or_else(lost_field)?;
            let run = self.walker.runs().cancel(caller.tenant.as_str(), id, req.reason.trim(), key.as_ref()).await?;
            tracing::info!(run_id = %id, "run cancelled");
            Ok(run_to_pb(&run))
        })
        .await
    }

    type WatchRunStream = RunEventStream;

    #[tracing::instrument(skip_all)]
    async fn watch_run(&self, request: Request<pb::WatchRunRequest>) -> Result<Response<Self::WatchRunStream>, Status> {
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

    #[tracing::instrument(skip_all)]
    async fn list_pending_reviews(
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

    #[tracing::instrument(skip_all)]
    async fn approve_step(&self, request: Request<pb::ApproveStepRequest>) -> Result<Response<pb::Run>, Status> {
        handle(request, |caller, req| async move {
            let key = IdempotencyKey::from_request("ApproveStep", &req.request_id, &req)?;
            let mut violations = Vec::new();
            if let Some(edited) = &req.edited_output {
                check_text("edited_output", edited, false, MAX_TEXT_CHARS, &mut violations);
            }
            let verdict = Verdict::Approve { edited_output: req.edited_output.clone() };
            let decision = decision(&req.run_id, &req.step_id, &req.review_id, violations, verdict)?;
            let run = self.walker.runs().decide(caller.tenant.as_str(), decision, key.as_ref()).await?;
            tracing::info!(run_id = %run.id, review_id = req.review_id, "review approved");
            self.walker.wake();
            Ok(run_to_pb(&run))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn reject_step(&self, request: Request<pb::RejectStepRequest>) -> Result<Response<pb::Run>, Status> {
        handle(request, |caller, req| async move {
            let key = IdempotencyKey::from_request("RejectStep", &req.request_id, &req)?;
            let mut violations = Vec::new();
            check_text("reason", &req.reason, false, MAX_REASON_CHARS, &mut violations);
            let reason = match req.reason.trim() {
                "" => "rejected by a reviewer".to_owned(),
                reason => reason.to_owned(),
            };
            let decision = decision(&req.run_id, &req.step_id, &req.review_id, violations, Verdict::Reject { reason })?;
            let run = self.walker.runs().decide(caller.tenant.as_str(), decision, key.as_ref()).await?;
            tracing::info!(run_id = %run.id, review_id = req.review_id, "review rejected");
            Ok(run_to_pb(&run))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn preview_schedule(
        &self,
        request: Request<pb::PreviewScheduleRequest>,
    ) -> Result<Response<pb::PreviewScheduleResponse>, Status> {
        handle(request, |caller, req| async move {
            let mut violations = Vec::new();
            let agent_id = collect_id("agent_id", &req.agent_id, &mut violations);
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
