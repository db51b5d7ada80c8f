//! The agents executions run, kept in memory on PostgreSQL (`AGENT_CACHE_CAPACITY`): a replica
//! runs an agent as it was last committed, whichever replica (or operator) changed it, reads its
//! own writes at once, and runs nothing it missed while its change feed was down. On SQLite (no
//! cache) the same holds, every run reading its agent.

use std::time::Duration;

use engarde::proto::agent::v1 as pb;
use tonic::Code;

use crate::agents_execution::{active_agent, execute, run_agent, spawn_with_langflow};
use crate::both_backends;
use crate::helpers::*;
use crate::langflow_support::FakeLangflow;
use pb::agent_service_client::AgentServiceClient;

/// How long a change made elsewhere may take to reach another replica's runs.
const PROPAGATION: Duration = Duration::from_secs(5);

/// What ExecuteAgent answers on `executions` for agent `id`: OK, or the error's code.
async fn runs(executions: &ExecutionClient, id: &str) -> Code {
    let mut executions = executions.clone();
    match executions.execute_agent(execute(id, "x", "")).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// Waits until a run of agent `id` on `executions` answers `code`.
async fn until_runs(executions: &ExecutionClient, id: &str, code: Code) {
    eventually(
        PROPAGATION,
        &format!("agent {id} runs with {code:?}"),
        || async move { runs(executions, id).await == code },
    )
    .await;
}

both_backends!(
    async fn replicas_run_an_agent_as_it_was_last_changed_anywhere(backend) {
        let fake = FakeLangflow::start().await;
        let metrics = free_port();
        let app = spawn_with_langflow(backend, &fake.url(), &[("METRICS_ADDR", format!("127.0.0.1:{metrics}"))]).await;
        let env = [("LANGFLOW_URL", fake.url()), ("REPORT_INTERVAL_MS", "500".to_owned())];
        let b = spawn_agent_service(&app.agent_db, &app.workflow.url(), &env).await;
        let (_, agent) = active_agent(&app, "tenant-a").await;
        let on_a = app.executions("tenant-a").await;
        let mut agents_on_a = app.agents("tenant-a").await;
        let mut agents_on_b = AgentServiceClient::with_interceptor(b.channel().await, as_tenant("tenant-a"));

        // A runs the agent (from memory, on PostgreSQL, after the first run).
        let mut executions = on_a.clone();
        for input in ["one", "two", "three"] {
            run_agent(&mut executions, &agent.id, input, "").await;
        }
        let hits = metric_sum(&scrape(metrics).await, "agent_cache_lookups_total", &[r#"result="hit""#]);
        match backend {
            Backend::Postgres => assert!(hits >= 2.0, "runs after the first find their agent in memory: {hits}"),
            Backend::Sqlite => assert_eq!(hits, 0.0, "no cache on SQLite"),
        }

        // B pauses it: A stops running it, and Langflow is asked no more.
        agents_on_b.pause_agent(pb::PauseAgentRequest { id: agent.id.clone(), ..Default::default() }).await.unwrap();
        until_runs(&on_a, &agent.id, Code::FailedPrecondition).await;
        let asked = fake.runs();
        for _ in 0..5 {
            assert_eq!(runs(&on_a, &agent.id).await, Code::FailedPrecondition);
        }
        assert_eq!(fake.runs(), asked);

        // B activates it again: A runs it again.
        agents_on_b.activate_agent(pb::ActivateAgentRequest { id: agent.id.clone(), ..Default::default() }).await.unwrap();
        until_runs(&on_a, &agent.id, Code::Ok).await;

        // A's own pause is seen by A's next run at once, not when announced.
        agents_on_a.pause_agent(pb::PauseAgentRequest { id: agent.id.clone(), ..Default::default() }).await.unwrap();
        assert_eq!(runs(&on_a, &agent.id).await, Code::FailedPrecondition);
        agents_on_a.activate_agent(pb::ActivateAgentRequest { id: agent.id.clone(), ..Default::default() }).await.unwrap();
        assert_eq!(runs(&on_a, &agent.id).await, Code::Ok);

        // Another tenant never runs it, cached or not.
        let other = app.executions("tenant-b").await;
        assert_eq!(runs(&other, &agent.id).await, Code::NotFound);

        // B pauses and deletes it: NOT_FOUND on A.
        agents_on_b.pause_agent(pb::PauseAgentRequest { id: agent.id.clone(), ..Default::default() }).await.unwrap();
        agents_on_b.delete_agent(pb::DeleteAgentRequest { id: agent.id.clone(), ..Default::default() }).await.unwrap();
        until_runs(&on_a, &agent.id, Code::NotFound).await;
        drop(b);
    }
);

/// An operator's SQL that moves an agent's version is announced like any other commit; a
/// change committed while the feed's connection is down is never run past: the cache is off
/// until the feed listens again, and then holds nothing older.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_runs_follow_sql_changes_and_a_lost_feed() {
    let fake = FakeLangflow::start().await;
    let app = spawn_with_langflow(Backend::Postgres, &fake.url(), &[]).await;
    let (_, agent) = active_agent(&app, "tenant-a").await;
    let executions: ExecutionClient = app.executions("tenant-a").await;
    assert_eq!(runs(&executions, &agent.id).await, Code::Ok);
    assert_eq!(runs(&executions, &agent.id).await, Code::Ok);

    let db = &app.agent_db;
    db.psql(&format!("UPDATE agents SET status = 'paused', version = version + 1 WHERE id = '{}'", agent.id));
    until_runs(&executions, &agent.id, Code::FailedPrecondition).await;
    db.psql(&format!("UPDATE agents SET status = 'active', version = version + 1 WHERE id = '{}'", agent.id));
    until_runs(&executions, &agent.id, Code::Ok).await;

    // The feed's connection dies, and a pause commits before it listens again.
    let terminated = db.psql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN \"engarde_agent_changes\"%'",
    );
    assert_eq!(terminated, "1", "one process, one listening connection for agent changes");
    db.psql(&format!("UPDATE agents SET status = 'paused', version = version + 1 WHERE id = '{}'", agent.id));
    until_runs(&executions, &agent.id, Code::FailedPrecondition).await;
    for _ in 0..10 {
        assert_eq!(runs(&executions, &agent.id).await, Code::FailedPrecondition);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
