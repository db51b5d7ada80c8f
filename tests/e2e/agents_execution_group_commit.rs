//! Executions that finish together share one commit (group commit): every one is recorded once,
//! the agent's counters and the workflow's statistics equal what was recorded, and a member whose
//! write the database refuses fails alone, not its group.

use std::time::Duration;

use engarde::proto::agent::v1 as pb;
use engarde::proto::workflow::v1 as wpb;
use tonic::Code;

use crate::agents_execution::{
    active_agent, all_executions, execute, get_agent, session_messages, spawn_with_langflow, workflow_counts_reach,
};
use crate::both_backends;
use crate::helpers::*;
use crate::langflow_support::FakeLangflow;

const SUCCEEDED: i32 = pb::ExecutionStatus::Succeeded as i32;

/// Concurrent calls: enough for groups to form while one commits.
const CALLS: usize = 64;

/// Runs `inputs` as concurrent ExecuteAgent calls (half in one shared session); answers each
/// call's result in `inputs`' order.
async fn execute_together(
    executions: &ExecutionClient,
    agent_id: &str,
    inputs: &[String],
) -> Vec<Result<pb::Execution, tonic::Status>> {
    let tasks: Vec<_> = inputs
        .iter()
        .enumerate()
        .map(|(n, input)| {
            let mut executions = executions.clone();
            let session = if n % 2 == 0 { "shared".to_string() } else { String::new() };
            let request = execute(agent_id, input, &session);
            tokio::spawn(async move {
                executions.execute_agent(request).await.map(|answer| answer.into_inner().execution.unwrap())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

/// The agent's counters equal the executions recorded: how many, how many succeeded, and the
/// mean of their latencies.
fn assert_counters_match(agent: &pb::Agent, recorded: &[pb::Execution]) {
    let counted: Vec<_> = recorded.iter().filter(|e| e.status != pb::ExecutionStatus::Running as i32).collect();
    let succeeded = counted.iter().filter(|e| e.status == SUCCEEDED).count() as i64;
    assert_eq!((agent.total_executions, agent.successful_executions), (counted.len() as i64, succeeded));
    let mean = counted.iter().map(|e| e.latency_ms).sum::<f64>() / counted.len() as f64;
    let average = agent.average_response_time_ms;
    assert!((average - mean).abs() <= 1e-9 * mean.max(1.0), "average {average} vs recorded mean {mean}");
}

/// An active agent of "tenant-a" whose Langflow (the fake) answers every call after the same
/// pause, so that concurrent calls finish together; agent-service's metrics show the groups.
struct Together {
    _fake: FakeLangflow,
    metrics: u16,
    app: TestApp,
    workflow: wpb::WorkflowDefinition,
    agent: pb::Agent,
}

impl Together {
    async fn start(backend: Backend, extra: &[(&str, String)]) -> Self {
        let fake = FakeLangflow::start().await;
        fake.set_delay(Duration::from_millis(300));
        let metrics = free_port();
        let mut env = vec![("METRICS_ADDR", format!("127.0.0.1:{metrics}"))];
        env.extend(extra.iter().cloned());
        let app = spawn_with_langflow(backend, &fake.url(), &env).await;
        let (workflow, agent) = active_agent(&app, "tenant-a").await;
        Self { _fake: fake, metrics, app, workflow, agent }
    }
}

both_backends!(
    async fn executions_finishing_together_are_each_recorded_and_counted_once(backend) {
        finishing_together_records_each_once(backend, &[]).await
    }
);

both_backends!(
    async fn executions_never_stored_running_finishing_together_are_each_recorded_and_counted_once(backend) {
        // Every run ends before its RUNNING row is due: each group stores its members finished.
        finishing_together_records_each_once(backend, &[("EXECUTION_RUNNING_ROW_AFTER_MS", "60000".into())]).await
    }
);

async fn finishing_together_records_each_once(backend: Backend, extra: &[(&str, String)]) {
    let Together { _fake, metrics, app, workflow, agent } = Together::start(backend, extra).await;
    let mut agents = app.agents("tenant-a").await;
    let mut executions = app.executions("tenant-a").await;

    let inputs: Vec<String> = (0..CALLS).map(|n| format!("topic {n}")).collect();
    let answers = execute_together(&executions, &agent.id, &inputs).await;
    let mut answered: Vec<String> = answers.into_iter().map(|a| a.expect("every call succeeds").id).collect();
    answered.sort();
    answered.dedup();
    assert_eq!(answered.len(), CALLS);

    let recorded = all_executions(&mut executions, &agent.id).await;
    let mut ids: Vec<String> = recorded.iter().map(|e| e.id.clone()).collect();
    ids.sort();
    assert_eq!(ids, answered, "each answered execution is recorded, once");
    assert!(recorded.iter().all(|e| e.status == SUCCEEDED));
    assert_counters_match(&get_agent(&mut agents, &agent.id).await, &recorded);
    // The shared session's messages are numbered without gaps or clashes.
    let shared = session_messages(&mut executions, &agent.id, "shared", 200).await;
    let sequences: Vec<i64> = shared.iter().map(|m| m.sequence).collect();
    assert_eq!(sequences, (1..=CALLS as i64).collect::<Vec<_>>());
    workflow_counts_reach(&app, "tenant-a", &workflow.id, (CALLS as i64, CALLS as i64)).await;

    // They did share commits: fewer groups than finishes, and at least one of several.
    let scraped = scrape(metrics).await;
    let finishes = metric_sum(&scraped, "agent_execution_finishes_total", &[]);
    let groups = metric_sum(&scraped, "agent_execution_finish_batches_total", &[]);
    let shared_commits = metric_sum(&scraped, "agent_execution_finish_batches_total", &["outcome=\"committed\""]);
    assert!(finishes >= CALLS as f64, "{finishes} finishes");
    assert!(
        groups < finishes && shared_commits >= 1.0,
        "{groups} groups, {shared_commits} shared, {finishes} finishes"
    );
}

both_backends!(
    async fn a_finish_the_database_refuses_fails_alone_not_its_group(backend) {
        a_refused_finish_fails_alone(backend, &[]).await
    }
);

both_backends!(
    async fn a_refused_finish_of_a_run_never_stored_fails_alone_and_is_left_running(backend) {
        // Every run ends before its RUNNING row is due: the refused one's is written after.
        a_refused_finish_fails_alone(backend, &[("EXECUTION_RUNNING_ROW_AFTER_MS", "60000".into())]).await
    }
);

async fn a_refused_finish_fails_alone(backend: Backend, extra: &[(&str, String)]) {
    let Together { _fake, metrics, app, workflow, agent } = Together::start(backend, extra).await;
    let mut agents = app.agents("tenant-a").await;
    let mut executions = app.executions("tenant-a").await;
    // The database refuses to finish the execution of input "poison", as it would refuse a
    // write it cannot take: a real error, on that member's statement only.
    match backend {
        Backend::Postgres => {
            app.agent_db
                .sql(
                    "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                     IF NEW.input = 'poison' AND NEW.status <> 'running' THEN \
                     RAISE EXCEPTION 'poison refused by the test'; END IF; RETURN NEW; END $$",
                )
                .await;
            app.agent_db
                .sql(
                    "CREATE TRIGGER refuse_poison BEFORE INSERT OR UPDATE ON executions \
                     FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
                )
                .await;
        }
        Backend::Sqlite => {
            // One trigger per event: a finish updates a RUNNING row, or stores one never stored.
            for event in ["UPDATE", "INSERT"] {
                let trigger = format!(
                    "CREATE TRIGGER refuse_poison_{event} BEFORE {event} ON executions FOR EACH ROW \
                     WHEN NEW.input = 'poison' AND NEW.status <> 'running' \
                     BEGIN SELECT RAISE(ABORT, 'poison refused by the test'); END"
                );
                app.agent_db.sql(&trigger).await;
            }
        }
    }

    // Rounds until the poisoned finish has shared a group (it fails alone only if it happened
    // to be the first of a burst, committed while the others gathered).
    let mut rounds = 0;
    let mut succeeded = 0;
    loop {
        rounds += 1;
        let mut inputs: Vec<String> = (0..CALLS - 1).map(|n| format!("topic {n}")).collect();
        inputs.insert(CALLS / 2, "poison".into());
        for (input, answer) in inputs.iter().zip(execute_together(&executions, &agent.id, &inputs).await) {
            match answer {
                Ok(execution) => {
                    assert_ne!(input, "poison");
                    assert_eq!(execution.status, SUCCEEDED);
                    succeeded += 1;
                }
                Err(status) => {
                    assert_eq!(input, "poison", "only the poisoned call fails: {status:?}");
                    assert_eq!(status.code(), Code::Internal, "{status:?}");
                }
            }
        }
        let scraped = scrape(metrics).await;
        if metric_sum(&scraped, "agent_execution_finish_batches_total", &["outcome=\"one_by_one\""]) >= 1.0 {
            break;
        }
        assert!(rounds < 3, "the poisoned finish never shared a group in {rounds} rounds");
    }
    assert_eq!(succeeded, rounds * (CALLS - 1));

    let recorded = all_executions(&mut executions, &agent.id).await;
    assert_eq!(recorded.len(), rounds * CALLS);
    // The refused ones stay RUNNING (the janitor's, later), counted nowhere yet.
    let running: Vec<_> = recorded.iter().filter(|e| e.status == pb::ExecutionStatus::Running as i32).collect();
    assert_eq!(running.len(), rounds);
    assert!(running.iter().all(|e| e.input == "poison"));
    assert_counters_match(&get_agent(&mut agents, &agent.id).await, &recorded);
    workflow_counts_reach(&app, "tenant-a", &workflow.id, (succeeded as i64, succeeded as i64)).await;
}
