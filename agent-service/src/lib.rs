//! agent-service: owns EnGarde's AI agents: their making from workflows (one at a time or by
//! provisioning a whole tenant), configuration, lifecycle and upgrades to newer workflow
//! versions, and walker runs through workflows (durable, reviewed, scheduled). It reads workflows
//! from workflow-service over gRPC and never touches its tables.

pub mod agent_flows;
pub mod config;
pub mod domain;
pub mod execution;
pub mod flow_mark;
pub mod flow_reconciler;
pub mod grpc;
pub mod import;
pub mod langflow;
pub mod linkage;
pub mod provisioner;
pub mod retention;
pub mod startup;
pub mod storage;
pub mod walker;
pub mod workflows;
