//! ExecuteAgent, StreamExecuteAgent, executions, memory and feedback.

use std::pin::Pin;

use engarde::proto::agent::v1 as pb;
use futures::Stream;
use tonic::{Request, Response, Status};

use super::agent_service::AgentApi;

/// The events of a streamed execution.
pub type ExecutionEventStream = Pin<Box<dyn Stream<Item = Result<pb::ExecutionEvent, Status>> + Send>>;

fn not_yet() -> Status {
    Status::unimplemented("execution is being built")
}

impl AgentApi {
    pub(super) async fn execute(
        &self,
        _r: Request<pb::ExecuteAgentRequest>,
    ) -> Result<Response<pb::ExecuteAgentResponse>, Status> {
        Err(not_yet())
    }
    pub(super) async fn execute_streamed(
        &self,
        _r: Request<pb::ExecuteAgentRequest>,
    ) -> Result<Response<ExecutionEventStream>, Status> {
        Err(not_yet())
    }
    pub(super) async fn execution(
        &self,
        _r: Request<pb::GetExecutionRequest>,
    ) -> Result<Response<pb::Execution>, Status> {
        Err(not_yet())
    }
    pub(super) async fn executions(
        &self,
        _r: Request<pb::ListExecutionsRequest>,
    ) -> Result<Response<pb::ListExecutionsResponse>, Status> {
        Err(not_yet())
    }
    pub(super) async fn sessions(
        &self,
        _r: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        Err(not_yet())
    }
    pub(super) async fn session_messages(
        &self,
        _r: Request<pb::ListSessionMessagesRequest>,
    ) -> Result<Response<pb::ListSessionMessagesResponse>, Status> {
        Err(not_yet())
    }
    pub(super) async fn forget_session(
        &self,
        _r: Request<pb::ClearSessionRequest>,
    ) -> Result<Response<pb::ClearSessionResponse>, Status> {
        Err(not_yet())
    }
    pub(super) async fn feedback(
        &self,
        _r: Request<pb::SubmitFeedbackRequest>,
    ) -> Result<Response<pb::Feedback>, Status> {
        Err(not_yet())
    }
    pub(super) async fn feedback_list(
        &self,
        _r: Request<pb::ListFeedbackRequest>,
    ) -> Result<Response<pb::ListFeedbackResponse>, Status> {
        Err(not_yet())
    }
}
