//! Importing the platform's `workflow_definitions`: read the source's rows, map each one (see
//! [`crate::domain::platform`]), and import it through the repository, one transaction per row,
//! so that a bad row is reported and the others still come in.

use engarde::kit::error::ServiceResult;
use engarde::kit::import::{self, ImportReport, Outcome, RowReport, SourceUrl};
use sqlx::postgres::{PgConnection, PgRow};

use crate::domain::platform::{self, PlatformWorkflow};
use crate::storage::{ImportApplied, WorkflowRepository};

/// The source's table.
const TABLE: &str = "workflow_definitions";

/// Imports the rows of `tenant` (every tenant's for `None`: the operator's command) from the
/// `schema` of the source, reading at most `max_rows` of them.
pub async fn run(
    repo: &dyn WorkflowRepository,
    source: &SourceUrl,
    schema: &str,
    tenant: Option<&str>,
    max_rows: u32,
    dry_run: bool,
) -> ServiceResult<ImportReport> {
    let rows = {
        let mut connection = source.connect().await?;
        let rows = read(&mut connection, schema, tenant, max_rows).await;
        // The session is only ever read from; closing it cannot lose anything.
        let _ = sqlx::Connection::close(connection).await;
        rows?
    };
    import_rows(repo, &rows, dry_run).await
}

/// The source's `workflow_definitions` rows, each column cast to what the mapping reads.
async fn read(
    connection: &mut PgConnection,
    schema: &str,
    tenant: Option<&str>,
    max_rows: u32,
) -> ServiceResult<Vec<PlatformWorkflow>> {
    let source = import::SourceTable {
        schema,
        table: TABLE,
        columns: "id::text, tenant_id::text, name::text, description::text, category::text, \
                  workflow_config::text, status::text, is_template::boolean, execution_count::bigint, \
                  success_rate::float8",
    };
    import::read_source(connection, source, tenant, max_rows, platform_workflow).await
}

fn platform_workflow(row: &PgRow) -> Result<PlatformWorkflow, sqlx::Error> {
    use sqlx::Row as _;
    Ok(PlatformWorkflow {
        id: row.try_get(0)?,
        tenant_id: row.try_get(1)?,
        name: row.try_get(2)?,
        description: row.try_get(3)?,
        category: row.try_get(4)?,
        workflow_config: row.try_get(5)?,
        status: row.try_get(6)?,
        is_template: row.try_get(7)?,
        execution_count: row.try_get(8)?,
        success_rate: row.try_get(9)?,
    })
}

/// Maps and imports `rows`, one at a time.
pub async fn import_rows(
    repo: &dyn WorkflowRepository,
    rows: &[PlatformWorkflow],
    dry_run: bool,
) -> ServiceResult<ImportReport> {
    let now = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6);
    let mut report = ImportReport { dry_run, rows: Vec::with_capacity(rows.len()) };
    for row in rows {
        let id = row.id.clone().unwrap_or_default();
        let mapped = match platform::map_workflow(row, now) {
            Ok(mapped) => mapped,
            Err(reason) => {
                tracing::info!(workflow_id = %id, reason, "platform workflow not imported");
                report.rows.push(RowReport::failed(id, reason));
                continue;
            }
        };
        let outcome = match repo.import(&mapped.workflow, dry_run).await? {
            ImportApplied::Created => Outcome::Created,
            ImportApplied::Updated => Outcome::Updated,
            ImportApplied::Unchanged => Outcome::Unchanged,
            ImportApplied::Refused(reason) => {
                report.rows.push(RowReport { reason, ..RowReport::failed(id, "") });
                continue;
            }
        };
        report.rows.push(RowReport { id, outcome, reason: String::new(), notes: mapped.notes });
    }
    Ok(report)
}
