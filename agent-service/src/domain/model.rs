//! The agent model. Serialised as JSON for the database's configuration column and for stored
//! idempotent answers.

use std::collections::BTreeMap;

use chrono::{DateTime, SubsecRound, Utc};
use engarde::proto::workflow::v1 as workflow_pb;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use engarde::named_enum;

named_enum!(
    /// What an agent does.
    AgentType {
        ContentGeneration => "content_generation",
        CopyGeneration => "copy_generation",
        AudienceAnalysis => "audience_analysis",
        CampaignOptimization => "campaign_optimization",
        AnalyticsReporting => "analytics_reporting",
        Walker => "walker",
    }
);

named_enum!(
    /// Lifecycle state; see [`super::lifecycle`].
    AgentStatus {
        Draft => "draft",
        Deployed => "deployed",
        Active => "active",
        Paused => "paused",
        Error => "error",
    }
);

named_enum!(
    /// The category of an agent's source workflow (owned by workflow-service; mirrored here so
    /// that agent-service stores and filters it without depending on that service's code).
    WorkflowCategory {
        ContentGeneration => "content_generation",
        AbTesting => "ab_testing",
        AudienceIntelligence => "audience_intelligence",
        BudgetOptimization => "budget_optimization",
        AnalyticsAutomation => "analytics_automation",
    }
);

named_enum!(
    /// The lifecycle state of a source workflow, as workflow-service reports it.
    WorkflowStatus {
        Draft => "draft",
        Active => "active",
        Archived => "archived",
    }
);

/// Which model an agent's flow runs on; empty or unset means the flow's default.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelSettings {
    pub provider: String,
    pub model_name: String,
    pub temperature: Option<f64>,
    pub max_tokens: Option<i32>,
}

/// How an agent speaks and which model it uses. Valid by construction once parsed at the edge
/// (see [`super::configuration`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentConfig {
    pub brand_voice: String,
    pub tone: String,
    pub target_audience: String,
    pub model: ModelSettings,
    /// Free-form settings; a BTreeMap so that they are stored and answered in a stable order.
    pub extra: BTreeMap<String, String>,
}

/// The source workflow of an agent as it was when the agent was made or last upgraded. The
/// config stays in workflow-service's contract type: agent-service does not own that model and
/// must not drift from it, so it keeps exactly what it was given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowSnapshot {
    pub workflow_id: Uuid,
    pub workflow_version: i64,
    pub workflow_name: String,
    pub category: WorkflowCategory,
    #[serde(with = "encoded_proto")]
    pub config: workflow_pb::WorkflowConfig,
}

/// A workflow as read from workflow-service, in the terms agent-service needs.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceWorkflow {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub category: WorkflowCategory,
    pub status: WorkflowStatus,
    pub is_template: bool,
    pub version: i64,
    pub config: workflow_pb::WorkflowConfig,
}

/// A stored agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    pub id: Uuid,
    pub tenant_id: String,
    pub name: String,
    pub description: String,
    pub agent_type: AgentType,
    pub status: AgentStatus,
    /// Why the agent is in ERROR; empty otherwise.
    pub status_reason: String,
    /// Set when the agent is linked to Langflow (a later issue); empty until then.
    pub langflow_workflow_id: String,
    pub langflow_deployment_id: String,
    /// `None` for stand-alone agents made without a workflow.
    pub snapshot: Option<WorkflowSnapshot>,
    pub configuration: AgentConfig,
    /// Sorted and unique.
    pub capabilities: Vec<String>,
    pub total_executions: i64,
    pub successful_executions: i64,
    pub average_response_time_ms: f64,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Agent {
    /// The opaque tag of this version.
    pub fn etag(&self) -> String {
        etag_of(self.version)
    }

    /// The id of the workflow the agent was made from, if any.
    pub fn source_workflow_id(&self) -> Option<Uuid> {
        self.snapshot.as_ref().map(|s| s.workflow_id)
    }
}

/// The fields of a new agent that a caller or the workflow mapping chooses.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAgent {
    pub name: String,
    pub description: String,
    pub agent_type: AgentType,
    pub snapshot: Option<WorkflowSnapshot>,
    pub configuration: AgentConfig,
    pub capabilities: Vec<String>,
}

impl NewAgent {
    /// A new draft owned by `tenant`.
    pub fn into_draft(self, tenant: &str, now: DateTime<Utc>) -> Agent {
        Agent {
            id: Uuid::now_v7(),
            tenant_id: tenant.to_owned(),
            name: self.name,
            description: self.description,
            agent_type: self.agent_type,
            status: AgentStatus::Draft,
            status_reason: String::new(),
            langflow_workflow_id: String::new(),
            langflow_deployment_id: String::new(),
            snapshot: self.snapshot,
            configuration: self.configuration,
            capabilities: self.capabilities,
            total_executions: 0,
            successful_executions: 0,
            average_response_time_ms: 0.0,
            version: 1,
            created_at: now,
            updated_at: now,
        }
    }
}

/// The current time at the precision both databases keep (microseconds), so that a time read
/// back (e.g. the sort key in a page token) compares equal to the one written.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

pub use engarde::kit::versioning::{etag_of, version_of_etag};

/// Filters of a listing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentFilter {
    pub agent_type: Option<AgentType>,
    pub status: Option<AgentStatus>,
    pub workflow_id: Option<Uuid>,
}

impl AgentFilter {
    /// The parts a page token is bound to.
    pub fn fingerprint_parts(&self) -> [String; 3] {
        [
            self.agent_type.map(|t| t.as_str()).unwrap_or("").to_owned(),
            self.status.map(|s| s.as_str()).unwrap_or("").to_owned(),
            self.workflow_id.map(|id| id.to_string()).unwrap_or_default(),
        ]
    }
}

/// A protobuf message in JSON as the base64 of its encoding: stored answers keep the snapshot
/// byte for byte, as the database does.
mod encoded_proto {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<M: prost::Message, S: Serializer>(message: &M, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(message.encode_to_vec()))
    }

    pub fn deserialize<'de, M: prost::Message + Default, D: Deserializer<'de>>(deserializer: D) -> Result<M, D::Error> {
        let text = String::deserialize(deserializer)?;
        let bytes = STANDARD.decode(text).map_err(serde::de::Error::custom)?;
        M::decode(bytes.as_slice()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_survives_a_json_round_trip() {
        let snapshot = WorkflowSnapshot {
            workflow_id: Uuid::now_v7(),
            workflow_version: 3,
            workflow_name: "Blog".into(),
            category: WorkflowCategory::ContentGeneration,
            config: workflow_pb::WorkflowConfig {
                steps: vec![workflow_pb::Step {
                    id: "write".into(),
                    prompt: "Write {input}".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        };
        let json = serde_json::to_string(&snapshot).unwrap();
        assert_eq!(serde_json::from_str::<WorkflowSnapshot>(&json).unwrap(), snapshot);
    }

    #[test]
    fn etags_name_versions() {
        assert_eq!(version_of_etag(&etag_of(7)), Some(7));
        assert_eq!(version_of_etag("7"), None);
    }
}
