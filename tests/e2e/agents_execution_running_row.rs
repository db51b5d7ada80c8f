//! When an execution without a request id is stored RUNNING (`EXECUTION_RUNNING_ROW_AFTER_MS`): a
//! run that ends first is stored once, finished, with everything a finish records; a longer one
//! is listed RUNNING while it runs; 0 writes the row at once; an agent deleted meanwhile is
//! NOT_FOUND with nothing stored. What the database was asked to insert is seen by a trigger.

use std::time::Duration;

use engarde::proto::agent::v1 as pb;
use tonic::Code;

use crate::agents_execution::{
    active_agent, execute, get_agent, messages, recorded_executions, run_agent, spawn_with_langflow,
    workflow_counts_reach,
};
use crate::both_backends;
use crate::helpers::*;
use crate::langflow_support::FakeLangflow;

const SUCCEEDED: i32 = pb::ExecutionStatus::Succeeded as i32;
const RUNNING: i32 = pb::ExecutionStatus::Running as i32;

/// Has the database note the status of every execution row inserted from now on.
async fn note_inserted_statuses(db: &TestDb) {
    db.sql("CREATE TABLE inserted_statuses (status TEXT NOT NULL)").await;
    match db.backend() {
        Backend::Postgres => {
            db.sql(
                "CREATE FUNCTION note_status() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                 INSERT INTO inserted_statuses VALUES (NEW.status); RETURN NEW; END $$",
            )
            .await;
            db.sql("CREATE TRIGGER note_status AFTER INSERT ON executions FOR EACH ROW EXECUTE FUNCTION note_status()")
                .await;
        }
        Backend::Sqlite => {
            db.sql(
                "CREATE TRIGGER note_status AFTER INSERT ON executions FOR EACH ROW \
                 BEGIN INSERT INTO inserted_statuses VALUES (NEW.status); END",
            )
            .await;
        }
    }
}

/// How many execution rows were inserted with `status`.
async fn inserted(db: &TestDb, status: &str) -> usize {
    let sql = format!("SELECT CAST(COUNT(*) AS TEXT) FROM inserted_statuses WHERE status = '{status}'");
    db.sql(&sql).await.parse().unwrap()
}

both_backends!(
    async fn a_run_that_ends_before_its_running_row_is_due_is_stored_once_finished(backend) {
        let fake = FakeLangflow::start().await;
        // The default: the RUNNING row is due after 100 ms; the fake answers at once.
        let app = spawn_with_langflow(backend, &fake.url(), &[]).await;
        let (workflow, agent) = active_agent(&app, "tenant-a").await;
        note_inserted_statuses(&app.agent_db).await;
        let mut agents = app.agents("tenant-a").await;
        let mut executions = app.executions("tenant-a").await;

        let first = run_agent(&mut executions, &agent.id, "spring launch", "s1").await;
        let second = run_agent(&mut executions, &agent.id, "summer sale", "s1").await;
        assert_eq!((first.status, second.status), (SUCCEEDED, SUCCEEDED));
        // Everything a finish records is there: the row, the conversation, the counters, the
        // report to workflow-service.
        let stored = executions.get_execution(pb::GetExecutionRequest { id: first.id.clone() }).await.unwrap().into_inner();
        assert_eq!((stored.status, stored.output.as_str(), stored.input.as_str()), (SUCCEEDED, first.output.as_str(), "spring launch"));
        assert!(stored.finish_time.is_some() && stored.start_time.is_some());
        assert_eq!(messages(&mut executions, &agent.id, "s1").await.len(), 4);
        let counted = get_agent(&mut agents, &agent.id).await;
        assert_eq!((counted.total_executions, counted.successful_executions), (2, 2));
        workflow_counts_reach(&app, "tenant-a", &workflow.id, (2, 2)).await;
        // Each was inserted once, finished: no RUNNING row, no update of it.
        assert_eq!((inserted(&app.agent_db, "running").await, inserted(&app.agent_db, "succeeded").await), (0, 2));

        // A run longer than that is listed RUNNING while Langflow works.
        fake.set_delay(Duration::from_millis(1500));
        let mut caller = executions.clone();
        let slow = tokio::spawn(async move { run_agent(&mut caller, &agent.id, "autumn", "").await });
        let lister = executions.clone();
        eventually(Duration::from_secs(10), "the RUNNING row of the slow run", move || {
            let mut lister = lister.clone();
            async move {
                let listed = recorded_executions(&mut lister, pb::ListExecutionsRequest::default()).await;
                listed.first().is_some_and(|e| e.status == RUNNING && e.input == "autumn")
            }
        })
        .await;
        assert!(!slow.is_finished(), "the row was seen while the run went on");
        let slow = slow.await.unwrap();
        assert_eq!(slow.status, SUCCEEDED);
        let stored = executions.get_execution(pb::GetExecutionRequest { id: slow.id }).await.unwrap().into_inner();
        assert_eq!(stored.status, SUCCEEDED);
        assert_eq!((inserted(&app.agent_db, "running").await, inserted(&app.agent_db, "succeeded").await), (1, 2));
        workflow_counts_reach(&app, "tenant-a", &workflow.id, (3, 3)).await;
    }
);

both_backends!(
    async fn zero_writes_every_running_row_at_once(backend) {
        let fake = FakeLangflow::start().await;
        let app = spawn_with_langflow(backend, &fake.url(), &[("EXECUTION_RUNNING_ROW_AFTER_MS", "0".into())]).await;
        let (_, agent) = active_agent(&app, "tenant-a").await;
        note_inserted_statuses(&app.agent_db).await;
        let mut executions = app.executions("tenant-a").await;
        for input in ["one", "two"] {
            assert_eq!(run_agent(&mut executions, &agent.id, input, "").await.status, SUCCEEDED);
        }
        assert_eq!((inserted(&app.agent_db, "running").await, inserted(&app.agent_db, "succeeded").await), (2, 0));
    }
);

both_backends!(
    async fn an_agent_deleted_before_its_run_is_stored_is_not_found_and_nothing_is_stored(backend) {
        let fake = FakeLangflow::start().await;
        // The run ends long before its RUNNING row would be due: its finish stores it.
        let env = [("EXECUTION_RUNNING_ROW_AFTER_MS", "60000".to_string())];
        let app = spawn_with_langflow(backend, &fake.url(), &env).await;
        let (_, agent) = active_agent(&app, "tenant-a").await;
        let mut executions = app.executions("tenant-a").await;
        fake.set_delay(Duration::from_millis(1000));
        let mut caller = executions.clone();
        let agent_id = agent.id.clone();
        let pending = tokio::spawn(async move { caller.execute_agent(execute(&agent_id, "orphaned", "")).await });
        eventually(Duration::from_secs(10), "Langflow is asked", || async { fake.runs() == 1 }).await;
        // Deleted behind the service's back while its flow runs.
        app.agent_db.sql(&format!("DELETE FROM agents WHERE id = '{}'", agent.id)).await;
        let refused = expect_code(pending.await.unwrap(), Code::NotFound);
        assert!(refused.message().contains(&agent.id), "{refused:?}");
        let count = app.agent_db.sql("SELECT CAST(COUNT(*) AS TEXT) FROM executions").await;
        assert_eq!(count, "0");
        let listed = recorded_executions(&mut executions, pb::ListExecutionsRequest::default()).await;
        assert!(listed.is_empty(), "{listed:?}");
    }
);
