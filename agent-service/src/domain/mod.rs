//! Agents as the service understands them: types, configuration validation, the lifecycle state
//! machine, the mapping from workflows, provisioning and upgrades. Nothing here knows about gRPC
//! transport or SQL; the snapshot keeps workflow-service's contract type (see [`model`]).

pub mod configuration;
pub mod default_model;
pub mod execution;
pub mod lifecycle;
pub mod mapping;
pub mod model;
pub mod platform;
pub mod provisioning;
pub mod run;
pub mod run_machine;
pub mod upgrade;

pub use model::*;
