//! What the walker tests share: both services with a Langflow, a workflow of given steps made
//! into an ACTIVE agent, and waiting on runs.

use std::time::Duration;

use engarde::proto::agent::v1 as pb;
use engarde::proto::workflow::v1 as wpb;
use futures::StreamExt;

use crate::helpers::*;
use crate::langflow_support::FakeLangflow;

pub fn llm(id: &str, prompt: &str) -> wpb::Step {
    wpb::Step { id: id.into(), kind: wpb::StepKind::Llm as i32, prompt: prompt.into(), ..Default::default() }
}

pub fn review(id: &str) -> wpb::Step {
    wpb::Step { id: id.into(), kind: wpb::StepKind::Review as i32, ..Default::default() }
}

pub fn output(id: &str) -> wpb::Step {
    wpb::Step { id: id.into(), kind: wpb::StepKind::Output as i32, ..Default::default() }
}

pub fn config(steps: Vec<wpb::Step>, max_retries: i32, triggers: Vec<wpb::Trigger>) -> wpb::WorkflowConfig {
    wpb::WorkflowConfig {
        steps,
        triggers,
        rules: Some(wpb::Rules { max_retries, ..Default::default() }),
        langflow_flow_json: String::new(),
        extra_rules: None,
    }
}

/// Both services on fresh databases, agent-service on the Langflow at `langflow_url`.
pub async fn spawn_walker_app(backend: Backend, langflow_url: &str, extra: &[(&str, String)]) -> TestApp {
    let workflow_db = TestDb::new(backend).await;
    let agent_db = TestDb::new(backend).await;
    let workflow = spawn_workflow_service(&workflow_db, &[]).await;
    let agent = spawn_agent_service(&agent_db, &workflow.url(), &walker_env(langflow_url, extra)).await;
    TestApp { workflow, agent, workflow_db, agent_db }
}

pub fn walker_env(langflow_url: &str, extra: &[(&str, String)]) -> Vec<(&'static str, String)> {
    let mut env: Vec<(&'static str, String)> = vec![("LANGFLOW_URL", langflow_url.to_owned())];
    env.extend(extra.iter().map(|(k, v)| (&*Box::leak(k.to_string().into_boxed_str()), v.clone())));
    env
}

/// A workflow of the tenant with `config`, activated (only an active workflow's triggers fire),
/// made into an agent (with a generated flow), deployed and activated.
pub async fn active_walker(app: &TestApp, tenant: &str, config: wpb::WorkflowConfig) -> pb::Agent {
    let agent = walker_of_draft(app, tenant, config).await;
    let mut workflows = app.workflows(tenant).await;
    let workflow_id = agent.workflow_snapshot.as_ref().expect("made from a workflow").workflow_id.clone();
    workflows
        .activate_workflow(wpb::ActivateWorkflowRequest { id: workflow_id, ..Default::default() })
        .await
        .expect("activate workflow");
    agent
}

/// Like [`active_walker`], but its workflow stays a DRAFT.
pub async fn walker_of_draft(app: &TestApp, tenant: &str, config: wpb::WorkflowConfig) -> pb::Agent {
    let mut workflows = app.workflows(tenant).await;
    let mut agents = app.agents(tenant).await;
    let workflow = workflows
        .create_workflow(wpb::CreateWorkflowRequest {
            name: format!("Walk {}", uuid::Uuid::new_v4().simple()),
            description: "A walk".into(),
            category: wpb::WorkflowCategory::ContentGeneration as i32,
            workflow_config: Some(config),
            request_id: String::new(),
        })
        .await
        .expect("create workflow")
        .into_inner();
    let agent = agents
        .create_agent_from_workflow(pb::CreateAgentFromWorkflowRequest {
            workflow_id: workflow.id,
            overrides: None,
            request_id: String::new(),
        })
        .await
        .expect("create agent")
        .into_inner();
    assert!(!agent.langflow_workflow_id.is_empty(), "the agent got a flow: {agent:?}");
    agents.deploy_agent(pb::DeployAgentRequest { id: agent.id.clone(), ..Default::default() }).await.expect("deploy");
    agents
        .activate_agent(pb::ActivateAgentRequest { id: agent.id.clone(), ..Default::default() })
        .await
        .expect("activate")
        .into_inner()
}

pub async fn start_run(runs: &mut RunClient, agent_id: &str, input: &str) -> pb::Run {
    runs.start_run(pb::StartRunRequest { agent_id: agent_id.into(), input: input.into(), request_id: String::new() })
        .await
        .expect("start run")
        .into_inner()
}

pub async fn get_run(runs: &mut RunClient, id: &str) -> pb::Run {
    runs.get_run(pb::GetRunRequest { id: id.into() }).await.expect("get run").into_inner()
}

/// Waits until the run satisfies `done` (checked every 100 ms), and answers it.
pub async fn wait_run(runs: &mut RunClient, id: &str, timeout: Duration, done: impl Fn(&pb::Run) -> bool) -> pb::Run {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let run = get_run(runs, id).await;
        if done(&run) {
            return run;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out; the run is {run:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn status_is(status: pb::RunStatus) -> impl Fn(&pb::Run) -> bool {
    move |run| run.status == status as i32
}

pub fn step_status(run: &pb::Run, index: usize) -> pb::StepStatus {
    pb::StepStatus::try_from(run.steps[index].status).expect("a step status")
}

/// Every event of a watch from `from`, until the stream ends.
pub async fn watch_all(runs: &mut RunClient, id: &str, from: i64) -> Vec<pb::RunEvent> {
    let mut stream = runs
        .watch_run(pb::WatchRunRequest { id: id.into(), from_sequence: from })
        .await
        .expect("watch run")
        .into_inner();
    let mut events = Vec::new();
    while let Some(event) =
        tokio::time::timeout(Duration::from_secs(60), stream.next()).await.expect("an event in time")
    {
        events.push(event.expect("an event"));
    }
    events
}

/// The Langflow session of a run's llm steps: each step is an execution of the agent in the
/// run's session (the executor's `{agent id}:{session id}`).
pub fn run_session(agent_id: &str, run_id: &str) -> String {
    format!("{agent_id}:{run_id}")
}

/// How many times the fake Langflow was asked to run a step of the run whose prompt starts with
/// `prompt_start` (the steps of a run share its session; their prompts tell them apart).
pub fn step_runs(fake: &FakeLangflow, agent_id: &str, run_id: &str, prompt_start: &str) -> usize {
    let session = run_session(agent_id, run_id);
    fake.run_requests()
        .iter()
        .filter(|r| r.body["session_id"] == session.as_str())
        .filter(|r| {
            r.body["tweaks"].as_object().is_some_and(|tweaks| {
                tweaks.values().any(|node| node["template"].as_str().is_some_and(|t| t.starts_with(prompt_start)))
            })
        })
        .count()
}
