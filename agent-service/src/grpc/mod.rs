//! The gRPC face of the service: thin adapters that parse requests into domain values, call the
//! repository or a use-case (the provisioner, agent_flows, the executor, the walker), and convert
//! the answers. One file per service of `engarde.agent.v1`, each implementing its generated
//! trait directly.

mod agent_service;
mod caller;
mod convert;
mod execution_convert;
mod execution_service;
mod import;
mod run_convert;
mod run_service;

pub use agent_service::AgentApi;
pub use execution_service::ExecutionApi;
pub use run_service::RunApi;
