//! Running agents through Langflow: executions, conversation memory, feedback, and the outbox
//! that reports executions to workflow-service.

/// Runs agents and records what happened.
#[derive(Clone)]
pub struct Executor {}
