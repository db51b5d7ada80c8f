//! The platform's own database, as the import reads it: a PostgreSQL database made for the test
//! with the platform's `workflow_definitions` and `ai_agents` tables in a schema of their own,
//! filled with the platform's seed (the 11 workflows of `default-tenant-001`, with string steps
//! and triggers and free-form rules), another tenant's rows, agents and bad rows.

use serde_json::{Value, json};
use sqlx::Connection as _;

use crate::helpers::{Backend, TestDb};

/// The schema the fixture's tables are in.
pub const SCHEMA: &str = "platform";
/// The seed's tenant.
pub const SEED_TENANT: &str = "default-tenant-001";

/// The platform's tables, exactly as its design document gives them.
const TABLES: &str = "
CREATE SCHEMA platform;
CREATE TABLE platform.workflow_definitions (
    id              VARCHAR(64) PRIMARY KEY,
    tenant_id       VARCHAR(64),
    name            VARCHAR(255),
    description     TEXT,
    category        VARCHAR(64),
    workflow_config JSON,
    status          VARCHAR(32),
    is_template     BOOLEAN,
    execution_count INTEGER,
    success_rate    DOUBLE PRECISION
);
CREATE TABLE platform.ai_agents (
    id                     VARCHAR(64) PRIMARY KEY,
    tenant_id              VARCHAR(64),
    name                   VARCHAR(255),
    description            TEXT,
    agent_type             VARCHAR(64),
    status                 VARCHAR(32),
    langflow_workflow_id   VARCHAR(128),
    langflow_deployment_id VARCHAR(128),
    workflow_definition    JSON,
    configuration          JSON,
    capabilities           JSON,
    total_executions       INTEGER,
    successful_executions  INTEGER,
    average_response_time  DOUBLE PRECISION
);";

/// One `workflow_definitions` row; `None` is SQL NULL. `workflow_config` is JSON text.
#[derive(Debug, Clone)]
pub struct WorkflowRow {
    pub id: String,
    pub tenant_id: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub category: Option<String>,
    pub workflow_config: Option<String>,
    pub status: Option<String>,
    pub is_template: Option<bool>,
    pub execution_count: Option<i32>,
    pub success_rate: Option<f64>,
}

/// The platform's database.
pub struct PlatformDb {
    pub db: TestDb,
}

impl PlatformDb {
    pub async fn new() -> Self {
        let db = TestDb::new(Backend::Postgres).await;
        db.psql(TABLES);
        Self { db }
    }

    /// The URL the import reads it by.
    pub fn url(&self) -> String {
        self.db.url().to_owned()
    }

    async fn connection(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(self.db.url()).await.expect("connect to the platform's database")
    }

    pub async fn insert_workflows(&self, rows: &[WorkflowRow]) {
        let mut conn = self.connection().await;
        for row in rows {
            sqlx::query(
                "INSERT INTO platform.workflow_definitions (id, tenant_id, name, description, category, \
                 workflow_config, status, is_template, execution_count, success_rate) \
                 VALUES ($1, $2, $3, $4, $5, $6::json, $7, $8, $9, $10)",
            )
            .bind(&row.id)
            .bind(&row.tenant_id)
            .bind(&row.name)
            .bind(&row.description)
            .bind(&row.category)
            .bind(&row.workflow_config)
            .bind(&row.status)
            .bind(row.is_template)
            .bind(row.execution_count)
            .bind(row.success_rate)
            .execute(&mut conn)
            .await
            .expect("insert a platform workflow");
        }
    }

    pub async fn insert_agents(&self, rows: &[AgentRow]) {
        let mut conn = self.connection().await;
        for row in rows {
            sqlx::query(
                "INSERT INTO platform.ai_agents (id, tenant_id, name, description, agent_type, status, \
                 langflow_workflow_id, langflow_deployment_id, workflow_definition, configuration, capabilities, \
                 total_executions, successful_executions, average_response_time) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::json, $10::json, $11::json, $12, $13, $14)",
            )
            .bind(&row.id)
            .bind(&row.tenant_id)
            .bind(&row.name)
            .bind(&row.description)
            .bind(&row.agent_type)
            .bind(&row.status)
            .bind(&row.langflow_workflow_id)
            .bind(&row.langflow_deployment_id)
            .bind(row.workflow_definition.as_ref().map(Value::to_string))
            .bind(row.configuration.as_ref().map(Value::to_string))
            .bind(row.capabilities.as_ref().map(Value::to_string))
            .bind(row.total_executions)
            .bind(row.successful_executions)
            .bind(row.average_response_time)
            .execute(&mut conn)
            .await
            .expect("insert a platform agent");
        }
    }

    /// Runs one statement on the platform's database.
    pub async fn execute(&self, sql: &str) {
        let mut conn = self.connection().await;
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut conn).await.expect("SQL on the platform");
    }
}

/// The built-in library's entries: the platform's seed has the same names, categories and
/// steps (as the platform writes them: bare strings).
fn library() -> Vec<Value> {
    serde_json::from_str(include_str!("../../workflow-service/src/domain/templates.json")).expect("templates.json")
}

/// The seed's config of a library entry, as the platform stores it: steps and triggers as
/// strings, rules as a free-form object (some keys ours, some the platform's own).
pub fn platform_config(entry: &Value) -> Value {
    let config = &entry["workflow_config"];
    let steps: Vec<Value> = config["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| if s.is_string() { s.clone() } else { s["id"].clone() })
        .collect();
    let triggers: Vec<Value> = config["triggers"].as_array().unwrap().iter().map(|t| t["type"].clone()).collect();
    json!({
        "steps": steps,
        "triggers": triggers,
        "rules": {
            "approval_required": config["rules"]["approval_required"],
            "max_retries": config["rules"]["max_retries"],
            "platforms": ["linkedin", "instagram"],
            "brand_safety": {"level": "strict", "blocked_words": ["free", "guarantee"]},
            "notify": null,
        },
    })
}

/// The seed: the 11 workflows of `tenant`, with fresh ids (so tests never share rows), each
/// with statistics: the n-th (from 0) has 10·(n+1) executions at a success rate of 0.9.
pub fn seed_workflows(tenant: &str) -> Vec<WorkflowRow> {
    library()
        .iter()
        .enumerate()
        .map(|(n, entry)| WorkflowRow {
            id: uuid::Uuid::new_v4().to_string(),
            tenant_id: Some(tenant.into()),
            name: entry["name"].as_str().map(Into::into),
            description: entry["description"].as_str().map(Into::into),
            category: entry["category"].as_str().map(Into::into),
            workflow_config: Some(platform_config(entry).to_string()),
            status: Some("active".into()),
            is_template: Some(true),
            execution_count: Some(10 * (n as i32 + 1)),
            success_rate: Some(0.9),
        })
        .collect()
}

/// Rows of `tenant` that cannot be imported, each with the start of the reason it is refused for.
pub fn bad_workflows(tenant: &str) -> Vec<(WorkflowRow, &'static str)> {
    let good = seed_workflows(tenant).remove(0);
    let fresh = || uuid::Uuid::new_v4().to_string();
    vec![
        (WorkflowRow { id: fresh(), name: None, ..good.clone() }, "name: missing"),
        (WorkflowRow { id: fresh(), category: Some("seo_magic".into()), ..good.clone() }, "category: unknown category"),
        (WorkflowRow { id: "wf-legacy-7".into(), ..good.clone() }, "id: \"wf-legacy-7\" is not a UUID"),
        (
            WorkflowRow { id: fresh(), workflow_config: Some(r#"{"steps": "everything at once"}"#.into()), ..good },
            "workflow_config.steps: must be a list",
        ),
    ]
}

/// One `ai_agents` row; `None` is SQL NULL.
#[derive(Debug, Clone)]
pub struct AgentRow {
    pub id: String,
    pub tenant_id: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub agent_type: Option<String>,
    pub status: Option<String>,
    pub langflow_workflow_id: Option<String>,
    pub langflow_deployment_id: Option<String>,
    pub workflow_definition: Option<Value>,
    pub configuration: Option<Value>,
    pub capabilities: Option<Value>,
    pub total_executions: Option<i32>,
    pub successful_executions: Option<i32>,
    pub average_response_time: Option<f64>,
}

/// An active agent of `tenant` made from the workflow `workflow_id`, running the flow `flow_id`.
pub fn platform_agent(tenant: &str, name: &str, workflow_id: &str, flow_id: &str) -> AgentRow {
    AgentRow {
        id: uuid::Uuid::new_v4().to_string(),
        tenant_id: Some(tenant.into()),
        name: Some(name.into()),
        description: Some(format!("{name}, as the platform made it")),
        agent_type: Some("content_generation".into()),
        status: Some("active".into()),
        langflow_workflow_id: Some(flow_id.into()),
        langflow_deployment_id: Some("platform-endpoint".into()),
        workflow_definition: Some(json!({"workflow_id": workflow_id, "steps": ["analyze_audience", "publish"]})),
        configuration: Some(json!({"brand_voice": "Warm and direct", "tone": "friendly", "max_posts": 3,
                                   "channels": ["linkedin"]})),
        capabilities: Some(json!(["text_generation", "human_review"])),
        total_executions: Some(20),
        successful_executions: Some(17),
        average_response_time: Some(1.5),
    }
}
