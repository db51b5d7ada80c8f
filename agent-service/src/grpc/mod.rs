//! The gRPC face of the service: thin adapters that parse requests into domain values, call the
//! repository, the provisioner, the executor or the walker, and convert the answers. One file per
//! service of `engarde.agent.v1`, each implementing its generated trait directly.

mod agent_service;
mod caller;
mod convert;
mod execution_convert;
mod execution_service;
mod linkage;
mod run_convert;
mod run_service;

pub use agent_service::AgentApi;
pub use execution_service::ExecutionApi;
pub use run_service::RunApi;
