//! LinkAgentFlow, UnlinkAgentFlow, RegenerateAgentFlow, CheckAgentLinks.

use engarde::proto::agent::v1 as pb;
use tonic::{Request, Response, Status};

use super::agent_service::AgentApi;

fn not_yet() -> Status {
    Status::unimplemented("linkage is being built")
}

impl AgentApi {
    pub(super) async fn link_flow(&self, _r: Request<pb::LinkAgentFlowRequest>) -> Result<Response<pb::Agent>, Status> {
        Err(not_yet())
    }
    pub(super) async fn unlink_flow(
        &self,
        _r: Request<pb::UnlinkAgentFlowRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        Err(not_yet())
    }
    pub(super) async fn regenerate_flow(
        &self,
        _r: Request<pb::RegenerateAgentFlowRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        Err(not_yet())
    }
    pub(super) async fn check_links(
        &self,
        _r: Request<pb::CheckAgentLinksRequest>,
    ) -> Result<Response<pb::CheckAgentLinksResponse>, Status> {
        Err(not_yet())
    }
}
