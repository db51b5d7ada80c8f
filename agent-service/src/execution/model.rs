//! The execution types live in the domain ([`crate::domain::execution`]); this name stays for
//! the executor's own modules and the gRPC layer.

pub use crate::domain::execution::*;
