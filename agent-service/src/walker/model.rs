//! The walker's types live in the domain ([`crate::domain::run`]); this name stays for the
//! walker's own modules and the gRPC layer.

pub use crate::domain::run::*;
