//! workflow-service: owns EnGarde's workflow definitions (the built-in template library and each
//! tenant's workflows), their lifecycle and their execution statistics.

pub mod config;
pub mod domain;
pub mod grpc;
pub mod import;
pub mod startup;
pub mod storage;
