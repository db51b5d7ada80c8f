//! The `workflows` row and its conversion to the domain type.

use chrono::{DateTime, Utc};
use engarde::kit::dialect::SqlUuid;
use engarde::kit::error::ServiceError;
use sqlx::types::Json;

use crate::domain::{Category, Status, Workflow, WorkflowConfig};

/// The columns of the definition itself, as an insert writes them.
pub const COLUMNS: &str = "id, tenant_id, name, description, category, config, status, is_template, version, \
                           created_at, updated_at";

/// What every read selects: the definition (`w`) and the reading tenant's own statistics of it
/// (`s`, none yet: zero), in [`WorkflowRow`]'s order. A template's statistics are per tenant
/// (migration 0005, sqlite 0004), so they are joined on the reader, never stored with the row.
pub const SELECT_COLUMNS: &str = "w.id, w.tenant_id, w.name, w.description, w.category, w.config, w.status, \
                                  w.is_template, COALESCE(s.execution_count, 0) AS execution_count, \
                                  COALESCE(s.success_count, 0) AS success_count, w.version, w.created_at, \
                                  w.updated_at";

/// The `FROM` of every read: workflows, each with the statistics of the tenant bound as
/// parameter `$tenant_param`.
pub fn from_workflows_of(tenant_param: u8) -> String {
    format!("workflows w LEFT JOIN workflow_statistics s ON s.workflow_id = w.id AND s.tenant_id = ${tenant_param}")
}

#[derive(sqlx::FromRow)]
pub struct WorkflowRow {
    pub id: SqlUuid,
    pub tenant_id: String,
    pub name: String,
    pub description: String,
    pub category: String,
    pub config: Json<WorkflowConfig>,
    pub status: String,
    pub is_template: bool,
    pub execution_count: i64,
    pub success_count: i64,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl TryFrom<WorkflowRow> for Workflow {
    type Error = ServiceError;

    fn try_from(row: WorkflowRow) -> Result<Self, Self::Error> {
        let corrupt =
            |what: &str| ServiceError::internal(anyhow::anyhow!("workflow {}: corrupt {what} in database", row.id.0));
        Ok(Workflow {
            id: row.id.0,
            category: Category::parse(&row.category).ok_or_else(|| corrupt("category"))?,
            status: Status::parse(&row.status).ok_or_else(|| corrupt("status"))?,
            tenant_id: row.tenant_id,
            name: row.name,
            description: row.description,
            config: row.config.0,
            is_template: row.is_template,
            execution_count: row.execution_count,
            success_count: row.success_count,
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}
