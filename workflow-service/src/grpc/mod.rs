//! The gRPC face of the service: thin adapters that parse requests into domain values, call the
//! repository and convert the answers.

mod convert;
mod import;
mod workflow_service;

pub use workflow_service::{AnswerLimits, WorkflowApi};
