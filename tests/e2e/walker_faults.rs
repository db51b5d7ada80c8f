//! Walker runs against the fake Langflow, where faults and counts are under the test's control:
//! cancel mid-run, kill -9 of agent-service mid-step, two processes sharing 50 runs, and bad
//! input, idempotency and tenancy on every walker RPC.

use std::time::Duration;

use engarde::proto::agent::v1 as pb;
use tonic::Code;

use crate::agents_execution::{get_agent, recorded_executions, workflow_counts_reach};
use crate::both_backends;
use crate::helpers::*;
use crate::langflow_support::FakeLangflow;
use crate::walker_support::*;

fn three_llm_steps() -> Vec<engarde::proto::workflow::v1::Step> {
    vec![llm("one", "One: {input}"), llm("two", "Two: {input}"), llm("three", "Three: {input}")]
}

both_backends!(
    async fn a_cancelled_run_starts_no_further_step(backend) {
        let fake = FakeLangflow::start().await;
        let app = spawn_walker_app(backend, &fake.url(), &[]).await;
        let mut runs = app.runs("tenant-cancel").await;
        let agent = active_walker(&app, "tenant-cancel", config(three_llm_steps(), 0, vec![])).await;
        fake.set_delay(Duration::from_millis(1500));

        let run = start_run(&mut runs, &agent.id, "cancel me").await;
        eventually(Duration::from_secs(20), "the first step reaches Langflow", || async {
            step_runs(&fake, &agent.id, &run.id, "One:") == 1
        })
        .await;
        let cancel = pb::CancelRunRequest { id: run.id.clone(), reason: "changed my mind".into(), request_id: "c-1".into() };
        let cancelled = runs.cancel_run(cancel.clone()).await.unwrap().into_inner();
        assert_eq!(cancelled.status, pb::RunStatus::Cancelled as i32);
        assert_eq!(cancelled.error, "changed my mind");
        assert!(cancelled.steps.iter().all(|s| s.status == pb::StepStatus::Skipped as i32), "{cancelled:#?}");
        // A retry of the same cancel answers the same; another cancel of an ended run is refused.
        assert_eq!(runs.cancel_run(cancel).await.unwrap().into_inner(), cancelled);
        expect_code(runs.cancel_run(pb::CancelRunRequest { id: run.id.clone(), ..Default::default() }).await, Code::FailedPrecondition);

        // The step in Langflow finishes; its result is ignored and nothing follows it.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(step_runs(&fake, &agent.id, &run.id, "Two:"), 0, "no step started after the cancel");
        assert_eq!(step_runs(&fake, &agent.id, &run.id, "Three:"), 0);
        let after = get_run(&mut runs, &run.id).await;
        assert_eq!(after.status, pb::RunStatus::Cancelled as i32);
        assert!(after.steps.iter().all(|s| s.status == pb::StepStatus::Skipped as i32 && s.output.is_empty()));
        let events = watch_all(&mut runs, &run.id, 1).await;
        assert_eq!(events.last().map(|e| e.kind.as_str()), Some("run_cancelled"));
    }
);

both_backends!(
    async fn a_run_survives_kill_9_and_no_succeeded_step_runs_again(backend) {
        let fake = FakeLangflow::start().await;
        let lease = [("WALKER_LEASE_SECS", "2".to_string())];
        let mut app = spawn_walker_app(backend, &fake.url(), &lease).await;
        let mut runs = app.runs("tenant-kill").await;
        let agent = active_walker(&app, "tenant-kill", config(three_llm_steps(), 2, vec![])).await;
        fake.set_delay(Duration::from_millis(1500));

        let run = start_run(&mut runs, &agent.id, "survive").await;
        eventually(Duration::from_secs(30), "the second step reaches Langflow", || async {
            step_runs(&fake, &agent.id, &run.id, "Two:") == 1
        })
        .await;
        app.agent.kill().await;
        let before = step_runs(&fake, &agent.id, &run.id, "One:");
        assert_eq!(before, 1);

        app.agent = spawn_agent_service(&app.agent_db, &app.workflow.url(), &walker_env(&fake.url(), &lease)).await;
        let mut runs = app.runs("tenant-kill").await;
        let done = wait_run(&mut runs, &run.id, Duration::from_secs(60), status_is(pb::RunStatus::Succeeded)).await;
        assert_eq!(step_runs(&fake, &agent.id, &run.id, "One:"), 1, "a succeeded step never runs again");
        assert_eq!(step_runs(&fake, &agent.id, &run.id, "Two:"), 2, "the interrupted step ran again");
        assert_eq!(step_runs(&fake, &agent.id, &run.id, "Three:"), 1);
        assert_eq!(done.steps.iter().map(|s| s.attempts).collect::<Vec<_>>(), [1, 2, 1]);
        assert!(done.output.contains("Three:") && done.output.contains("Two:") && done.output.contains("survive"), "{}", done.output);
        let events = watch_all(&mut runs, &run.id, 1).await;
        assert_eq!(events.iter().map(|e| e.sequence).collect::<Vec<_>>(), (1..=events.len() as i64).collect::<Vec<_>>());
        assert!(events.iter().any(|e| e.kind == "step_retrying" && e.step_id == "two"));
        // Counted once per execution, the interrupted one as a failure, and never doubled.
        let workflow_id = agent.workflow_snapshot.as_ref().expect("a snapshot").workflow_id.clone();
        workflow_counts_reach(&app, "tenant-kill", &workflow_id, (4, 3)).await;
        let counted = get_agent(&mut app.agents("tenant-kill").await, &agent.id).await;
        assert_eq!((counted.total_executions, counted.successful_executions), (4, 3));
    }
);

both_backends!(
    async fn a_step_whose_execution_succeeded_before_its_worker_died_is_answered_from_it(backend) {
        let fake = FakeLangflow::start().await;
        let lease = [("WALKER_LEASE_SECS", "2".to_string())];
        let mut app = spawn_walker_app(backend, &fake.url(), &lease).await;
        let mut runs = app.runs("tenant-answered").await;
        let agent = active_walker(&app, "tenant-answered", config(three_llm_steps(), 2, vec![])).await;
        fake.set_delay(Duration::from_millis(1500));

        let run = start_run(&mut runs, &agent.id, "once").await;
        eventually(Duration::from_secs(30), "the second step reaches Langflow", || async {
            step_runs(&fake, &agent.id, &run.id, "Two:") == 1
        })
        .await;
        app.agent.kill().await;
        // As if Langflow had answered and the step's execution had been recorded just before the
        // process died, with the run not yet told.
        let planted = format!(
            "UPDATE executions SET status = 'succeeded', output = 'Two: planted', finished_at = started_at \
             WHERE session_id = '{}' AND step_id = 'two' AND status = 'running' RETURNING 'planted'",
            run.id
        );
        assert_eq!(app.agent_db.sql(&planted).await, "planted");

        app.agent = spawn_agent_service(&app.agent_db, &app.workflow.url(), &walker_env(&fake.url(), &lease)).await;
        let mut runs = app.runs("tenant-answered").await;
        let done = wait_run(&mut runs, &run.id, Duration::from_secs(60), status_is(pb::RunStatus::Succeeded)).await;
        assert_eq!(step_runs(&fake, &agent.id, &run.id, "Two:"), 1, "the step that succeeded did not run again");
        assert_eq!(done.steps[1].output, "Two: planted");
        assert_eq!(done.steps[2].input, "Two: planted");
        assert_eq!(step_runs(&fake, &agent.id, &run.id, "Three:"), 1);
        let mut executions = app.executions("tenant-answered").await;
        let by_session = pb::ListExecutionsRequest { session_id: run.id.clone(), ..Default::default() };
        let listed = recorded_executions(&mut executions, by_session).await;
        assert_eq!(listed.len(), 3, "one execution per step: {listed:#?}");
        assert!(listed.iter().all(|e| e.status == pb::ExecutionStatus::Succeeded as i32), "{listed:#?}");
    }
);

/// PostgreSQL only: SQLite is one process's database by design (one writer, no SKIP LOCKED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_fifty_runs_without_running_a_step_twice() {
    let fake = FakeLangflow::start().await;
    let mut app = spawn_walker_app(Backend::Postgres, &fake.url(), &[]).await;
    let agent =
        active_walker(&app, "tenant-pair", config(vec![llm("a", "A: {input}"), llm("b", "B: {input}")], 0, vec![]))
            .await;
    fake.set_delay(Duration::from_millis(30));
    let second = spawn_agent_service(&app.agent_db, &app.workflow.url(), &walker_env(&fake.url(), &[])).await;
    let mut first_client = app.runs("tenant-pair").await;
    let mut second_client = RunServiceClientExt::client(&second, "tenant-pair").await;

    let mut ids = Vec::new();
    for i in 0..50 {
        let client = if i % 2 == 0 { &mut first_client } else { &mut second_client };
        ids.push(start_run(client, &agent.id, &format!("run {i}")).await.id);
    }
    for id in &ids {
        let run = wait_run(&mut first_client, id, Duration::from_secs(120), |r| {
            pb::RunStatus::try_from(r.status)
                .is_ok_and(|s| !matches!(s, pb::RunStatus::Queued | pb::RunStatus::Running))
        })
        .await;
        assert_eq!(run.status, pb::RunStatus::Succeeded as i32, "{run:#?}");
    }
    for id in &ids {
        for (step, prompt) in [(0, "A:"), (1, "B:")] {
            assert_eq!(step_runs(&fake, &agent.id, id, prompt), 1, "run {id} step {step} ran once");
        }
    }
    assert_eq!(fake.runs(), 100);
    app.agent.kill().await;
}

/// A client of another agent-service process of the same app.
struct RunServiceClientExt;

impl RunServiceClientExt {
    async fn client(service: &ServiceProcess, tenant: &str) -> RunClient {
        engarde::proto::agent::v1::run_service_client::RunServiceClient::with_interceptor(
            service.channel().await,
            as_tenant(tenant),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walker_calls_check_their_input_their_tenant_and_their_retries() {
    let fake = FakeLangflow::start().await;
    let app = spawn_walker_app(Backend::Sqlite, &fake.url(), &[]).await;
    let mut agents = app.agents("tenant-edge").await;
    let mut runs = app.runs("tenant-edge").await;
    let mut stranger_runs = app.runs("tenant-stranger").await;
    let agent =
        active_walker(&app, "tenant-edge", config(vec![llm("a", "A: {input}"), output("out")], 0, vec![])).await;

    // StartRun: bad fields, each named.
    let status = expect_code(
        runs.start_run(pb::StartRunRequest {
            agent_id: "nope".into(),
            input: String::new(),
            request_id: String::new(),
        })
        .await,
        Code::InvalidArgument,
    );
    let fields: Vec<String> = field_violations(&status).into_iter().map(|(f, _)| f).collect();
    assert_eq!(fields, ["agent_id", "input"]);
    let long = "x".repeat(32_001);
    let status = expect_code(
        runs.start_run(pb::StartRunRequest { agent_id: agent.id.clone(), input: long, request_id: String::new() })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(field_violations(&status)[0].0, "input");
    expect_code(
        stranger_runs
            .start_run(pb::StartRunRequest {
                agent_id: agent.id.clone(),
                input: "hi".into(),
                request_id: String::new(),
            })
            .await,
        Code::NotFound,
    );
    // A draft agent cannot run, and says why.
    let draft = agents
        .create_agent_from_workflow(pb::CreateAgentFromWorkflowRequest {
            workflow_id: agent.workflow_snapshot.as_ref().unwrap().workflow_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let status = expect_code(
        runs.start_run(pb::StartRunRequest {
            agent_id: draft.id.clone(),
            input: "hi".into(),
            request_id: String::new(),
        })
        .await,
        Code::FailedPrecondition,
    );
    assert!(status.message().contains("draft"), "{}", status.message());

    // Idempotent start: a retry answers the same run; the id with another request is refused.
    let request =
        pb::StartRunRequest { agent_id: agent.id.clone(), input: "hello".into(), request_id: "start-1".into() };
    let run = runs.start_run(request.clone()).await.unwrap().into_inner();
    let again = runs.start_run(request.clone()).await.unwrap().into_inner();
    assert_eq!(again.id, run.id);
    expect_code(runs.start_run(pb::StartRunRequest { input: "other".into(), ..request }).await, Code::AlreadyExists);
    let done = wait_run(&mut runs, &run.id, Duration::from_secs(30), status_is(pb::RunStatus::Succeeded)).await;
    assert_eq!(done.output, done.steps[0].output, "the output step records what reached it");
    assert_eq!(done.trigger, pb::RunTrigger::Manual as i32);

    // Reads: another tenant's run is not found; listings are the tenant's own.
    expect_code(stranger_runs.get_run(pb::GetRunRequest { id: run.id.clone() }).await, Code::NotFound);
    expect_code(runs.get_run(pb::GetRunRequest { id: "x".into() }).await, Code::InvalidArgument);
    expect_code(
        stranger_runs.cancel_run(pb::CancelRunRequest { id: run.id.clone(), ..Default::default() }).await,
        Code::NotFound,
    );
    expect_code(
        stranger_runs.watch_run(pb::WatchRunRequest { id: run.id.clone(), from_sequence: 1 }).await,
        Code::NotFound,
    );
    expect_code(
        runs.watch_run(pb::WatchRunRequest { id: run.id.clone(), from_sequence: -1 }).await,
        Code::InvalidArgument,
    );
    let theirs = stranger_runs.list_runs(pb::ListRunsRequest::default()).await.unwrap().into_inner();
    assert!(theirs.runs.is_empty());
    let ours = runs
        .list_runs(pb::ListRunsRequest {
            agent_id: agent.id.clone(),
            status: pb::RunStatus::Succeeded as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ours.runs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), [run.id.as_str()]);
    assert_eq!(ours.runs[0], done, "a listed run carries its steps, as GetRun answers it");
    expect_code(runs.list_runs(pb::ListRunsRequest { status: 99, ..Default::default() }).await, Code::InvalidArgument);
    expect_code(
        runs.list_runs(pb::ListRunsRequest { agent_id: "x".into(), ..Default::default() }).await,
        Code::InvalidArgument,
    );
    expect_code(
        runs.list_pending_reviews(pb::ListPendingReviewsRequest { page_size: -1, ..Default::default() }).await,
        Code::InvalidArgument,
    );

    // Pages of runs, newest first, without overlap; each run with its own steps.
    let mut started = Vec::new();
    for i in 0..3 {
        started.push(start_run(&mut runs, &agent.id, &format!("page {i}")).await);
    }
    for run in &started {
        wait_run(&mut runs, &run.id, Duration::from_secs(30), status_is(pb::RunStatus::Succeeded)).await;
    }
    let first = runs.list_runs(pb::ListRunsRequest { page_size: 2, ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(first.runs.len(), 2);
    let second = runs
        .list_runs(pb::ListRunsRequest {
            page_size: 2,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.runs.len(), 2);
    assert!(
        first.runs[1].create_time.as_ref().map(|t| (t.seconds, t.nanos))
            >= second.runs[0].create_time.as_ref().map(|t| (t.seconds, t.nanos))
    );
    assert!(second.runs.iter().all(|r| first.runs.iter().all(|f| f.id != r.id)));
    for listed in first.runs.iter().chain(&second.runs) {
        let got = runs.get_run(pb::GetRunRequest { id: listed.id.clone() }).await.unwrap().into_inner();
        assert_eq!(listed, &got, "run {} as listed and as GetRun answers it", listed.id);
    }

    // Review calls with bad ids, and reviews that are not the caller's.
    let reject = pb::RejectStepRequest {
        run_id: run.id.clone(),
        step_id: "a".into(),
        review_id: "not-a-uuid".into(),
        ..Default::default()
    };
    let status = expect_code(runs.reject_step(reject.clone()).await, Code::InvalidArgument);
    assert_eq!(field_violations(&status)[0].0, "review_id");
    expect_code(
        runs.reject_step(pb::RejectStepRequest { review_id: uuid::Uuid::new_v4().to_string(), ..reject }).await,
        Code::NotFound,
    );

    // PreviewSchedule: count bounds; an agent without scheduled triggers has no fires.
    let preview = |agent_id: &str, count: i32| pb::PreviewScheduleRequest { agent_id: agent_id.into(), count };
    expect_code(runs.preview_schedule(preview(&agent.id, 101)).await, Code::InvalidArgument);
    expect_code(runs.preview_schedule(preview(&agent.id, -1)).await, Code::InvalidArgument);
    expect_code(stranger_runs.preview_schedule(preview(&agent.id, 5)).await, Code::NotFound);
    assert!(runs.preview_schedule(preview(&agent.id, 5)).await.unwrap().into_inner().fires.is_empty());
}
