//! Conversions between the execution contracts and the execution model.

use engarde::kit::error::{ServiceError, ServiceResult};
use engarde::proto::agent::v1 as pb;

use super::convert::timestamp;
use crate::execution::StreamItem;
use crate::execution::model::{Execution, ExecutionStatus, Feedback, MessageRole, Session, SessionMessage};

pub fn execution_status_to_pb(s: ExecutionStatus) -> pb::ExecutionStatus {
    match s {
        ExecutionStatus::Running => pb::ExecutionStatus::Running,
        ExecutionStatus::Succeeded => pb::ExecutionStatus::Succeeded,
        ExecutionStatus::Failed => pb::ExecutionStatus::Failed,
    }
}

/// A status filter: `Ok(None)` for UNSPECIFIED, an error for a number that is none.
pub fn execution_status_from_pb(field: &str, value: i32) -> ServiceResult<Option<ExecutionStatus>> {
    match pb::ExecutionStatus::try_from(value) {
        Ok(pb::ExecutionStatus::Unspecified) => Ok(None),
        Ok(pb::ExecutionStatus::Running) => Ok(Some(ExecutionStatus::Running)),
        Ok(pb::ExecutionStatus::Succeeded) => Ok(Some(ExecutionStatus::Succeeded)),
        Ok(pb::ExecutionStatus::Failed) => Ok(Some(ExecutionStatus::Failed)),
        Err(_) => Err(ServiceError::invalid(field, format!("{value} is not an execution status"))),
    }
}

pub fn execution_to_pb(e: &Execution) -> pb::Execution {
    pb::Execution {
        id: e.id.to_string(),
        agent_id: e.agent_id.to_string(),
        session_id: e.session_id.clone(),
        input: e.input.clone(),
        output: e.output.clone(),
        status: execution_status_to_pb(e.status) as i32,
        error: e.error.clone(),
        latency_ms: e.latency_ms,
        step_id: e.step_id.clone(),
        start_time: Some(timestamp(e.started_at)),
        finish_time: e.finished_at.map(timestamp),
        token_usage: e.usage.map(super::convert::usage_to_pb),
    }
}

pub fn session_to_pb(s: &Session) -> pb::Session {
    pb::Session {
        session_id: s.session_id.clone(),
        message_count: s.message_count,
        last_message_time: Some(timestamp(s.last_message_at)),
    }
}

pub fn message_to_pb(m: &SessionMessage) -> pb::SessionMessage {
    pb::SessionMessage {
        sequence: m.sequence,
        role: match m.role {
            MessageRole::User => pb::MessageRole::User,
            MessageRole::Agent => pb::MessageRole::Agent,
        } as i32,
        text: m.text.clone(),
        execution_id: m.execution_id.to_string(),
        create_time: Some(timestamp(m.created_at)),
    }
}

pub fn feedback_to_pb(f: &Feedback) -> pb::Feedback {
    pb::Feedback {
        id: f.id.to_string(),
        execution_id: f.execution_id.to_string(),
        agent_id: f.agent_id.to_string(),
        score: f.score,
        comment: f.comment.clone(),
        create_time: Some(timestamp(f.created_at)),
    }
}

pub fn stream_item_to_pb(item: &StreamItem) -> pb::ExecutionEvent {
    use pb::execution_event::Event;
    let event = match item {
        StreamItem::Started(e) => Event::Started(execution_to_pb(e)),
        StreamItem::Text(text) => Event::OutputText(text.clone()),
        StreamItem::LangflowEvent(name) => Event::LangflowEvent(name.clone()),
        StreamItem::Finished(e) => Event::Finished(execution_to_pb(e)),
    };
    pb::ExecutionEvent { event: Some(event) }
}
