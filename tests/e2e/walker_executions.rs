//! A walker's llm steps run through the execution path: each is an execution of the agent,
//! recorded (ListExecutions by agent and by the run's session), counted on the agent and
//! reported to the workflow's statistics, exactly once per step.

use std::time::Duration;

use engarde::proto::agent::v1 as pb;

use crate::agents_execution::{get_agent, recorded_executions, workflow_counts_reach};
use crate::both_backends;
use crate::helpers::*;
use crate::langflow_support::FakeLangflow;
use crate::walker_support::*;

/// What the agent's statistics say: (total, successful) executions.
async fn agent_counts(app: &TestApp, tenant: &str, agent_id: &str) -> (i64, i64) {
    let agent = get_agent(&mut app.agents(tenant).await, agent_id).await;
    (agent.total_executions, agent.successful_executions)
}

both_backends!(
    async fn a_walk_counts_each_llm_step_once_on_the_agent_and_the_workflow(backend) {
        let tenant = "tenant-walk-count";
        let fake = FakeLangflow::start().await;
        let app = spawn_walker_app(backend, &fake.url(), &[]).await;
        let steps = vec![llm("draft", "Draft: {input}"), llm("polish", "Polish: {input}")];
        let agent = active_walker(&app, tenant, config(steps, 0, vec![])).await;
        let workflow_id = agent.workflow_snapshot.as_ref().expect("a snapshot").workflow_id.clone();
        let mut runs = app.runs(tenant).await;
        let mut executions = app.executions(tenant).await;

        let run = start_run(&mut runs, &agent.id, "tea").await;
        let done = wait_run(&mut runs, &run.id, Duration::from_secs(30), status_is(pb::RunStatus::Succeeded)).await;
        // Step 2's prompt carried step 1's output.
        assert!(done.steps[0].output.contains("Draft: tea"), "{}", done.steps[0].output);
        assert_eq!(done.steps[1].input, done.steps[0].output);
        assert!(done.steps[1].output.contains("Polish: ") && done.steps[1].output.contains("Draft: tea"), "{}", done.steps[1].output);

        assert_eq!(agent_counts(&app, tenant, &agent.id).await, (2, 2));
        let agent_now = get_agent(&mut app.agents(tenant).await, &agent.id).await;
        assert!(agent_now.average_response_time_ms > 0.0, "{agent_now:?}");
        let mut listed =
            recorded_executions(&mut executions, pb::ListExecutionsRequest { agent_id: agent.id.clone(), ..Default::default() })
                .await;
        listed.sort_by(|a, b| a.step_id.cmp(&b.step_id));
        assert_eq!(listed.iter().map(|e| e.step_id.as_str()).collect::<Vec<_>>(), ["draft", "polish"]);
        for (execution, step) in listed.iter().zip([&done.steps[0], &done.steps[1]]) {
            assert_eq!(execution.status, pb::ExecutionStatus::Succeeded as i32);
            assert_eq!(execution.session_id, run.id, "the run is the executions' session");
            assert_eq!((&execution.input, &execution.output), (&step.input, &step.output));
        }
        let by_session = pb::ListExecutionsRequest { session_id: run.id.clone(), ..Default::default() };
        assert_eq!(recorded_executions(&mut executions, by_session).await.len(), 2);
        workflow_counts_reach(&app, tenant, &workflow_id, (2, 2)).await;
        // Exactly once: nothing more arrives later.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(agent_counts(&app, tenant, &agent.id).await, (2, 2));
        workflow_counts_reach(&app, tenant, &workflow_id, (2, 2)).await;

        // Two more runs: six executions in all, never more.
        for input in ["coffee", "cocoa"] {
            let run = start_run(&mut runs, &agent.id, input).await;
            wait_run(&mut runs, &run.id, Duration::from_secs(30), status_is(pb::RunStatus::Succeeded)).await;
        }
        assert_eq!(agent_counts(&app, tenant, &agent.id).await, (6, 6));
        workflow_counts_reach(&app, tenant, &workflow_id, (6, 6)).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(agent_counts(&app, tenant, &agent.id).await, (6, 6));
        workflow_counts_reach(&app, tenant, &workflow_id, (6, 6)).await;
        assert_eq!(fake.runs(), 6, "each step ran the flow once");
    }
);

both_backends!(
    async fn a_failed_attempt_is_an_execution_of_its_own_and_the_step_succeeds_once(backend) {
        let tenant = "tenant-walk-retry";
        let fake = FakeLangflow::start().await;
        let app = spawn_walker_app(backend, &fake.url(), &[]).await;
        let steps = vec![llm("draft", "Draft: {input}"), llm("polish", "Polish: {input}")];
        let agent = active_walker(&app, tenant, config(steps, 2, vec![])).await;
        let workflow_id = agent.workflow_snapshot.as_ref().expect("a snapshot").workflow_id.clone();
        let mut runs = app.runs(tenant).await;
        let mut executions = app.executions(tenant).await;

        // The first call fails (Langflow 503): the step is retried and succeeds.
        fake.fail_runs_with(503, 1);
        let run = start_run(&mut runs, &agent.id, "tea").await;
        let done = wait_run(&mut runs, &run.id, Duration::from_secs(30), status_is(pb::RunStatus::Succeeded)).await;
        assert_eq!(done.steps.iter().map(|s| s.attempts).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(step_runs(&fake, &agent.id, &run.id, "Draft:"), 2);

        assert_eq!(agent_counts(&app, tenant, &agent.id).await, (3, 2));
        let by_session = pb::ListExecutionsRequest { session_id: run.id.clone(), ..Default::default() };
        let listed = recorded_executions(&mut executions, by_session).await;
        let statuses = |step: &str| {
            let mut s: Vec<i32> = listed.iter().filter(|e| e.step_id == step).map(|e| e.status).collect();
            s.sort();
            s
        };
        let mut expected = vec![pb::ExecutionStatus::Succeeded as i32, pb::ExecutionStatus::Failed as i32];
        expected.sort();
        assert_eq!(statuses("draft"), expected, "{listed:#?}");
        assert_eq!(statuses("polish"), [pb::ExecutionStatus::Succeeded as i32]);
        workflow_counts_reach(&app, tenant, &workflow_id, (3, 2)).await;
    }
);

/// RS256 production mode, where agent-service cannot sign a tenant's token: a run's steps
/// report to workflow-service with agent-service's own service identity (a tenant's token may
/// not call RecordExecution), so the workflow's statistics count them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_reports_its_steps_as_the_service_on_an_rs256_deployment() {
    use engarde::proto::agent::v1::agent_service_client::AgentServiceClient;
    use engarde::proto::agent::v1::run_service_client::RunServiceClient;
    use engarde::proto::workflow::v1 as wpb;
    use engarde::proto::workflow::v1::workflow_service_client::WorkflowServiceClient;

    let dir = tempfile::tempdir().unwrap();
    let (private, public) = crate::workflows_auth::rsa_key_pair(dir.path());
    let auth_env = [
        ("AUTH_MODE", "jwt".to_owned()),
        ("JWT_RS256_PUBLIC_KEY_FILE", public.display().to_string()),
        ("JWT_ISSUER", "engarde-auth".to_owned()),
    ];
    let fake = FakeLangflow::start().await;
    let workflow_db = TestDb::new(Backend::Sqlite).await;
    let agent_db = TestDb::new(Backend::Sqlite).await;
    let workflow_service = spawn_workflow_service(&workflow_db, &auth_env).await;
    let agent_service =
        spawn_agent_service(&agent_db, &workflow_service.url(), &walker_env(&fake.url(), &auth_env)).await;

    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap();
    let claims = serde_json::json!({
        "tenant_id": "tenant-rs-walk", "exp": chrono::Utc::now().timestamp() + 600, "iss": "engarde-auth"
    });
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    let bearer: tonic::metadata::MetadataValue<_> =
        format!("Bearer {}", jsonwebtoken::encode(&header, &claims, &key).unwrap()).parse().unwrap();
    let signed = move |mut request: tonic::Request<()>| {
        request.metadata_mut().insert("authorization", bearer.clone());
        Ok(request)
    };
    let mut workflows = WorkflowServiceClient::with_interceptor(workflow_service.channel().await, signed.clone());
    let mut agents = AgentServiceClient::with_interceptor(agent_service.channel().await, signed.clone());
    let mut runs = RunServiceClient::with_interceptor(agent_service.channel().await, signed);

    let steps = vec![llm("draft", "Draft: {input}"), llm("polish", "Polish: {input}")];
    let workflow = workflows
        .create_workflow(wpb::CreateWorkflowRequest {
            name: "Signed walk".into(),
            description: "A walk".into(),
            category: wpb::WorkflowCategory::ContentGeneration as i32,
            workflow_config: Some(config(steps, 0, vec![])),
            request_id: String::new(),
        })
        .await
        .expect("create workflow")
        .into_inner();
    let agent = agents
        .create_agent_from_workflow(pb::CreateAgentFromWorkflowRequest {
            workflow_id: workflow.id.clone(),
            overrides: None,
            request_id: String::new(),
        })
        .await
        .expect("create agent")
        .into_inner();
    agents.deploy_agent(pb::DeployAgentRequest { id: agent.id.clone(), ..Default::default() }).await.expect("deploy");
    agents
        .activate_agent(pb::ActivateAgentRequest { id: agent.id.clone(), ..Default::default() })
        .await
        .expect("activate");
    let run = runs
        .start_run(pb::StartRunRequest { agent_id: agent.id.clone(), input: "tea".into(), request_id: String::new() })
        .await
        .expect("start run")
        .into_inner();
    eventually(Duration::from_secs(30), "the run succeeds", || {
        let mut runs = runs.clone();
        let id = run.id.clone();
        async move {
            let run = runs.get_run(pb::GetRunRequest { id }).await.unwrap().into_inner();
            run.status == pb::RunStatus::Succeeded as i32
        }
    })
    .await;
    eventually(Duration::from_secs(30), "workflow-service counts both steps", || {
        let mut workflows = workflows.clone();
        let id = workflow.id.clone();
        async move {
            let w = workflows.get_workflow(wpb::GetWorkflowRequest { id }).await.unwrap().into_inner();
            (w.execution_count, w.success_count) == (2, 2)
        }
    })
    .await;
}

both_backends!(
    async fn a_walk_with_a_model_counts_each_step_once_and_chains_its_answers(backend) {
        use crate::fake_model::{ANSWER_WORDS, Behaviour, FakeModel, TEST_MODEL_KEY_VAR};
        use engarde::proto::workflow::v1 as wpb;

        let tenant = "tenant-walk-model";
        let model = FakeModel::start().await;
        model.set(Behaviour::Answer { chunk_delay: Duration::ZERO });
        let app = spawn_walker_app(backend, &crate::langflow_support::real_langflow_url(), &[]).await;
        let steps = vec![llm("draft", "Draft a post about {input}"), llm("polish", "Polish this: {input}")];
        let workflow = app
            .workflows(tenant)
            .await
            .create_workflow(wpb::CreateWorkflowRequest {
                name: "Walk with a model".into(),
                description: "A walk".into(),
                category: wpb::WorkflowCategory::ContentGeneration as i32,
                workflow_config: Some(config(steps, 0, vec![])),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let settings = pb::ModelSettings {
            provider: "OpenAI".into(),
            model_name: "fake-gpt".into(),
            base_url: model.base_url(),
            system_message: "You write posts.".into(),
            api_key_ref: TEST_MODEL_KEY_VAR.into(),
            temperature: Some(0.2),
            max_tokens: Some(256),
        };
        let configuration = pb::AgentConfig { model: Some(settings), ..Default::default() };
        let mut agents = app.agents(tenant).await;
        let agent = agents
            .create_agent_from_workflow(pb::CreateAgentFromWorkflowRequest {
                workflow_id: workflow.id.clone(),
                overrides: Some(pb::AgentOverrides { configuration: Some(configuration), ..Default::default() }),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        agents.deploy_agent(pb::DeployAgentRequest { id: agent.id.clone(), ..Default::default() }).await.unwrap();
        agents.activate_agent(pb::ActivateAgentRequest { id: agent.id.clone(), ..Default::default() }).await.unwrap();

        let mut runs = app.runs(tenant).await;
        let run = start_run(&mut runs, &agent.id, "spring sale").await;
        let done = wait_run(&mut runs, &run.id, Duration::from_secs(120), status_is(pb::RunStatus::Succeeded)).await;
        let answer = ANSWER_WORDS.concat();
        assert_eq!(done.steps[0].output, answer);
        assert_eq!(done.steps[1].output, answer);
        // The model was asked twice: step 2's prompt carried step 1's answer, and only that (a
        // walk's step gets no conversation history: its input already carries what came before).
        let received = model.received();
        assert_eq!(received.len(), 2, "{received:#?}");
        let first = received[0].text();
        assert!(first.contains("Draft a post about spring sale"), "{first}");
        let second = received[1].text();
        assert!(second.contains(&format!("Polish this: {answer}")), "{second}");
        assert!(!second.contains("Conversation so far") && !second.contains("spring sale"), "{second}");

        // Counted once per step on the agent and on the workflow, with the model's usage.
        assert_eq!(agent_counts(&app, tenant, &agent.id).await, (2, 2));
        let mut executions = app.executions(tenant).await;
        let by_session = pb::ListExecutionsRequest { session_id: run.id.clone(), ..Default::default() };
        let listed = recorded_executions(&mut executions, by_session).await;
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().all(|e| e.token_usage.is_some_and(|u| u.completion_tokens > 0)), "{listed:#?}");
        workflow_counts_reach(&app, tenant, &workflow.id, (2, 2)).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(agent_counts(&app, tenant, &agent.id).await, (2, 2));
        workflow_counts_reach(&app, tenant, &workflow.id, (2, 2)).await;
        assert_eq!(model.received().len(), 2, "no step ran twice");
    }
);

both_backends!(
    async fn an_agents_runs_list_newest_first_page_by_page_and_no_other_agents(backend) {
        let tenant = "tenant-walk-list";
        let fake = FakeLangflow::start().await;
        let app = spawn_walker_app(backend, &fake.url(), &[]).await;
        let steps = || vec![llm("draft", "Draft: {input}"), output("done")];
        let agent = active_walker(&app, tenant, config(steps(), 0, vec![])).await;
        let other = active_walker(&app, tenant, config(steps(), 0, vec![])).await;
        let mut runs = app.runs(tenant).await;
        let mut started = Vec::new();
        for i in 0..5 {
            started.push(start_run(&mut runs, &agent.id, &format!("mine {i}")).await.id);
            start_run(&mut runs, &other.id, &format!("other {i}")).await;
        }

        let (mut listed, mut token) = (Vec::new(), String::new());
        loop {
            let page = runs
                .list_runs(pb::ListRunsRequest { agent_id: agent.id.clone(), page_size: 2, page_token: token, ..Default::default() })
                .await
                .expect("list runs")
                .into_inner();
            assert!(page.runs.len() <= 2);
            listed.extend(page.runs);
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let ids: Vec<&str> = listed.iter().map(|r| r.id.as_str()).collect();
        let newest_first: Vec<&str> = started.iter().rev().map(String::as_str).collect();
        assert_eq!(ids, newest_first, "the agent's five runs, newest first, each once");
        for run in &listed {
            assert_eq!(run.agent_id, agent.id);
            assert_eq!(run.steps.iter().map(|s| s.step_id.as_str()).collect::<Vec<_>>(), ["draft", "done"]);
        }
    }
);
