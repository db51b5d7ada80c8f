//! Importing the platform's `workflow_definitions`: read the source's rows, map each one (see
//! [`crate::domain::platform`]), and import it through the repository, one transaction per row,
//! so that a bad row is reported and the others still come in.

use engarde::kit::error::ServiceResult;
use engarde::kit::import::{self, ImportReport, Outcome, RowReport, SourceUrl};
use sqlx::postgres::PgConnection;

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

/// The source rows, each column cast to what the mapping reads (so an `id` of type uuid or
/// text, a `workflow_config` of type json or jsonb, are all read the same), in id order.
async fn read(
    connection: &mut PgConnection,
    schema: &str,
    tenant: Option<&str>,
    max_rows: u32,
) -> ServiceResult<Vec<PlatformWorkflow>> {
    type Row = (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<bool>,
        Option<i64>,
        Option<f64>,
    );
    // `schema` is a checked identifier (engarde::kit::import::check_schema), quoted here.
    let sql = format!(
        "SELECT id::text, tenant_id::text, name::text, description::text, category::text, \
                workflow_config::text, status::text, is_template::boolean, execution_count::bigint, \
                success_rate::float8 \
         FROM \"{schema}\".{TABLE} WHERE $1::text IS NULL OR tenant_id::text = $1 \
         ORDER BY id::text LIMIT $2"
    );
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(i64::from(max_rows) + 1)
        .fetch_all(connection)
        .await
        .map_err(|e| import::read_error(TABLE, e))?;
    if rows.len() > max_rows as usize {
        return Err(import::too_many_rows(TABLE, max_rows));
    }
    Ok(rows
        .into_iter()
        .map(
            |(
                id,
                tenant_id,
                name,
                description,
                category,
                workflow_config,
                status,
                is_template,
                execution_count,
                success_rate,
            )| {
                PlatformWorkflow {
                    id,
                    tenant_id,
                    name,
                    description,
                    category,
                    workflow_config,
                    status,
                    is_template,
                    execution_count,
                    success_rate,
                }
            },
        )
        .collect())
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
