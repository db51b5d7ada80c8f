//! The parts of `engarde-bench` (compiled into that binary only, never into the library).

pub mod bare;
pub mod execute;
pub mod load;
pub mod model;
pub mod procs;
pub mod report;
pub mod scale;
pub mod stats;

use std::path::PathBuf;

use engarde::proto::workflow::v1 as pb;

/// What every scenario needs to know.
pub struct Ctx {
    /// Where `workflow-service` and `agent-service` are (the directory of this binary).
    pub bin_dir: PathBuf,
    /// Where the services' logs go for the run (removed at the end).
    pub log_dir: PathBuf,
    pub load: load::LoadSpec,
    /// HTTP/2 connections the streams share.
    pub channels: usize,
    /// Worker threads of the in-process servers (the bare server, the fake Langflow).
    pub workers: usize,
    /// CreateAgentFromWorkflow (and single-stream ExecuteAgent) calls timed one at a time.
    pub agent_calls: usize,
    /// A real Langflow to measure ExecuteAgent through, and with how many callers.
    pub langflow_url: Option<String>,
    pub langflow_concurrency: usize,
    /// Extra environment for every service started (`--service-env KEY=VALUE`).
    pub service_env: Vec<(String, String)>,
}

impl Ctx {
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// workflow-service on schema `workflow` of `database_url` (development auth), with the
    /// `extra` settings.
    pub async fn start_workflow_service(
        &self,
        database_url: &str,
        extra: &[(&'static str, String)],
    ) -> anyhow::Result<procs::Service> {
        let mut env = vec![
            ("DATABASE_URL", database_url.to_owned()),
            ("DATABASE_SCHEMA", "workflow".to_owned()),
            ("AUTH_MODE", "dev".to_owned()),
        ];
        env.extend(extra.iter().cloned());
        procs::Service::start(
            &self.bin("workflow-service"),
            &[],
            "workflow-service",
            procs::WORKFLOW_HEALTH,
            &self.env(&env),
            &self.log_dir,
        )
        .await
    }

    /// agent-service on schema `schema` of `database_url` (development auth), calling the
    /// workflow-service at `workflow_addr`, with the `extra` settings.
    pub async fn start_agent_service(
        &self,
        workflow_addr: std::net::SocketAddr,
        database_url: &str,
        schema: &str,
        extra: &[(&'static str, String)],
    ) -> anyhow::Result<procs::Service> {
        let mut env = vec![
            ("DATABASE_URL", database_url.to_owned()),
            ("DATABASE_SCHEMA", schema.to_owned()),
            ("AUTH_MODE", "dev".to_owned()),
            ("WORKFLOW_SERVICE_URL", format!("http://{workflow_addr}")),
        ];
        env.extend(extra.iter().cloned());
        procs::Service::start(
            &self.bin("agent-service"),
            &[],
            "agent-service",
            procs::AGENT_HEALTH,
            &self.env(&env),
            &self.log_dir,
        )
        .await
    }

    /// `base` plus the `--service-env` settings (which win).
    pub fn env<'a>(&'a self, base: &[(&'a str, String)]) -> Vec<(&'a str, String)> {
        let mut env: Vec<(&str, String)> =
            base.iter().filter(|(k, _)| !self.service_env.iter().any(|(o, _)| o == k)).cloned().collect();
        env.extend(self.service_env.iter().map(|(k, v)| (k.as_str(), v.clone())));
        env
    }
}

/// A workflow as a marketing team would write one: an LLM step, a review, an output, two
/// triggers and rules (about 1 KB on the wire once stored).
pub fn sample_workflow(name: &str) -> pb::CreateWorkflowRequest {
    let step = |id: &str, kind: pb::StepKind, prompt: &str| pb::Step {
        id: id.into(),
        name: id.replace('_', " "),
        kind: kind as i32,
        prompt: prompt.into(),
        ..Default::default()
    };
    pb::CreateWorkflowRequest {
        name: name.into(),
        description: "Drafts the week's social posts from the campaign brief, has them reviewed, then publishes \
                      them at nine on Monday morning."
            .into(),
        category: pb::WorkflowCategory::ContentGeneration as i32,
        workflow_config: Some(pb::WorkflowConfig {
            steps: vec![
                step(
                    "draft_post",
                    pb::StepKind::Llm,
                    "Write three short posts for {channel} about {input}, in our brand voice: concrete, warm, \
                     no jargon. Each under 280 characters, each with one call to action.",
                ),
                step("review", pb::StepKind::Review, ""),
                step("publish", pb::StepKind::Output, ""),
            ],
            triggers: vec![
                pb::Trigger { r#type: pb::TriggerType::Manual as i32, ..Default::default() },
                pb::Trigger {
                    r#type: pb::TriggerType::Scheduled as i32,
                    cron: "0 9 * * MON".into(),
                    timezone: "Europe/Paris".into(),
                },
            ],
            rules: Some(pb::Rules { approval_required: true, max_retries: 2, ..Default::default() }),
            langflow_flow_json: String::new(),
            extra_rules: None,
        }),
        request_id: String::new(),
    }
}
