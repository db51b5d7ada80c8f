//! The gRPC face of the service: thin adapters that parse requests into domain values, call the
//! repository or the provisioner and convert the answers.

mod agent_service;
mod convert;
mod execution;
mod execution_convert;
mod linkage;
mod walker;

pub use agent_service::AgentApi;
