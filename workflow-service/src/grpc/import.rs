//! `ImportWorkflows`: the caller's tenant's rows of the platform's table, from the source the
//! operator configured (never from a request), into this service.

use engarde::kit::auth::Tenant;
use engarde::kit::error::ServiceResult;
use engarde::kit::import::ImportConfig;
use engarde::proto::workflow::v1 as pb;

use crate::storage::WorkflowRepository;

/// Runs the import for `tenant` as `request` asks.
pub async fn import_workflows(
    repo: &dyn WorkflowRepository,
    settings: &ImportConfig,
    tenant: &Tenant,
    request: pb::ImportWorkflowsRequest,
) -> ServiceResult<pb::ImportWorkflowsResponse> {
    let source = settings.source_for(&request.schema)?;
    let report = crate::import::run(
        repo,
        source,
        &request.schema,
        Some(tenant.as_str()),
        settings.import_max_rows,
        request.dry_run,
    )
    .await?;
    let answer = report.answer("workflows");
    Ok(pb::ImportWorkflowsResponse {
        dry_run: report.dry_run,
        rows: answer.rows,
        created: answer.created,
        updated: answer.updated,
        unchanged: answer.unchanged,
        failed: answer.failed,
    })
}
