//! The `workflows` row and its conversion to the domain type.

use chrono::{DateTime, Utc};
use engarde::kit::dialect::SqlUuid;
use engarde::kit::error::ServiceError;
use sqlx::types::Json;

use crate::domain::{Category, Status, Workflow, WorkflowConfig};

/// The columns every query selects, in this order.
pub const COLUMNS: &str = "id, tenant_id, name, description, category, config, status, is_template, \
                           execution_count, success_count, version, created_at, updated_at";

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
