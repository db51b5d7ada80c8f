//! `ImportAgents`: the caller's tenant's rows of the platform's `ai_agents`, from the source the
//! operator configured (never from a request), into this service.

use engarde::kit::error::{ServiceError, ServiceResult};
use engarde::kit::import::{ImportConfig, ImportReport, Outcome, check_schema};
use engarde::proto::agent::v1 as pb;
use engarde::proto::workflow::v1 as workflow_pb;

use super::caller::Caller;
use crate::import::{AgentImporter, Scope};

/// Runs the import for the caller as `request` asks.
pub(super) async fn import_agents(
    importer: Option<&AgentImporter>,
    settings: &ImportConfig,
    caller: Caller,
    request: pb::ImportAgentsRequest,
) -> ServiceResult<pb::ImportAgentsResponse> {
    let (Some(importer), Some(source)) = (importer, &settings.import_source_url) else {
        return Err(ServiceError::FailedPrecondition(
            "import is not enabled: the operator configures its source (IMPORT_SOURCE_URL)".into(),
        ));
    };
    check_schema("schema", &request.schema).map_err(|v| ServiceError::InvalidArgument(vec![v]))?;
    let scope = Scope::Caller(caller.credentials, caller.tenant);
    let report = importer.run(source, &request.schema, &scope, settings.import_max_rows, request.dry_run).await?;
    let answer = report_to_pb(&report);
    tracing::info!(
        dry_run = request.dry_run,
        created = answer.created,
        updated = answer.updated,
        unchanged = answer.unchanged,
        failed = answer.failed,
        "agents imported"
    );
    Ok(answer)
}

fn report_to_pb(report: &ImportReport) -> pb::ImportAgentsResponse {
    pb::ImportAgentsResponse {
        dry_run: report.dry_run,
        rows: report
            .rows
            .iter()
            .map(|row| workflow_pb::ImportedRow {
                id: row.id.clone(),
                outcome: match row.outcome {
                    Outcome::Created => workflow_pb::ImportOutcome::Created,
                    Outcome::Updated => workflow_pb::ImportOutcome::Updated,
                    Outcome::Unchanged => workflow_pb::ImportOutcome::Unchanged,
                    Outcome::Failed => workflow_pb::ImportOutcome::Failed,
                } as i32,
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
