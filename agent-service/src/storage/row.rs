//! The `agents` row and its conversion to the domain type.

use chrono::{DateTime, Utc};
use engarde::kit::dialect::SqlUuid;
use engarde::kit::error::ServiceError;
use engarde::proto::workflow::v1 as workflow_pb;
use prost::Message as _;
use sqlx::types::Json;

use crate::domain::execution::TokenUsage;
use crate::domain::run::has_scheduled_trigger;
use crate::domain::{Agent, AgentConfig, AgentStatus, AgentType, FlowOrigin, WorkflowCategory, WorkflowSnapshot};

/// The columns every query selects and every insert writes, in this order.
pub const COLUMNS: &str = "id, tenant_id, name, description, agent_type, status, status_reason, \
                           langflow_workflow_id, langflow_deployment_id, source_workflow_id, \
                           source_workflow_version, source_workflow_name, source_workflow_category, \
                           source_workflow_config, configuration, capabilities, total_executions, \
                           successful_executions, average_response_time_ms, version, created_at, updated_at, \
                           flow_origin, feedback_count, feedback_score_sum, prompt_tokens, completion_tokens";

#[derive(sqlx::FromRow)]
pub struct AgentRow {
    pub id: SqlUuid,
    pub tenant_id: String,
    pub name: String,
    pub description: String,
    pub agent_type: String,
    pub status: String,
    pub status_reason: String,
    pub langflow_workflow_id: String,
    pub langflow_deployment_id: String,
    pub source_workflow_id: Option<SqlUuid>,
    pub source_workflow_version: Option<i64>,
    pub source_workflow_name: Option<String>,
    pub source_workflow_category: Option<String>,
    pub source_workflow_config: Option<Vec<u8>>,
    pub configuration: Json<AgentConfig>,
    pub capabilities: Json<Vec<String>>,
    pub total_executions: i64,
    pub successful_executions: i64,
    pub average_response_time_ms: f64,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub flow_origin: String,
    pub feedback_count: i64,
    pub feedback_score_sum: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

/// The snapshot columns of an agent, as written.
pub struct SnapshotColumns {
    pub workflow_id: Option<SqlUuid>,
    pub version: Option<i64>,
    pub name: Option<String>,
    pub category: Option<&'static str>,
    pub config: Option<Vec<u8>>,
}

impl SnapshotColumns {
    /// Whether an agent with this snapshot has a scheduled trigger (the `scheduled` column).
    pub fn scheduled(snapshot: Option<&WorkflowSnapshot>) -> bool {
        snapshot.is_some_and(|s| has_scheduled_trigger(&s.config))
    }

    pub fn of(snapshot: Option<&WorkflowSnapshot>) -> Self {
        match snapshot {
            None => Self { workflow_id: None, version: None, name: None, category: None, config: None },
            Some(s) => Self {
                workflow_id: Some(SqlUuid(s.workflow_id)),
                version: Some(s.workflow_version),
                name: Some(s.workflow_name.clone()),
                category: Some(s.category.as_str()),
                config: Some(s.config.encode_to_vec()),
            },
        }
    }
}

impl TryFrom<AgentRow> for Agent {
    type Error = ServiceError;

    fn try_from(row: AgentRow) -> Result<Self, Self::Error> {
        let corrupt =
            |what: &str| ServiceError::internal(anyhow::anyhow!("agent {}: corrupt {what} in database", row.id.0));
        let snapshot = match (
            &row.source_workflow_id,
            row.source_workflow_version,
            &row.source_workflow_name,
            &row.source_workflow_category,
            &row.source_workflow_config,
        ) {
            (None, None, None, None, None) => None,
            (Some(id), Some(version), Some(name), Some(category), Some(config)) => Some(WorkflowSnapshot {
                workflow_id: id.0,
                workflow_version: version,
                workflow_name: name.clone(),
                category: WorkflowCategory::parse(category).ok_or_else(|| corrupt("source_workflow_category"))?,
                config: workflow_pb::WorkflowConfig::decode(config.as_slice())
                    .map_err(|_| corrupt("source_workflow_config"))?,
            }),
            _ => return Err(corrupt("snapshot")),
        };
        Ok(Agent {
            id: row.id.0,
            agent_type: AgentType::parse(&row.agent_type).ok_or_else(|| corrupt("agent_type"))?,
            status: AgentStatus::parse(&row.status).ok_or_else(|| corrupt("status"))?,
            flow_origin: FlowOrigin::parse(&row.flow_origin).ok_or_else(|| corrupt("flow_origin"))?,
            snapshot,
            tenant_id: row.tenant_id,
            name: row.name,
            description: row.description,
            status_reason: row.status_reason,
            langflow_workflow_id: row.langflow_workflow_id,
            langflow_deployment_id: row.langflow_deployment_id,
            configuration: row.configuration.0,
            capabilities: row.capabilities.0,
            total_executions: row.total_executions,
            successful_executions: row.successful_executions,
            average_response_time_ms: row.average_response_time_ms,
            feedback_count: row.feedback_count,
            feedback_score_sum: row.feedback_score_sum,
            usage: TokenUsage { prompt_tokens: row.prompt_tokens, completion_tokens: row.completion_tokens },
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}
