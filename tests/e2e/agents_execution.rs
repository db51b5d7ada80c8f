//! Executing agents through a real Langflow (TEST_LANGFLOW_URL): the answer renders the step's
//! prompt, streams arrive event by event, sessions keep separate memories (here and in
//! Langflow), statistics match exactly after concurrent runs (the agent's, and the workflow's
//! once the outbox has drained), feedback, tenancy and bad input on every execution RPC.

use std::time::Duration;

use engarde::proto::agent::v1 as pb;
use engarde::proto::workflow::v1 as wpb;
use tonic::Code;

use crate::both_backends;
use crate::helpers::*;
use crate::langflow_support::{RealLangflow, real_langflow_url};
use crate::workflows_crud::create_request;

/// Both services on fresh databases, agent-service pointed at the Langflow at `langflow_url`.
pub async fn spawn_with_langflow(backend: Backend, langflow_url: &str, extra: &[(&str, String)]) -> TestApp {
    let workflow_db = TestDb::new(backend).await;
    let agent_db = TestDb::new(backend).await;
    let workflow = spawn_workflow_service(&workflow_db, &[]).await;
    let mut env = vec![("LANGFLOW_URL", langflow_url.to_owned()), ("REPORT_INTERVAL_MS", "500".to_owned())];
    env.extend(extra.iter().cloned());
    let agent = spawn_agent_service(&agent_db, &workflow.url(), &env).await;
    TestApp { workflow, agent, workflow_db, agent_db }
}

/// A workflow of the tenant ("Write a post about {input}" first), and an ACTIVE agent made from
/// it with its generated flow.
pub async fn active_agent(app: &TestApp, tenant: &str) -> (wpb::WorkflowDefinition, pb::Agent) {
    active_agent_with(app, tenant, None).await
}

/// [`active_agent`], made with `overrides`.
pub async fn active_agent_with(
    app: &TestApp,
    tenant: &str,
    overrides: Option<pb::AgentOverrides>,
) -> (wpb::WorkflowDefinition, pb::Agent) {
    let mut workflows = app.workflows(tenant).await;
    let mut agents = app.agents(tenant).await;
    let workflow = workflows.create_workflow(create_request("Posts")).await.unwrap().into_inner();
    let agent = agents
        .create_agent_from_workflow(pb::CreateAgentFromWorkflowRequest {
            workflow_id: workflow.id.clone(),
            overrides,
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!agent.langflow_workflow_id.is_empty(), "the agent got a flow: {agent:?}");
    agents.deploy_agent(pb::DeployAgentRequest { id: agent.id.clone(), ..Default::default() }).await.unwrap();
    let agent = agents
        .activate_agent(pb::ActivateAgentRequest { id: agent.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(agent.status, pb::AgentStatus::Active as i32);
    (workflow, agent)
}

pub fn execute(agent_id: &str, input: &str, session_id: &str) -> pb::ExecuteAgentRequest {
    pb::ExecuteAgentRequest {
        agent_id: agent_id.into(),
        input: input.into(),
        session_id: session_id.into(),
        ..Default::default()
    }
}

/// Runs once and answers the recorded execution.
pub async fn run_agent(
    executions: &mut ExecutionClient,
    agent_id: &str,
    input: &str,
    session_id: &str,
) -> pb::Execution {
    executions.execute_agent(execute(agent_id, input, session_id)).await.unwrap().into_inner().execution.unwrap()
}

pub async fn get_agent(agents: &mut AgentClient, id: &str) -> pb::Agent {
    agents.get_agent(pb::GetAgentRequest { id: id.into() }).await.unwrap().into_inner()
}

/// The first page (`page_size`; 0: the service's default) of a session's messages, oldest first.
pub async fn session_messages(
    executions: &mut ExecutionClient,
    agent_id: &str,
    session_id: &str,
    page_size: i32,
) -> Vec<pb::SessionMessage> {
    executions
        .list_session_messages(pb::ListSessionMessagesRequest {
            agent_id: agent_id.into(),
            session_id: session_id.into(),
            page_size,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .messages
}

pub async fn messages(executions: &mut ExecutionClient, agent_id: &str, session_id: &str) -> Vec<(i32, String)> {
    session_messages(executions, agent_id, session_id, 0).await.into_iter().map(|m| (m.role, m.text)).collect()
}

pub async fn recorded_executions(
    executions: &mut ExecutionClient,
    filter: pb::ListExecutionsRequest,
) -> Vec<pb::Execution> {
    executions.list_executions(filter).await.unwrap().into_inner().executions
}

/// Every execution of the agent, all pages.
pub async fn all_executions(executions: &mut ExecutionClient, agent_id: &str) -> Vec<pb::Execution> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = executions
            .list_executions(pb::ListExecutionsRequest {
                agent_id: agent_id.into(),
                page_size: 200,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.executions);
        if page.next_page_token.is_empty() {
            return all;
        }
        token = page.next_page_token;
    }
}

/// Waits until the workflow's statistics say (executions, successes).
pub async fn workflow_counts_reach(app: &TestApp, tenant: &str, workflow_id: &str, expected: (i64, i64)) {
    let mut workflows = app.workflows(tenant).await;
    let mut last = (0, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        let w = workflows.get_workflow(wpb::GetWorkflowRequest { id: workflow_id.into() }).await.unwrap().into_inner();
        last = (w.execution_count, w.success_count);
        if last == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the workflow's statistics stayed at {last:?}, expected {expected:?}");
}

const USER: i32 = pb::MessageRole::User as i32;
const AGENT: i32 = pb::MessageRole::Agent as i32;

both_backends!(
    async fn an_agent_runs_through_its_flow_and_remembers_each_session_apart(backend) {
        let langflow = RealLangflow::from_env();
        let app = spawn_with_langflow(backend, &real_langflow_url(), &[]).await;
        let (_, agent) = active_agent(&app, "tenant-a").await;
        let mut agents = app.agents("tenant-a").await;
        let mut executions = app.executions("tenant-a").await;
        assert!(langflow.flow_exists(&agent.langflow_workflow_id).await);

        // A new conversation: the answer is the step's prompt rendered with the input.
        let first = run_agent(&mut executions, &agent.id, "alpine lakes", "").await;
        assert_eq!(first.status, pb::ExecutionStatus::Succeeded as i32);
        assert!(first.output.contains("Write a post about alpine lakes"), "{first:?}");
        assert_eq!((first.agent_id.as_str(), first.step_id.as_str()), (agent.id.as_str(), "draft_post"));
        assert!(!first.session_id.is_empty() && first.latency_ms > 0.0 && first.finish_time.is_some());
        let read = executions.get_execution(pb::GetExecutionRequest { id: first.id.clone() }).await.unwrap().into_inner();
        assert_eq!(read, first);

        // The conversation goes on; a second one is kept apart.
        let second = run_agent(&mut executions, &agent.id, "glaciers", &first.session_id).await;
        assert_eq!(second.session_id, first.session_id);
        let other = run_agent(&mut executions, &agent.id, "deserts", "other-session").await;
        assert_eq!(
            messages(&mut executions, &agent.id, &first.session_id).await,
            [(USER, "alpine lakes".into()), (AGENT, first.output.clone()), (USER, "glaciers".into()), (AGENT, second.output.clone())]
        );
        assert_eq!(
            messages(&mut executions, &agent.id, "other-session").await,
            [(USER, "deserts".into()), (AGENT, other.output.clone())]
        );
        // Langflow's own memory of each session, under the agent's namespaced session id.
        let in_langflow = langflow.session_messages(&format!("{}:{}", agent.id, first.session_id)).await;
        let texts: Vec<&str> = in_langflow.iter().map(|(_, text)| text.as_str()).collect();
        assert_eq!(texts, ["alpine lakes", first.output.as_str(), "glaciers", second.output.as_str()]);
        let other_in_langflow = langflow.session_messages(&format!("{}:other-session", agent.id)).await;
        assert_eq!(other_in_langflow.len(), 2);

        // Sessions, most recently active first; executions newest first, filtered.
        let sessions = executions
            .list_sessions(pb::ListSessionsRequest { agent_id: agent.id.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .sessions;
        let listed: Vec<(&str, i64)> = sessions.iter().map(|s| (s.session_id.as_str(), s.message_count)).collect();
        assert_eq!(listed, [("other-session", 2), (first.session_id.as_str(), 4)]);
        let all = recorded_executions(&mut executions, pb::ListExecutionsRequest { agent_id: agent.id.clone(), ..Default::default() }).await;
        let ids: Vec<&str> = all.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, [other.id.as_str(), second.id.as_str(), first.id.as_str()]);
        let in_session = recorded_executions(&mut executions,
            pb::ListExecutionsRequest { session_id: first.session_id.clone(), page_size: 1, ..Default::default() },
        )
        .await;
        assert_eq!(in_session.len(), 1);

        // Clearing forgets the messages, not the executions; replayed by request id.
        let clear = pb::ClearSessionRequest {
            agent_id: agent.id.clone(),
            session_id: first.session_id.clone(),
            request_id: "clear-1".into(),
        };
        assert_eq!(executions.clear_session(clear.clone()).await.unwrap().into_inner().cleared, 4);
        assert_eq!(executions.clear_session(clear).await.unwrap().into_inner().cleared, 4, "replayed");
        assert!(messages(&mut executions, &agent.id, &first.session_id).await.is_empty());
        assert_eq!(recorded_executions(&mut executions, pb::ListExecutionsRequest::default()).await.len(), 3);
        let again = run_agent(&mut executions, &agent.id, "fjords", &first.session_id).await;
        assert_eq!(messages(&mut executions, &agent.id, &first.session_id).await, [(USER, "fjords".into()), (AGENT, again.output)]);

        let counted = get_agent(&mut agents, &agent.id).await;
        assert_eq!((counted.total_executions, counted.successful_executions), (4, 4));
        assert!(counted.average_response_time_ms > 0.0);
        assert_eq!(counted.version, agent.version, "statistics are not a new version of the agent");
    }
);

both_backends!(
    async fn a_request_id_runs_an_execution_once(backend) {
        let app = spawn_with_langflow(backend, &real_langflow_url(), &[]).await;
        let (_, agent) = active_agent(&app, "tenant-a").await;
        let mut agents = app.agents("tenant-a").await;
        let mut executions = app.executions("tenant-a").await;
        let request = pb::ExecuteAgentRequest { request_id: "exec-1".into(), ..execute(&agent.id, "tides", "") };
        let first = executions.execute_agent(request.clone()).await.unwrap().into_inner().execution.unwrap();
        let retry = executions.execute_agent(request.clone()).await.unwrap().into_inner().execution.unwrap();
        assert_eq!(retry, first);
        let streamed: Vec<_> = collect_stream(&mut executions, request.clone()).await.0;
        assert!(matches!(streamed.last(), Some(pb::execution_event::Event::Finished(e)) if *e == first));
        let conflict = executions.execute_agent(pb::ExecuteAgentRequest { input: "waves".into(), ..request }).await;
        expect_code(conflict, Code::AlreadyExists);
        let counted = get_agent(&mut agents, &agent.id).await;
        assert_eq!(counted.total_executions, 1);
    }
);

/// Reads a whole stream: its events, and the status that ended it if it was an error.
pub async fn collect_stream(
    executions: &mut ExecutionClient,
    request: pb::ExecuteAgentRequest,
) -> (Vec<pb::execution_event::Event>, Option<tonic::Status>) {
    let mut stream = executions.stream_execute_agent(request).await.unwrap().into_inner();
    let mut events = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(event)) => events.push(event.event.expect("an event")),
            Ok(None) => return (events, None),
            Err(status) => return (events, Some(status)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_execution_forwards_langflow_events_then_the_record() {
    use pb::execution_event::Event;
    let app = spawn_with_langflow(Backend::Sqlite, &real_langflow_url(), &[]).await;
    let (_, agent) = active_agent(&app, "tenant-a").await;
    let mut executions = app.executions("tenant-a").await;
    let (events, error) = collect_stream(&mut executions, execute(&agent.id, "coral reefs", "reef")).await;
    assert!(error.is_none(), "{error:?}");
    let Some(Event::Started(started)) = events.first() else { panic!("started first: {events:?}") };
    assert_eq!(started.status, pb::ExecutionStatus::Running as i32);
    let Some(Event::Finished(finished)) = events.last() else { panic!("finished last: {events:?}") };
    assert_eq!((finished.id.as_str(), finished.status), (started.id.as_str(), pb::ExecutionStatus::Succeeded as i32));
    assert!(finished.output.contains("Write a post about coral reefs"), "{finished:?}");
    let texts: Vec<&str> =
        events.iter().filter_map(|e| if let Event::OutputText(t) = e { Some(t.as_str()) } else { None }).collect();
    assert!(texts.iter().any(|t| t.contains("coral reefs")), "the answer was streamed: {events:?}");
    assert!(!texts.contains(&"coral reefs"), "the echo of the input is not output: {events:?}");
    assert_eq!(messages(&mut executions, &agent.id, "reef").await.len(), 2);
}

both_backends!(
    async fn concurrent_executions_are_counted_exactly_here_and_in_the_workflow(backend) {
        const RUNS: usize = 8;
        let metrics = free_port();
        let app =
            spawn_with_langflow(backend, &real_langflow_url(), &[("METRICS_ADDR", format!("127.0.0.1:{metrics}"))]).await;
        let (workflow, agent) = active_agent(&app, "tenant-a").await;
        let agents = app.agents("tenant-a").await;
        let mut executions = app.executions("tenant-a").await;
        let mut tasks = Vec::new();
        for n in 0..RUNS {
            let mut executions = executions.clone();
            let id = agent.id.clone();
            // Half of them share one session: its messages are numbered without gaps or clashes.
            let session = if n % 2 == 0 { "shared".to_string() } else { format!("own-{n}") };
            tasks.push(tokio::spawn(async move { run_agent(&mut executions, &id, &format!("topic {n}"), &session).await }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap().status, pb::ExecutionStatus::Succeeded as i32);
        }
        let mut agents = agents.clone();
        let counted = get_agent(&mut agents, &agent.id).await;
        assert_eq!((counted.total_executions, counted.successful_executions), (RUNS as i64, RUNS as i64));
        let all = recorded_executions(&mut executions, pb::ListExecutionsRequest::default()).await;
        let mean = all.iter().map(|e| e.latency_ms).sum::<f64>() / RUNS as f64;
        assert!((counted.average_response_time_ms - mean).abs() < 1e-6 * mean.max(1.0), "{} vs {mean}", counted.average_response_time_ms);
        let shared = session_messages(&mut executions, &agent.id, "shared", 0).await;
        let sequences: Vec<i64> = shared.iter().map(|m| m.sequence).collect();
        assert_eq!(sequences, (1..=RUNS as i64).collect::<Vec<_>>());
        workflow_counts_reach(&app, "tenant-a", &workflow.id, (RUNS as i64, RUNS as i64)).await;
        // Delivered reports leave the outbox. The gauge is published after every pass of the
        // outbox (at least every REPORT_INTERVAL_MS, 500 ms here): past two passes, it is no
        // longer the value from before the runs.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        eventually(Duration::from_secs(10), "the outbox to be empty", || async {
            metric_sum(&scrape(metrics).await, "agent_execution_reports_pending", &[]) == 0.0
        })
        .await;
    }
);

both_backends!(
    async fn feedback_is_stored_listed_and_summed_on_the_agent(backend) {
        let app = spawn_with_langflow(backend, &real_langflow_url(), &[]).await;
        let (_, agent) = active_agent(&app, "tenant-a").await;
        let mut agents = app.agents("tenant-a").await;
        let mut executions = app.executions("tenant-a").await;
        let first = run_agent(&mut executions, &agent.id, "spring sale", "").await;
        let second = run_agent(&mut executions, &agent.id, "summer sale", "").await;
        let give = |execution_id: &str, score: i32, request_id: &str| pb::SubmitFeedbackRequest {
            execution_id: execution_id.into(),
            score,
            comment: format!("scored {score}"),
            request_id: request_id.into(),
        };
        let five = executions.submit_feedback(give(&first.id, 5, "fb-1")).await.unwrap().into_inner();
        assert_eq!((five.execution_id.as_str(), five.agent_id.as_str(), five.score), (first.id.as_str(), agent.id.as_str(), 5));
        let replay = executions.submit_feedback(give(&first.id, 5, "fb-1")).await.unwrap().into_inner();
        assert_eq!(replay, five, "a retry is not counted twice");
        expect_code(executions.submit_feedback(give(&first.id, 4, "fb-1")).await, Code::AlreadyExists);
        let two = executions.submit_feedback(give(&second.id, 2, "")).await.unwrap().into_inner();

        let summary = get_agent(&mut agents, &agent.id).await;
        assert_eq!(summary.feedback_count, 2);
        assert!((summary.feedback_mean_score - 3.5).abs() < 1e-9);
        let listed = executions
            .list_feedback(pb::ListFeedbackRequest { agent_id: agent.id.clone(), page_size: 1, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.feedback, [two], "newest first");
        let rest = executions
            .list_feedback(pb::ListFeedbackRequest {
                agent_id: agent.id.clone(),
                page_size: 1,
                page_token: listed.next_page_token,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(rest.feedback, [five]);
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenant_gets_not_found_from_every_execution_rpc() {
    let app = spawn_with_langflow(Backend::Sqlite, &real_langflow_url(), &[]).await;
    let (_, agent) = active_agent(&app, "tenant-a").await;
    let mut owner = app.agents("tenant-a").await;
    let mut owner_executions = app.executions("tenant-a").await;
    let execution = run_agent(&mut owner_executions, &agent.id, "secret plans", "s1").await;
    let mut other_executions = app.executions("tenant-b").await;
    let session = || (agent.id.clone(), "s1".to_string());
    expect_code(other_executions.execute_agent(execute(&agent.id, "x", "")).await, Code::NotFound);
    expect_code(other_executions.stream_execute_agent(execute(&agent.id, "x", "")).await, Code::NotFound);
    expect_code(
        other_executions.get_execution(pb::GetExecutionRequest { id: execution.id.clone() }).await,
        Code::NotFound,
    );
    expect_code(
        other_executions
            .list_executions(pb::ListExecutionsRequest { agent_id: agent.id.clone(), ..Default::default() })
            .await,
        Code::NotFound,
    );
    assert!(recorded_executions(&mut other_executions, pb::ListExecutionsRequest::default()).await.is_empty());
    expect_code(
        other_executions
            .list_sessions(pb::ListSessionsRequest { agent_id: agent.id.clone(), ..Default::default() })
            .await,
        Code::NotFound,
    );
    let (agent_id, session_id) = session();
    expect_code(
        other_executions
            .list_session_messages(pb::ListSessionMessagesRequest { agent_id, session_id, ..Default::default() })
            .await,
        Code::NotFound,
    );
    let (agent_id, session_id) = session();
    expect_code(
        other_executions
            .clear_session(pb::ClearSessionRequest { agent_id, session_id, request_id: String::new() })
            .await,
        Code::NotFound,
    );
    expect_code(
        other_executions
            .submit_feedback(pb::SubmitFeedbackRequest {
                execution_id: execution.id.clone(),
                score: 1,
                ..Default::default()
            })
            .await,
        Code::NotFound,
    );
    expect_code(
        other_executions
            .list_feedback(pb::ListFeedbackRequest { agent_id: agent.id.clone(), ..Default::default() })
            .await,
        Code::NotFound,
    );
    // Nothing changed for the owner.
    assert_eq!(messages(&mut owner_executions, &agent.id, "s1").await.len(), 2);
    assert_eq!(get_agent(&mut owner, &agent.id).await.feedback_count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_field_by_field() {
    let app = spawn_with_langflow(Backend::Sqlite, &real_langflow_url(), &[]).await;
    let (_, agent) = active_agent(&app, "tenant-a").await;
    let mut agents = app.agents("tenant-a").await;
    let mut executions = app.executions("tenant-a").await;
    let fields = |status: tonic::Status| -> Vec<String> {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        field_violations(&status).into_iter().map(|(f, _)| f).collect()
    };

    let bad = pb::ExecuteAgentRequest {
        agent_id: "not-a-uuid".into(),
        input: String::new(),
        session_id: "has spaces".into(),
        ..Default::default()
    };
    assert_eq!(fields(executions.execute_agent(bad.clone()).await.unwrap_err()), ["agent_id", "input", "session_id"]);
    assert_eq!(fields(executions.stream_execute_agent(bad).await.unwrap_err()), ["agent_id", "input", "session_id"]);
    let too_long = execute(&agent.id, &"x".repeat(32_001), &"s".repeat(129));
    assert_eq!(fields(executions.execute_agent(too_long).await.unwrap_err()), ["input", "session_id"]);
    let unknown_step = pb::ExecuteAgentRequest { step_id: "nope".into(), ..execute(&agent.id, "x", "") };
    assert_eq!(fields(executions.execute_agent(unknown_step).await.unwrap_err()), ["step_id"]);
    let review_step = pb::ExecuteAgentRequest { step_id: "review".into(), ..execute(&agent.id, "x", "") };
    assert_eq!(fields(executions.execute_agent(review_step).await.unwrap_err()), ["step_id"]);
    let bad_request_id = pb::ExecuteAgentRequest { request_id: "has space".into(), ..execute(&agent.id, "x", "") };
    assert_eq!(fields(executions.execute_agent(bad_request_id).await.unwrap_err()), ["request_id"]);

    assert_eq!(fields(executions.get_execution(pb::GetExecutionRequest { id: "x".into() }).await.unwrap_err()), ["id"]);
    let list =
        pb::ListExecutionsRequest { agent_id: "x".into(), session_id: "a b".into(), status: 99, ..Default::default() };
    assert_eq!(fields(executions.list_executions(list).await.unwrap_err()), ["agent_id", "session_id", "status"]);
    let token = pb::ListExecutionsRequest { page_token: "garbage".into(), ..Default::default() };
    assert_eq!(fields(executions.list_executions(token).await.unwrap_err()), ["page_token"]);
    let negative = pb::ListSessionsRequest { agent_id: agent.id.clone(), page_size: -1, ..Default::default() };
    assert_eq!(fields(executions.list_sessions(negative).await.unwrap_err()), ["page_size"]);
    let messages =
        pb::ListSessionMessagesRequest { agent_id: "x".into(), session_id: String::new(), ..Default::default() };
    assert_eq!(fields(executions.list_session_messages(messages).await.unwrap_err()), ["agent_id", "session_id"]);
    let clear =
        pb::ClearSessionRequest { agent_id: agent.id.clone(), session_id: "a/b".into(), request_id: String::new() };
    assert_eq!(fields(executions.clear_session(clear).await.unwrap_err()), ["session_id"]);
    let feedback = pb::SubmitFeedbackRequest {
        execution_id: String::new(),
        score: 6,
        comment: "c".repeat(2001),
        request_id: String::new(),
    };
    assert_eq!(fields(executions.submit_feedback(feedback).await.unwrap_err()), ["execution_id", "score", "comment"]);
    assert_eq!(
        fields(
            executions
                .list_feedback(pb::ListFeedbackRequest { agent_id: String::new(), ..Default::default() })
                .await
                .unwrap_err()
        ),
        ["agent_id"]
    );
    // Not found, not invalid: a well-formed id that names nothing.
    let missing = uuid::Uuid::now_v7().to_string();
    expect_code(executions.execute_agent(execute(&missing, "x", "")).await, Code::NotFound);
    expect_code(
        executions
            .submit_feedback(pb::SubmitFeedbackRequest { execution_id: missing, score: 3, ..Default::default() })
            .await,
        Code::NotFound,
    );
    assert_eq!(get_agent(&mut agents, &agent.id).await.total_executions, 0, "nothing ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_deployed_or_active_agents_with_a_langflow_execute() {
    // Without a Langflow: agents still work, execution says why it cannot run.
    let app = spawn_app(Backend::Sqlite).await;
    let mut agents = app.agents("tenant-a").await;
    let mut executions = app.executions("tenant-a").await;
    let standalone = agents
        .create_agent(pb::CreateAgentRequest {
            name: "Solo".into(),
            agent_type: pb::AgentType::CopyGeneration as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let draft = expect_code(executions.execute_agent(execute(&standalone.id, "x", "")).await, Code::FailedPrecondition);
    assert!(draft.message().contains("draft"), "{draft:?}");
    agents.deploy_agent(pb::DeployAgentRequest { id: standalone.id.clone(), ..Default::default() }).await.ok();
    let deployed = get_agent(&mut agents, &standalone.id).await;
    if deployed.status == pb::AgentStatus::Deployed as i32 {
        let status =
            expect_code(executions.execute_agent(execute(&standalone.id, "x", "")).await, Code::FailedPrecondition);
        assert!(status.message().contains("no Langflow is configured"), "{status:?}");
    }
    assert!(recorded_executions(&mut executions, pb::ListExecutionsRequest::default()).await.is_empty());
}
