//! StartRun, GetRun, ListRuns, CancelRun, WatchRun, reviews and PreviewSchedule.

use std::pin::Pin;

use engarde::proto::agent::v1 as pb;
use futures::Stream;
use tonic::{Request, Response, Status};

use super::agent_service::AgentApi;

/// The events of a watched run.
pub type RunEventStream = Pin<Box<dyn Stream<Item = Result<pb::RunEvent, Status>> + Send>>;

fn not_yet() -> Status {
    Status::unimplemented("walker runs are being built")
}

impl AgentApi {
    pub(super) async fn run_start(&self, _r: Request<pb::StartRunRequest>) -> Result<Response<pb::Run>, Status> {
        Err(not_yet())
    }
    pub(super) async fn run_get(&self, _r: Request<pb::GetRunRequest>) -> Result<Response<pb::Run>, Status> {
        Err(not_yet())
    }
    pub(super) async fn run_list(
        &self,
        _r: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        Err(not_yet())
    }
    pub(super) async fn run_cancel(&self, _r: Request<pb::CancelRunRequest>) -> Result<Response<pb::Run>, Status> {
        Err(not_yet())
    }
    pub(super) async fn run_watch(&self, _r: Request<pb::WatchRunRequest>) -> Result<Response<RunEventStream>, Status> {
        Err(not_yet())
    }
    pub(super) async fn reviews_pending(
        &self,
        _r: Request<pb::ListPendingReviewsRequest>,
    ) -> Result<Response<pb::ListPendingReviewsResponse>, Status> {
        Err(not_yet())
    }
    pub(super) async fn review_approve(
        &self,
        _r: Request<pb::ApproveStepRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        Err(not_yet())
    }
    pub(super) async fn review_reject(&self, _r: Request<pb::RejectStepRequest>) -> Result<Response<pb::Run>, Status> {
        Err(not_yet())
    }
    pub(super) async fn schedule_preview(
        &self,
        _r: Request<pb::PreviewScheduleRequest>,
    ) -> Result<Response<pb::PreviewScheduleResponse>, Status> {
        Err(not_yet())
    }
}
