//! `ImportWorkflows`: the caller's tenant's rows of the platform's table, from the source the
//! operator configured (never from a request), into this service.

use engarde::kit::auth::Tenant;
use engarde::kit::error::{ServiceError, ServiceResult};
use engarde::kit::import::{ImportConfig, ImportReport, Outcome, check_schema};
use engarde::proto::workflow::v1 as pb;

use crate::storage::WorkflowRepository;

/// Runs the import for `tenant` as `request` asks.
pub async fn import_workflows(
    repo: &dyn WorkflowRepository,
    settings: &ImportConfig,
    tenant: &Tenant,
    request: pb::ImportWorkflowsRequest,
) -> ServiceResult<pb::ImportWorkflowsResponse> {
    let Some(source) = &settings.import_source_url else {
        return Err(ServiceError::FailedPrecondition(
            "import is not enabled: the operator configures its source (IMPORT_SOURCE_URL)".into(),
        ));
    };
    check_schema("schema", &request.schema).map_err(|v| ServiceError::InvalidArgument(vec![v]))?;
    let report = crate::import::run(
        repo,
        source,
        &request.schema,
        Some(tenant.as_str()),
        settings.import_max_rows,
        request.dry_run,
    )
    .await?;
    let answer = report_to_pb(&report);
    tracing::info!(
        dry_run = request.dry_run,
        created = answer.created,
        updated = answer.updated,
        unchanged = answer.unchanged,
        failed = answer.failed,
        "workflows imported"
    );
    Ok(answer)
}

fn report_to_pb(report: &ImportReport) -> pb::ImportWorkflowsResponse {
    pb::ImportWorkflowsResponse {
        dry_run: report.dry_run,
        rows: report
            .rows
            .iter()
            .map(|row| pb::ImportedRow {
                id: row.id.clone(),
                outcome: outcome_to_pb(row.outcome) as i32,
                reason: row.reason.clone(),
                notes: row.notes.clone(),
            })
            .collect(),
        created: report.count(Outcome::Created),
        updated: report.count(Outcome::Updated),
        unchanged: report.count(Outcome::Unchanged),
        failed: report.count(Outcome::Failed),
    }
}

fn outcome_to_pb(outcome: Outcome) -> pb::ImportOutcome {
    match outcome {
        Outcome::Created => pb::ImportOutcome::Created,
        Outcome::Updated => pb::ImportOutcome::Updated,
        Outcome::Unchanged => pb::ImportOutcome::Unchanged,
        Outcome::Failed => pb::ImportOutcome::Failed,
    }
}
