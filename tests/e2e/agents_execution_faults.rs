//! Executing agents when Langflow misbehaves (the in-process FakeLangflow): too slow for the
//! caller's deadline, 5xx, garbage, a dropped stream, gone and back, a flow deleted behind the
//! agent's back; and agent-service itself killed mid-run. Every execution is recorded and
//! counted once, whatever happened.

use std::time::{Duration, Instant};

use engarde::proto::agent::v1 as pb;
use tonic::Code;

use crate::agents_execution::{
    active_agent, collect_stream, execute, get_agent, recorded_executions, run_agent, spawn_with_langflow,
    workflow_counts_reach,
};
use crate::both_backends;
use crate::helpers::*;
use crate::langflow_support::FakeLangflow;

const FAILED: i32 = pb::ExecutionStatus::Failed as i32;
const SUCCEEDED: i32 = pb::ExecutionStatus::Succeeded as i32;

both_backends!(
    async fn a_langflow_slower_than_the_callers_deadline_is_deadline_exceeded_and_recorded(backend) {
        let fake = FakeLangflow::start().await;
        let app = spawn_with_langflow(backend, &fake.url(), &[]).await;
        let (_, agent) = active_agent(&app, "tenant-a").await;
        let mut agents = app.agents("tenant-a").await;
        let mut executions = app.executions("tenant-a").await;
        fake.set_delay(Duration::from_secs(5));
        let mut request = tonic::Request::new(execute(&agent.id, "slow", "s1"));
        request.set_timeout(Duration::from_millis(1500));
        let status = expect_code(executions.execute_agent(request).await, Code::DeadlineExceeded);
        // Recorded FAILED (the service answered before the caller's deadline, naming it).
        let recorded = recorded_executions(&mut executions, pb::ListExecutionsRequest::default()).await;
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[0].status, FAILED);
        assert!(status.message().contains(&recorded[0].id), "{status:?}");
        assert!(recorded[0].latency_ms < 5000.0, "{:?}", recorded[0]);
        let counted = get_agent(&mut agents, &agent.id).await;
        assert_eq!((counted.total_executions, counted.successful_executions), (1, 0));
        assert!(
            executions
                .list_session_messages(pb::ListSessionMessagesRequest {
                    agent_id: agent.id.clone(),
                    session_id: "s1".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .messages
                .is_empty(),
            "a failed run adds nothing to the conversation"
        );
    }
);

both_backends!(
    async fn langflow_failures_are_unavailable_recorded_and_recovered_from(backend) {
        let mut fake = FakeLangflow::start().await;
        let app = spawn_with_langflow(backend, &fake.url(), &[]).await;
        let (workflow, agent) = active_agent(&app, "tenant-a").await;
        let mut agents = app.agents("tenant-a").await;
        let mut executions = app.executions("tenant-a").await;

        fake.fail_runs_with(500, 1);
        let status = expect_code(executions.execute_agent(execute(&agent.id, "a", "")).await, Code::Unavailable);
        assert!(status.message().contains("execution "), "{status:?}");
        fake.garbage_runs(1);
        expect_code(executions.execute_agent(execute(&agent.id, "b", "")).await, Code::Unavailable);
        // Langflow down, then back (503s while it comes up): the agent recovers by itself.
        fake.stop().await;
        expect_code(executions.execute_agent(execute(&agent.id, "c", "")).await, Code::Unavailable);
        fake.restart().await;
        fake.fail_runs_with(503, 2);
        expect_code(executions.execute_agent(execute(&agent.id, "d", "")).await, Code::Unavailable);
        expect_code(executions.execute_agent(execute(&agent.id, "e", "")).await, Code::Unavailable);
        let recovered = run_agent(&mut executions, &agent.id, "f", "").await;
        assert_eq!(recovered.status, SUCCEEDED);
        assert!(recovered.output.contains("Write a post about f"), "{recovered:?}");

        let failed = recorded_executions(&mut executions, pb::ListExecutionsRequest { status: FAILED, ..Default::default() }).await;
        assert_eq!(failed.len(), 5);
        assert!(failed.iter().all(|e| !e.error.is_empty() && e.output.is_empty()));
        let counted = get_agent(&mut agents, &agent.id).await;
        assert_eq!((counted.total_executions, counted.successful_executions), (6, 1));
        assert_eq!(counted.status, pb::AgentStatus::Active as i32, "an outage is no fault of the agent");
        workflow_counts_reach(&app, "tenant-a", &workflow.id, (6, 1)).await;
    }
);

both_backends!(
    async fn a_flow_deleted_behind_the_agents_back_fails_it_into_error(backend) {
        let fake = FakeLangflow::start().await;
        let app = spawn_with_langflow(backend, &fake.url(), &[]).await;
        let (_, agent) = active_agent(&app, "tenant-a").await;
        let mut agents = app.agents("tenant-a").await;
        let mut executions = app.executions("tenant-a").await;
        assert!(fake.remove_flow(&agent.langflow_workflow_id));
        let status = expect_code(executions.execute_agent(execute(&agent.id, "x", "")).await, Code::FailedPrecondition);
        assert!(status.message().contains(&agent.langflow_workflow_id), "{status:?}");
        let broken = get_agent(&mut agents, &agent.id).await;
        assert_eq!(broken.status, pb::AgentStatus::Error as i32);
        assert!(broken.status_reason.contains(&agent.langflow_workflow_id), "{broken:?}");
        assert_eq!((broken.total_executions, broken.successful_executions), (1, 0));
        // An agent in ERROR does not run (and Langflow is not asked).
        let runs = fake.runs();
        let status = expect_code(executions.execute_agent(execute(&agent.id, "x", "")).await, Code::FailedPrecondition);
        assert!(status.message().contains("error"), "{status:?}");
        assert_eq!(fake.runs(), runs);
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_events_reach_the_caller_as_they_arrive() {
    use pb::execution_event::Event;
    let fake = FakeLangflow::start().await;
    // A second apart: a forwarder that buffered would deliver the answer and the end within
    // milliseconds of each other, so 300 ms tells the two apart with room for a loaded machine.
    fake.set_event_gap(Duration::from_millis(1000));
    let app = spawn_with_langflow(Backend::Sqlite, &fake.url(), &[]).await;
    let (_, agent) = active_agent(&app, "tenant-a").await;
    let mut executions = app.executions("tenant-a").await;
    let began = Instant::now();
    let mut stream = executions.stream_execute_agent(execute(&agent.id, "tulips", "")).await.unwrap().into_inner();
    let mut arrivals = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        arrivals.push((began.elapsed(), event.event.unwrap()));
    }
    // The fake sends: the echo, the answer, `end`, 1 s apart.
    assert!(matches!(arrivals[0].1, Event::Started(_)), "{arrivals:?}");
    let answer =
        arrivals.iter().find(|(_, e)| matches!(e, Event::OutputText(t) if t.contains("tulips"))).expect("text");
    let (finished_at, Event::Finished(finished)) = arrivals.last().unwrap() else {
        panic!("finished last: {arrivals:?}")
    };
    assert_eq!(finished.status, SUCCEEDED);
    assert!(
        *finished_at >= answer.0 + Duration::from_millis(300),
        "the answer arrived before the end, not all at once: {arrivals:?}"
    );
    assert!(arrivals[0].0 + Duration::from_millis(1000) <= *finished_at, "started came first: {arrivals:?}");
}

both_backends!(
    async fn a_stream_that_breaks_is_recorded_failed_then_unavailable(backend) {
        use pb::execution_event::Event;
        let fake = FakeLangflow::start().await;
        fake.set_event_gap(Duration::from_millis(50));
        let app = spawn_with_langflow(backend, &fake.url(), &[]).await;
        let (_, agent) = active_agent(&app, "tenant-a").await;
        let mut agents = app.agents("tenant-a").await;
        let mut executions = app.executions("tenant-a").await;
        fake.drop_stream_after_events(1);
        let (events, error) = collect_stream(&mut executions, execute(&agent.id, "x", "s")).await;
        let error = error.expect("the stream ends with an error");
        assert_eq!(error.code(), Code::Unavailable, "{error:?}");
        assert!(matches!(events.first(), Some(Event::Started(_))), "{events:?}");
        let Some(Event::Finished(finished)) = events.last() else { panic!("finished before the error: {events:?}") };
        assert_eq!(finished.status, FAILED);
        assert!(error.message().contains(&finished.id));
        let stored = executions.get_execution(pb::GetExecutionRequest { id: finished.id.clone() }).await.unwrap().into_inner();
        assert_eq!(&stored, finished);
        // A stream whose flow is gone: started, finished FAILED, FAILED_PRECONDITION.
        fake.remove_flow(&agent.langflow_workflow_id);
        let (events, error) = collect_stream(&mut executions, execute(&agent.id, "y", "s")).await;
        assert_eq!(error.map(|e| e.code()), Some(Code::FailedPrecondition));
        assert!(matches!(events.last(), Some(Event::Finished(e)) if e.status == FAILED), "{events:?}");
        assert_eq!(get_agent(&mut agents, &agent.id).await.status, pb::AgentStatus::Error as i32);
    }
);

both_backends!(
    async fn a_caller_that_goes_away_does_not_stop_the_record(backend) {
        let fake = FakeLangflow::start().await;
        let app = spawn_with_langflow(backend, &fake.url(), &[]).await;
        let (workflow, agent) = active_agent(&app, "tenant-a").await;
        let mut agents = app.agents("tenant-a").await;
        let mut executions = app.executions("tenant-a").await;
        fake.set_delay(Duration::from_millis(1500));
        // Unary: the caller gives up (its future dropped) while Langflow works.
        let mut caller = executions.clone();
        let request = execute(&agent.id, "patient", "s1");
        let gave_up = tokio::time::timeout(Duration::from_millis(500), caller.execute_agent(request)).await;
        assert!(gave_up.is_err());
        // Streamed: the caller reads `started` and hangs up.
        let mut stream = executions.stream_execute_agent(execute(&agent.id, "patient too", "s2")).await.unwrap().into_inner();
        assert!(stream.message().await.unwrap().is_some());
        drop(stream);
        eventually(Duration::from_secs(10), "both executions recorded", || {
            let mut executions = executions.clone();
            async move {
                let all = recorded_executions(&mut executions, pb::ListExecutionsRequest { status: SUCCEEDED, ..Default::default() }).await;
                all.len() == 2
            }
        })
        .await;
        let counted = get_agent(&mut agents, &agent.id).await;
        assert_eq!((counted.total_executions, counted.successful_executions), (2, 2));
        workflow_counts_reach(&app, "tenant-a", &workflow.id, (2, 2)).await;
    }
);

both_backends!(
    async fn an_execution_cut_off_by_a_crash_is_failed_interrupted_and_counted_once(backend) {
        let fake = FakeLangflow::start().await;
        let stale = [("EXECUTION_STALE_AFTER_SECS", "2".to_string())];
        let mut app = spawn_with_langflow(backend, &fake.url(), &stale).await;
        let (workflow, agent) = active_agent(&app, "tenant-a").await;
        let mut executions = app.executions("tenant-a").await;
        fake.set_delay(Duration::from_secs(60));
        let mut caller = executions.clone();
        let request = execute(&agent.id, "doomed", "");
        let pending = tokio::spawn(async move { caller.execute_agent(request).await });
        eventually(Duration::from_secs(10), "Langflow is asked", || async { fake.runs() == 1 }).await;
        // The RUNNING record is written while Langflow is called, not before: wait for its commit.
        let lister = executions.clone();
        eventually(Duration::from_secs(10), "the RUNNING record", move || {
            let mut lister = lister.clone();
            async move {
                let running = recorded_executions(&mut lister, pb::ListExecutionsRequest::default()).await;
                running.first().is_some_and(|e| e.status == pb::ExecutionStatus::Running as i32)
            }
        })
        .await;
        let running = recorded_executions(&mut executions, pb::ListExecutionsRequest::default()).await;

        app.agent.kill().await;
        assert!(pending.await.unwrap().is_err());
        let env = [
            ("LANGFLOW_URL", fake.url()),
            ("REPORT_INTERVAL_MS", "500".to_string()),
            ("EXECUTION_STALE_AFTER_SECS", "2".to_string()),
        ];
        app.agent = spawn_agent_service(&app.agent_db, &app.workflow.url(), &env).await;
        let mut agents = app.agents("tenant-a").await;
        let mut executions = app.executions("tenant-a").await;
        let id = running[0].id.clone();
        eventually(Duration::from_secs(15), "the janitor fails the interrupted execution", || {
            let mut executions = executions.clone();
            let id = id.clone();
            async move {
                let e = executions.get_execution(pb::GetExecutionRequest { id }).await.unwrap().into_inner();
                e.status == FAILED
            }
        })
        .await;
        let failed = executions.get_execution(pb::GetExecutionRequest { id: id.clone() }).await.unwrap().into_inner();
        assert!(failed.error.contains("interrupted"), "{failed:?}");
        workflow_counts_reach(&app, "tenant-a", &workflow.id, (1, 0)).await;
        // Later sweeps find nothing more to do: counted once.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let counted = get_agent(&mut agents, &agent.id).await;
        assert_eq!((counted.total_executions, counted.successful_executions), (1, 0));
        workflow_counts_reach(&app, "tenant-a", &workflow.id, (1, 0)).await;
        // A retry of the lost call (no request id) is a new execution, which runs.
        fake.set_delay(Duration::ZERO);
        assert_eq!(run_agent(&mut executions, &agent.id, "again", "").await.status, SUCCEEDED);
    }
);

both_backends!(
    async fn statistics_match_exactly_with_failures_among_concurrent_runs(backend) {
        const RUNS: usize = 12;
        const FAILURES: usize = 4;
        let fake = FakeLangflow::start().await;
        let app = spawn_with_langflow(backend, &fake.url(), &[]).await;
        let (workflow, agent) = active_agent(&app, "tenant-a").await;
        let agents = app.agents("tenant-a").await;
        let executions = app.executions("tenant-a").await;
        fake.fail_runs_with(502, FAILURES);
        let mut tasks = Vec::new();
        for n in 0..RUNS {
            let mut executions = executions.clone();
            let request = execute(&agent.id, &format!("topic {n}"), "shared");
            tasks.push(tokio::spawn(async move { executions.execute_agent(request).await }));
        }
        let mut succeeded = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => succeeded += 1,
                Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
            }
        }
        assert_eq!(succeeded, RUNS - FAILURES);
        let mut agents = agents.clone();
        let counted = get_agent(&mut agents, &agent.id).await;
        assert_eq!((counted.total_executions, counted.successful_executions), (RUNS as i64, (RUNS - FAILURES) as i64));
        workflow_counts_reach(&app, "tenant-a", &workflow.id, (RUNS as i64, (RUNS - FAILURES) as i64)).await;
    }
);
