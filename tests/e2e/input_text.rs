//! Text the services cannot store the same on both backends: U+0000 (PostgreSQL refuses it in
//! text and, as `\u0000`, in jsonb; SQLite stores it). Every RPC refuses it in any string of a
//! request with INVALID_ARGUMENT naming the field, before anything runs; what Langflow answers
//! is recorded with NUL replaced by U+FFFD, so an execution that ran is always recorded.

use engarde::proto::agent::v1 as pb;
use engarde::proto::workflow::v1 as wpb;
use tonic::Code;

use crate::agents_execution::{active_agent, execute, spawn_with_langflow};
use crate::both_backends;
use crate::helpers::*;
use crate::langflow_support::FakeLangflow;
use crate::workflows_crud::{create_request, llm_step, sample_config};

/// The one field violation of an INVALID_ARGUMENT answer.
fn refused_field<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> String {
    let status = expect_code(result, Code::InvalidArgument);
    let violations = field_violations(&status);
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].1.contains("NUL"), "{violations:?}");
    violations[0].0.clone()
}

both_backends!(
    async fn a_nul_in_any_request_text_is_invalid_argument_naming_the_field(backend) {
        let fake = FakeLangflow::start().await;
        let app = spawn_with_langflow(backend, &fake.url(), &[]).await;
        let tenant = "tenant-nul";
        let mut workflows = app.workflows(tenant).await;
        let mut agents = app.agents(tenant).await;
        let mut runs = app.runs(tenant).await;
        let mut executions = app.executions(tenant).await;
        let (workflow, agent) = active_agent(&app, tenant).await;

        // Workflows: names, free text, nested config, filters, idempotency keys.
        assert_eq!(refused_field(workflows.create_workflow(create_request("a\0b")).await), "name");
        let keyed = wpb::CreateWorkflowRequest { request_id: "key\0".into(), ..create_request("Fine") };
        assert_eq!(refused_field(workflows.create_workflow(keyed).await), "request_id");
        let update = wpb::UpdateWorkflowRequest {
            workflow: Some(wpb::WorkflowDefinition {
                id: workflow.id.clone(),
                description: "free\0text".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["description".into()] }),
            ..Default::default()
        };
        assert_eq!(refused_field(workflows.update_workflow(update).await), "workflow.description");
        let mut config = sample_config();
        config.steps[0] = llm_step("draft_post", "Write \0 {input}");
        let validate = wpb::ValidateWorkflowConfigRequest { workflow_config: Some(config) };
        assert_eq!(refused_field(workflows.validate_workflow_config(validate).await), "workflow_config.steps[0].prompt");
        let list = wpb::ListWorkflowsRequest { name_contains: "\0".into(), ..Default::default() };
        assert_eq!(refused_field(workflows.list_workflows(list).await), "name_contains");

        // Agents: overrides, configuration values and map keys.
        let from_workflow = pb::CreateAgentFromWorkflowRequest {
            workflow_id: workflow.id.clone(),
            overrides: Some(pb::AgentOverrides { name: Some("x\0".into()), ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(refused_field(agents.create_agent_from_workflow(from_workflow).await), "overrides.name");
        let create = pb::CreateAgentRequest {
            name: "Fine".into(),
            configuration: Some(pb::AgentConfig {
                extra: [("k\0".to_string(), "v".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(refused_field(agents.create_agent(create).await), "configuration.extra");
        let configure = pb::UpdateAgentConfigRequest {
            agent_id: agent.id.clone(),
            configuration: Some(pb::AgentConfig { tone: "warm\0".into(), ..Default::default() }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["tone".into()] }),
            ..Default::default()
        };
        assert_eq!(refused_field(agents.update_agent_config(configure).await), "configuration.tone");

        // Executions, feedback, walker runs.
        let session = pb::ExecuteAgentRequest { session_id: "s\0".into(), ..execute(&agent.id, "hi", "") };
        assert_eq!(refused_field(executions.stream_execute_agent(session).await), "session_id");
        let feedback = pb::SubmitFeedbackRequest {
            execution_id: uuid::Uuid::new_v4().to_string(),
            score: 4,
            comment: "good\0".into(),
            ..Default::default()
        };
        assert_eq!(refused_field(executions.submit_feedback(feedback).await), "comment");
        let run = pb::StartRunRequest { agent_id: agent.id.clone(), input: "go\0".into(), ..Default::default() };
        assert_eq!(refused_field(runs.start_run(run).await), "input");

        // Nothing of it was stored, nothing ran, and both services still answer.
        let listed = workflows.list_workflows(wpb::ListWorkflowsRequest { is_template: Some(false), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.workflows.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(), ["Posts"]);
        assert_eq!(fake.runs(), 0);
        let got = agents.get_agent(pb::GetAgentRequest { id: agent.id.clone() }).await.unwrap().into_inner();
        assert_eq!(got.total_executions, 0);
    }
);

both_backends!(
    async fn an_execution_whose_input_holds_nul_is_refused_before_langflow_runs(backend) {
        let fake = FakeLangflow::start().await;
        let app = spawn_with_langflow(backend, &fake.url(), &[]).await;
        let mut executions = app.executions("tenant-nul").await;
        let (_, agent) = active_agent(&app, "tenant-nul").await;

        let unary = pb::ExecuteAgentRequest { request_id: "once".into(), ..execute(&agent.id, "a\0b", "s1") };
        assert_eq!(refused_field(executions.execute_agent(unary.clone()).await), "input");
        // A retry is refused the same way: nothing was recorded under its request id.
        assert_eq!(refused_field(executions.execute_agent(unary).await), "input");
        assert_eq!(refused_field(executions.stream_execute_agent(execute(&agent.id, "\0", "s1")).await), "input");

        assert_eq!(fake.runs(), 0, "Langflow must not run what cannot be recorded");
        let executions = executions
            .list_executions(pb::ListExecutionsRequest { agent_id: agent.id.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(executions.executions.is_empty());
    }
);

both_backends!(
    async fn a_langflow_answer_holding_nul_is_recorded_with_the_replacement_character(backend) {
        let fake = FakeLangflow::start().await;
        let app = spawn_with_langflow(backend, &fake.url(), &[]).await;
        let mut agents = app.agents("tenant-nul").await;
        let mut executions = app.executions("tenant-nul").await;
        let (_, agent) = active_agent(&app, "tenant-nul").await;
        fake.answer_with(Some("before\0after"));
        let stored = "before\u{FFFD}after";

        let execution = executions.execute_agent(execute(&agent.id, "hello", "s1")).await.unwrap().into_inner();
        let execution = execution.execution.unwrap();
        assert_eq!((execution.status, execution.output.as_str()), (pb::ExecutionStatus::Succeeded as i32, stored));
        let read = executions.get_execution(pb::GetExecutionRequest { id: execution.id.clone() }).await.unwrap().into_inner();
        assert_eq!(read.output, stored);

        let mut stream =
            executions.stream_execute_agent(execute(&agent.id, "again", "s1")).await.unwrap().into_inner();
        let mut finished = None;
        while let Some(event) = stream.message().await.unwrap() {
            match event.event {
                Some(pb::execution_event::Event::OutputText(text)) => assert!(!text.contains('\0'), "{text:?}"),
                Some(pb::execution_event::Event::Finished(execution)) => finished = Some(execution),
                _ => {}
            }
        }
        let finished = finished.expect("a finished event");
        assert_eq!(finished.status, pb::ExecutionStatus::Succeeded as i32, "{finished:?}");
        assert!(finished.output.contains(stored), "{:?}", finished.output);

        // Both runs are recorded and counted, and the conversation memory holds the answers.
        let got = agents.get_agent(pb::GetAgentRequest { id: agent.id.clone() }).await.unwrap().into_inner();
        assert_eq!(got.total_executions, 2);
        let memory = crate::agents_execution::messages(&mut executions, &agent.id, "s1").await;
        assert_eq!(memory.iter().filter(|(_, text)| text.contains(stored)).count(), 2, "{memory:?}");
    }
);
