//! `engarde.agent.v1.ExecutionService`: ExecuteAgent, StreamExecuteAgent, executions, memory
//! (sessions) and learning (feedback), over the executor and its execution repository.

use std::pin::Pin;
use std::time::Duration;

use engarde::kit::deadline::CallDeadline;
use engarde::kit::error::{FieldViolation, ServiceError, ServiceResult};
use engarde::kit::idempotency::IdempotencyKey;
use engarde::kit::page_budget::PageBudget;
use engarde::kit::pagination::{PageRequest, filter_fingerprint, time_id_key};
use engarde::kit::request::{collect_id, invalid_if_any, parse_id};
use engarde::proto::agent::v1 as pb;
use engarde::proto::agent::v1::execution_service_server::ExecutionService;
use futures::Stream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::caller::handle;
use super::execution_convert::{
    execution_status_from_pb, execution_to_pb, feedback_to_pb, message_to_pb, session_to_pb, stream_item_to_pb,
};
use crate::execution::model::{ExecutionFilter, check_feedback, check_input, check_session_id, valid_session_id};
use crate::execution::{ExecuteRequest, Executor};
use crate::storage::feedback::NewFeedback;

/// The service's handlers, over the executor (which owns the execution repository).
#[derive(Clone)]
pub struct ExecutionApi {
    executor: Executor,
    /// How many bytes of items one page of a List answer may carry.
    pages: PageBudget,
}

impl ExecutionApi {
    pub fn new(executor: Executor, pages: PageBudget) -> Self {
        Self { executor, pages }
    }
}

/// The events of a streamed execution.
pub type ExecutionEventStream = Pin<Box<dyn Stream<Item = Result<pb::ExecutionEvent, Status>> + Send>>;

/// The time left until the call's deadline, as the kit's call layer fixed it on arrival (the
/// caller's `grpc-timeout` or RPC_TIMEOUT_SECS): the answer must beat the layer's own.
fn caller_deadline<T>(request: &Request<T>) -> Option<Duration> {
    request.extensions().get::<CallDeadline>().map(CallDeadline::remaining)
}

/// ExecuteAgent's request (or StreamExecuteAgent's), checked field by field.
fn parse_execute(req: &pb::ExecuteAgentRequest, deadline: Option<Duration>) -> ServiceResult<ExecuteRequest> {
    // One fingerprint for both: a unary call retried as a stream (or the other way round) asks
    // for the same execution, and is answered it.
    let key = IdempotencyKey::from_request("ExecuteAgent", &req.request_id, req)?;
    let mut violations = Vec::new();
    let agent_id = collect_id("agent_id", &req.agent_id, &mut violations);
    check_input("input", &req.input, &mut violations);
    if !req.session_id.is_empty() {
        check_session_id("session_id", &req.session_id, &mut violations);
    }
    if req.step_id.len() > 64 {
        violations.push(FieldViolation::new("step_id", "must be at most 64 characters"));
    }
    invalid_if_any(violations)?;
    let Some(agent_id) = agent_id else {
        return Err(ServiceError::internal(anyhow::anyhow!("validated request lost its agent id")));
    };
    Ok(ExecuteRequest {
        agent_id,
        input: req.input.clone(),
        session_id: req.session_id.clone(),
        step_id: req.step_id.clone(),
        key,
        deadline,
    })
}

/// The agent and session of a memory request.
fn parse_session(agent_id: &str, session_id: &str) -> ServiceResult<(Uuid, String)> {
    let mut violations = Vec::new();
    let agent = collect_id("agent_id", agent_id, &mut violations);
    check_session_id("session_id", session_id, &mut violations);
    invalid_if_any(violations)?;
    let Some(agent) = agent else {
        return Err(ServiceError::internal(anyhow::anyhow!("validated request lost its agent id")));
    };
    Ok((agent, session_id.to_owned()))
}

#[tonic::async_trait]
impl ExecutionService for ExecutionApi {
    #[tracing::instrument(skip_all)]
    async fn execute_agent(
        &self,
        request: Request<pb::ExecuteAgentRequest>,
    ) -> Result<Response<pb::ExecuteAgentResponse>, Status> {
        let deadline = caller_deadline(&request);
        handle(request, |caller, req| async move {
            let request = parse_execute(&req, deadline)?;
            let execution = self.executor.execute(caller.tenant.as_str(), request).await?;
            Ok(pb::ExecuteAgentResponse { execution: Some(execution_to_pb(&execution)) })
        })
        .await
    }

    type StreamExecuteAgentStream = ExecutionEventStream;

    #[tracing::instrument(skip_all)]
    async fn stream_execute_agent(
        &self,
        request: Request<pb::ExecuteAgentRequest>,
    ) -> Result<Response<Self::StreamExecuteAgentStream>, Status> {
        let deadline = caller_deadline(&request);
        handle(request, |caller, req| async move {
            let request = parse_execute(&req, deadline)?;
            let receiver = self.executor.execute_streamed(caller.tenant.as_str(), request).await?;
            let events = futures::stream::unfold(receiver, |mut receiver| async move {
                let item = receiver.recv().await?;
                Some((item.map(|i| stream_item_to_pb(&i)).map_err(Status::from), receiver))
            });
            Ok(Box::pin(events) as ExecutionEventStream)
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn get_execution(
        &self,
        request: Request<pb::GetExecutionRequest>,
    ) -> Result<Response<pb::Execution>, Status> {
        handle(request, |caller, req| async move {
            let id = parse_id("id", &req.id)?;
            Ok(execution_to_pb(&self.executor.executions().get(caller.tenant.as_str(), id).await?))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn list_executions(
        &self,
        request: Request<pb::ListExecutionsRequest>,
    ) -> Result<Response<pb::ListExecutionsResponse>, Status> {
        handle(request, |caller, req| async move {
            let mut violations = Vec::new();
            let agent_id =
                if req.agent_id.is_empty() { None } else { collect_id("agent_id", &req.agent_id, &mut violations) };
            if !req.session_id.is_empty() && !valid_session_id(&req.session_id) {
                check_session_id("session_id", &req.session_id, &mut violations);
            }
            let status = match execution_status_from_pb("status", req.status) {
                Ok(s) => s,
                Err(ServiceError::InvalidArgument(v)) => {
                    violations.extend(v);
                    None
                }
                Err(e) => return Err(e),
            };
            invalid_if_any(violations)?;
            let session_id = (!req.session_id.is_empty()).then(|| req.session_id.clone());
            let filter = ExecutionFilter { agent_id, session_id, status };
            let parts = filter.fingerprint_parts();
            let fingerprint = filter_fingerprint(&parts.iter().map(String::as_str).collect::<Vec<_>>());
            let page = PageRequest::parse(req.page_size, &req.page_token, fingerprint)?;
            let executions = self.executor.executions().list(caller.tenant.as_str(), &filter, &page).await?;
            let filled = page.fill(
                &executions,
                self.pages,
                execution_to_pb,
                |e| time_id_key(e.started_at, e.id),
                |e| format!("execution {}", e.id),
            )?;
            Ok(pb::ListExecutionsResponse { next_page_token: filled.next_page_token, executions: filled.items })
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        handle(request, |caller, req| async move {
            let agent_id = parse_id("agent_id", &req.agent_id)?;
            let fingerprint = filter_fingerprint(&["sessions", &req.agent_id]);
            let page = PageRequest::parse(req.page_size, &req.page_token, fingerprint)?;
            let sessions = self.executor.executions().sessions(caller.tenant.as_str(), agent_id, &page).await?;
            let filled = page.fill(
                &sessions,
                self.pages,
                session_to_pb,
                |s| time_id_key(s.last_message_at, &s.session_id),
                |s| format!("session {}", s.session_id),
            )?;
            Ok(pb::ListSessionsResponse { next_page_token: filled.next_page_token, sessions: filled.items })
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn list_session_messages(
        &self,
        request: Request<pb::ListSessionMessagesRequest>,
    ) -> Result<Response<pb::ListSessionMessagesResponse>, Status> {
        handle(request, |caller, req| async move {
            let (agent_id, session_id) = parse_session(&req.agent_id, &req.session_id)?;
            let fingerprint = filter_fingerprint(&["messages", &req.agent_id, &session_id]);
            let page = PageRequest::parse(req.page_size, &req.page_token, fingerprint)?;
            let messages =
                self.executor.executions().messages(caller.tenant.as_str(), agent_id, &session_id, &page).await?;
            let filled = page.fill(
                &messages,
                self.pages,
                message_to_pb,
                |m| vec![m.sequence.to_string()],
                |m| format!("message {} of session {session_id}", m.sequence),
            )?;
            Ok(pb::ListSessionMessagesResponse { next_page_token: filled.next_page_token, messages: filled.items })
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn clear_session(
        &self,
        request: Request<pb::ClearSessionRequest>,
    ) -> Result<Response<pb::ClearSessionResponse>, Status> {
        handle(request, |caller, req| async move {
            let key = IdempotencyKey::from_request("ClearSession", &req.request_id, &req)?;
            let (agent_id, session_id) = parse_session(&req.agent_id, &req.session_id)?;
            let cleared = self
                .executor
                .executions()
                .clear_session(caller.tenant.as_str(), agent_id, &session_id, key.as_ref())
                .await?;
            tracing::info!(agent_id = %agent_id, session_id, cleared, "session cleared");
            Ok(pb::ClearSessionResponse { cleared })
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn submit_feedback(
        &self,
        request: Request<pb::SubmitFeedbackRequest>,
    ) -> Result<Response<pb::Feedback>, Status> {
        handle(request, |caller, req| async move {
            let key = IdempotencyKey::from_request("SubmitFeedback", &req.request_id, &req)?;
            let mut violations = Vec::new();
            let execution_id = collect_id("execution_id", &req.execution_id, &mut violations);
            check_feedback(req.score, &req.comment, &mut violations);
            invalid_if_any(violations)?;
            let Some(execution_id) = execution_id else {
                return Err(ServiceError::internal(anyhow::anyhow!("validated request lost its execution id")));
            };
            let new = NewFeedback {
                id: Uuid::now_v7(),
                execution_id,
                score: req.score,
                comment: req.comment,
                created_at: crate::domain::now(),
            };
            let feedback = self.executor.executions().add_feedback(caller.tenant.as_str(), new, key.as_ref()).await?;
            tracing::info!(execution_id = %execution_id, score = feedback.score, "feedback recorded");
            Ok(feedback_to_pb(&feedback))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn list_feedback(
        &self,
        request: Request<pb::ListFeedbackRequest>,
    ) -> Result<Response<pb::ListFeedbackResponse>, Status> {
        handle(request, |caller, req| async move {
            let agent_id = parse_id("agent_id", &req.agent_id)?;
            let fingerprint = filter_fingerprint(&["feedback", &req.agent_id]);
            let page = PageRequest::parse(req.page_size, &req.page_token, fingerprint)?;
            let feedback = self.executor.executions().feedback(caller.tenant.as_str(), agent_id, &page).await?;
            let filled = page.fill(
                &feedback,
                self.pages,
                feedback_to_pb,
                |f| time_id_key(f.created_at, f.id),
                |f| format!("feedback {}", f.id),
            )?;
            Ok(pb::ListFeedbackResponse { next_page_token: filled.next_page_token, feedback: filled.items })
        })
        .await
    }
}
