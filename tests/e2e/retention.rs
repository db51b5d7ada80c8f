//! Retention: with EXECUTION_RETENTION, SESSION_MESSAGE_RETENTION and RUN_EVENT_RETENTION set,
//! the janitor deletes what is older, batch by batch, while the counters it already counted
//! stay; what is newer, and what still runs, stays.

use std::time::Duration;

use engarde::proto::agent::v1 as pb;

use crate::agents_execution::{
    active_agent, get_agent, recorded_executions, run_agent, spawn_with_langflow, workflow_counts_reach,
};
use crate::both_backends;
use crate::helpers::*;
use crate::langflow_support::FakeLangflow;
use crate::walker_support::{active_walker, config, llm, output, start_run, status_is, wait_run, watch_all};

both_backends!(
    async fn expired_executions_messages_and_run_events_are_purged_and_stay_counted(backend) {
        let fake = FakeLangflow::start().await;
        let retention = [
            ("EXECUTION_RETENTION", "3s".to_owned()),
            ("SESSION_MESSAGE_RETENTION", "3s".to_owned()),
            ("RUN_EVENT_RETENTION", "3s".to_owned()),
            ("RETENTION_INTERVAL_SECS", "1".to_owned()),
            // Small batches: the purge takes several transactions.
            ("RETENTION_BATCH_ROWS", "2".to_owned()),
        ];
        let app = spawn_with_langflow(backend, &fake.url(), &retention).await;
        let (workflow, agent) = active_agent(&app, "tenant-a").await;
        let mut agents = app.agents("tenant-a").await;
        let mut executions = app.executions("tenant-a").await;
        let mut ids = Vec::new();
        for n in 0..5 {
            ids.push(run_agent(&mut executions, &agent.id, &format!("post {n}"), "s1").await.id);
        }
        executions
            .submit_feedback(pb::SubmitFeedbackRequest { execution_id: ids[0].clone(), score: 4, ..Default::default() })
            .await
            .unwrap();
        let walker = active_walker(&app, "tenant-a", config(vec![llm("draft", "Draft: {input}"), output("done")], 0, vec![])).await;
        let mut runs = app.runs("tenant-a").await;
        let run = start_run(&mut runs, &walker.id, "spring").await;
        wait_run(&mut runs, &run.id, Duration::from_secs(30), status_is(pb::RunStatus::Succeeded)).await;
        assert!(!watch_all(&mut runs, &run.id, 1).await.is_empty());

        // Past the retention, everything above goes; the counters keep it.
        let executions_of = |agent_id: &str| pb::ListExecutionsRequest { agent_id: agent_id.into(), ..Default::default() };
        eventually(Duration::from_secs(30), "the expired executions purged", || {
            let mut executions = executions.clone();
            let filter = executions_of(&agent.id);
            async move { recorded_executions(&mut executions, filter).await.is_empty() }
        })
        .await;
        let counted = get_agent(&mut agents, &agent.id).await;
        assert_eq!((counted.total_executions, counted.successful_executions, counted.feedback_count), (5, 5, 1));
        workflow_counts_reach(&app, "tenant-a", &workflow.id, (5, 5)).await;
        eventually(Duration::from_secs(30), "the expired session purged", || {
            let mut executions = executions.clone();
            let request = pb::ListSessionsRequest { agent_id: agent.id.clone(), ..Default::default() };
            async move { executions.list_sessions(request).await.unwrap().into_inner().sessions.is_empty() }
        })
        .await;
        eventually(Duration::from_secs(30), "the ended run's events purged", || {
            let mut runs = runs.clone();
            let id = run.id.clone();
            async move { watch_all(&mut runs, &id, 1).await.is_empty() }
        })
        .await;
        assert_eq!(
            wait_run(&mut runs, &run.id, Duration::from_secs(1), status_is(pb::RunStatus::Succeeded)).await.id,
            run.id,
            "the run itself stays"
        );

        // A new execution is kept until it expires in turn, and counts on.
        let fresh = run_agent(&mut executions, &agent.id, "post 6", "s1").await;
        let listed = recorded_executions(&mut executions, executions_of(&agent.id)).await;
        assert_eq!(listed.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), [fresh.id.as_str()]);
        assert_eq!(get_agent(&mut agents, &agent.id).await.total_executions, 6);
        let log = app.agent.logs();
        assert!(log.contains("retention: deleted expired rows"), "{log}");
    }
);
