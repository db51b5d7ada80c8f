//! `ImportAgents`: the caller's tenant's rows of the platform's `ai_agents`, from the source the
//! operator configured (never from a request), into this service.

use engarde::kit::error::{ServiceError, ServiceResult};
use engarde::kit::import::ImportConfig;
use engarde::proto::agent::v1 as pb;

use super::caller::Caller;
use crate::import::{AgentImporter, Scope};

/// Runs the import for the caller as `request` asks.
pub(super) async fn import_agents(
    importer: Option<&AgentImporter>,
    settings: &ImportConfig,
    caller: Caller,
    request: pb::ImportAgentsRequest,
) -> ServiceResult<pb::ImportAgentsResponse> {
    let source = settings.source_for(&request.schema)?;
    // Every server built with a source has an importer (AgentApi::with_import sets both).
    let importer =
        importer.ok_or_else(|| ServiceError::FailedPrecondition("import is not enabled on this server".into()))?;
    let scope = Scope::Caller(caller.credentials, caller.tenant);
    let report = importer.run(source, &request.schema, &scope, settings.import_max_rows, request.dry_run).await?;
    let answer = report.answer("agents");
    Ok(pb::ImportAgentsResponse {
        dry_run: report.dry_run,
        rows: answer.rows,
        created: answer.created,
        updated: answer.updated,
        unchanged: answer.unchanged,
        failed: answer.failed,
    })
}
