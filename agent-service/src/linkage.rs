//! The link between agents and their Langflow flows: making, replacing and removing flows, with
//! compensation so that a failure leaves neither a half-made agent nor an orphan flow.

use std::sync::Arc;

use crate::langflow::LangflowClient;

/// Makes, checks and removes agents' flows. Without a Langflow configured it answers
/// FAILED_PRECONDITION for everything that needs one.
#[derive(Clone)]
pub struct FlowLinker {
    pub langflow: Option<Arc<LangflowClient>>,
}
