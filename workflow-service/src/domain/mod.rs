//! Workflow definitions as the service understands them: types, validation, lifecycle rules and
//! the built-in template library. Nothing here knows about gRPC or SQL.

pub mod lifecycle;
pub mod model;
pub mod name_folding;
pub mod platform;
pub mod templates;
pub mod validation;

pub use model::*;
