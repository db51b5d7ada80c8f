//! Scheduled triggers: exactly one run per tick across two agent-service processes (PostgreSQL:
//! SQLite is one process's database by design), PreviewSchedule's fire times, the column that
//! keeps the scheduler to the agents that have a schedule, and the one that keeps each pass to
//! the agents whose tick is due.

use std::collections::BTreeSet;
use std::time::Duration;

use engarde::proto::agent::v1 as pb;
use engarde::proto::workflow::v1 as wpb;

use crate::both_backends;
use crate::helpers::*;
use crate::langflow_support::FakeLangflow;
use crate::walker_support::*;

fn every_two_seconds() -> wpb::Trigger {
    wpb::Trigger {
        r#type: wpb::TriggerType::Scheduled as i32,
        cron: "*/2 * * * * *".into(),
        timezone: "Europe/Paris".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seconds_schedule_fires_once_per_tick_across_two_processes() {
    let fake = FakeLangflow::start().await;
    let app = spawn_walker_app(Backend::Postgres, &fake.url(), &[]).await;
    let second = spawn_agent_service(&app.agent_db, &app.workflow.url(), &walker_env(&fake.url(), &[])).await;
    let mut run_client = app.runs("tenant-cron").await;
    let steps = vec![llm("report", "Report for {input}"), output("done")];
    let agent = active_walker(&app, "tenant-cron", config(steps, 0, vec![every_two_seconds()])).await;

    let preview = run_client
        .preview_schedule(pb::PreviewScheduleRequest { agent_id: agent.id.clone(), count: 3 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(preview.fires.len(), 3);
    let times: Vec<i64> = preview.fires.iter().map(|f| f.time.as_ref().unwrap().seconds).collect();
    assert!(times.windows(2).all(|w| w[1] - w[0] == 2), "{times:?}");
    assert!(times.iter().all(|t| t % 2 == 0));
    assert_eq!((preview.fires[0].cron.as_str(), preview.fires[0].timezone.as_str()), ("*/2 * * * * *", "Europe/Paris"));

    tokio::time::sleep(Duration::from_secs(7)).await;
    let runs = run_client
        .list_runs(pb::ListRunsRequest { agent_id: agent.id.clone(), page_size: 200, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .runs;
    let ticks: Vec<i64> = runs.iter().map(|r| r.scheduled_time.as_ref().expect("a scheduled time").seconds).collect();
    let distinct: BTreeSet<i64> = ticks.iter().copied().collect();
    assert_eq!(distinct.len(), ticks.len(), "one run per tick, whichever process fired it: {ticks:?}");
    assert!((3..=4).contains(&ticks.len()), "about one run per 2 s over 7 s: {ticks:?}");
    assert!(distinct.iter().all(|t| t % 2 == 0));
    let ordered: Vec<i64> = distinct.into_iter().collect();
    assert!(ordered.windows(2).all(|w| w[1] - w[0] == 2), "no tick missed: {ordered:?}");
    for run in &runs {
        assert_eq!(run.trigger, pb::RunTrigger::Scheduled as i32);
        let step_ids: Vec<&str> = run.steps.iter().map(|s| s.step_id.as_str()).collect();
        assert_eq!(step_ids, ["report", "done"], "run {} listed with its own steps", run.id);
    }
    // They run like any other run.
    let first = runs.last().unwrap();
    let done = wait_run(&mut run_client, &first.id, Duration::from_secs(20), status_is(pb::RunStatus::Succeeded)).await;
    assert!(done.output.contains("Report for"), "{}", done.output);
    drop(second);
}

both_backends!(
    async fn only_agents_with_a_schedule_are_marked_for_the_scheduler(backend) {
        let fake = FakeLangflow::start().await;
        let app = spawn_walker_app(backend, &fake.url(), &[("SCHEDULER_INTERVAL_MS", "100".into())]).await;
        let steps = || vec![llm("report", "Report for {input}"), output("done")];
        let on_demand = active_walker(&app, "tenant-cron", config(steps(), 0, vec![])).await;
        let cron = "0 0 1 1 * *"; // a yearly tick: none comes during the test
        let trigger = wpb::Trigger { cron: cron.into(), ..every_two_seconds() };
        let scheduled = active_walker(&app, "tenant-cron", config(steps(), 0, vec![trigger])).await;
        let marked = |id: String| {
            let db = &app.agent_db;
            async move {
                db.sql(&format!("SELECT CASE WHEN scheduled THEN 'yes' ELSE 'no' END FROM agents WHERE id = '{id}'"))
                    .await
            }
        };
        assert_eq!(marked(on_demand.id.clone()).await, "no");
        assert_eq!(marked(scheduled.id.clone()).await, "yes");

        // A row as the migration leaves the agents it finds ("may have a schedule"): the
        // scheduler's next passes decode it and clear the mark.
        let set = format!("UPDATE agents SET scheduled = TRUE WHERE id = '{}' RETURNING 'set'", on_demand.id);
        assert_eq!(app.agent_db.sql(&set).await, "set");
        eventually(Duration::from_secs(10), "the scheduler to clear the mark", || async {
            marked(on_demand.id.clone()).await == "no"
        })
        .await;
        assert_eq!(marked(scheduled.id.clone()).await, "yes", "an agent with a schedule keeps its mark");
    }
);

fn every_second() -> wpb::Trigger {
    wpb::Trigger { r#type: wpb::TriggerType::Scheduled as i32, cron: "* * * * * *".into(), timezone: "UTC".into() }
}

both_backends!(
    async fn only_an_active_workflows_triggers_fire_and_only_for_its_tenant(backend) {
        let fake = FakeLangflow::start().await;
        let app = spawn_walker_app(backend, &fake.url(), &[("SCHEDULER_INTERVAL_MS", "100".into())]).await;
        let tenant = "tenant-cron-status";
        let runs = app.runs(tenant).await;
        let mut workflows = app.workflows(tenant).await;
        let count = |runs: &RunClient, agent_id: &str| {
            let (mut runs, agent_id) = (runs.clone(), agent_id.to_owned());
            async move {
                let listed = runs
                    .list_runs(pb::ListRunsRequest { agent_id, page_size: 200, ..Default::default() })
                    .await
                    .expect("list runs")
                    .into_inner();
                assert!(listed.next_page_token.is_empty(), "fewer than a page of runs");
                listed.runs.len()
            }
        };
        let steps = vec![llm("report", "Report for {input}"), output("done")];

        // The agent is active, its workflow a DRAFT: no tick fires.
        let agent = walker_of_draft(&app, tenant, config(steps, 0, vec![every_second()])).await;
        let workflow_id = agent.workflow_snapshot.as_ref().unwrap().workflow_id.clone();
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(count(&runs, &agent.id).await, 0, "a draft workflow's triggers do not fire");

        // Activated: its ticks fire.
        workflows
            .activate_workflow(wpb::ActivateWorkflowRequest { id: workflow_id.clone(), ..Default::default() })
            .await
            .expect("activate the workflow");
        eventually(Duration::from_secs(15), "ticks fire once the workflow is active", || {
            let count = count(&runs, &agent.id);
            async move { count.await >= 2 }
        })
        .await;

        // Another tenant sees neither the agent's schedule nor its runs.
        let mut other = app.runs("tenant-other").await;
        expect_code(
            other.preview_schedule(pb::PreviewScheduleRequest { agent_id: agent.id.clone(), count: 1 }).await,
            tonic::Code::NotFound,
        );
        let listed = other
            .list_runs(pb::ListRunsRequest { agent_id: agent.id.clone(), ..Default::default() })
            .await
            .map(|r| r.into_inner().runs.len());
        assert!(matches!(listed, Ok(0)) || listed.as_ref().is_err_and(|s| s.code() == tonic::Code::NotFound), "{listed:?}");

        // Archived: at most the tick already under way fires, then none.
        workflows
            .archive_workflow(wpb::ArchiveWorkflowRequest { id: workflow_id.clone(), ..Default::default() })
            .await
            .expect("archive the workflow");
        let at_archive = count(&runs, &agent.id).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let settled = count(&runs, &agent.id).await;
        assert!(settled <= at_archive + 1, "no tick after the next one: {at_archive} then {settled}");
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(count(&runs, &agent.id).await, settled, "an archived workflow's triggers no longer fire");
        let logs = app.agent.logs();
        assert!(logs.contains("is archived"), "the skipped ticks say why");
    }
);

/// An agent's next tick as stored, in epoch seconds; "none" while not worked out.
fn next_tick_sql(backend: Backend, agent_id: &str) -> String {
    let epoch = match backend {
        Backend::Postgres => "CAST(EXTRACT(EPOCH FROM next_tick_at) AS BIGINT)::text",
        Backend::Sqlite => "CAST(strftime('%s', next_tick_at) AS TEXT)",
    };
    format!("SELECT COALESCE({epoch}, 'none') FROM agents WHERE id = '{agent_id}'")
}

both_backends!(
    async fn a_pass_writes_when_an_agents_next_tick_comes_and_a_change_has_it_worked_out_again(backend) {
        let fake = FakeLangflow::start().await;
        let app = spawn_walker_app(backend, &fake.url(), &[("SCHEDULER_INTERVAL_MS", "100".into())]).await;
        let steps = vec![llm("report", "Report for {input}"), output("done")];
        let cron = "0 0 1 1 * *"; // a yearly tick: none comes during the test
        let trigger = wpb::Trigger { cron: cron.into(), ..every_two_seconds() };
        let agent = active_walker(&app, "tenant-cron-next", config(steps, 0, vec![trigger])).await;
        let next = || async { app.agent_db.sql(&next_tick_sql(backend, &agent.id)).await };
        let yearly = engarde::schedule::Schedule::parse(cron, "Europe/Paris").expect("a valid schedule");
        let expected = || yearly.next_after(chrono::Utc::now()).expect("a next tick").timestamp().to_string();

        eventually(Duration::from_secs(10), "a pass to work out the agent's next tick", || async {
            next().await != "none"
        })
        .await;
        assert_eq!(next().await, expected(), "the next New Year's midnight in Paris");

        // A change to the agent (here: paused) clears it; activated again, a pass works it out anew.
        let mut agents = app.agents("tenant-cron-next").await;
        agents.pause_agent(pb::PauseAgentRequest { id: agent.id.clone(), ..Default::default() }).await.expect("pause");
        assert_eq!(next().await, "none", "a paused agent has no next tick");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(next().await, "none", "no pass reads a paused agent");
        agents
            .activate_agent(pb::ActivateAgentRequest { id: agent.id.clone(), ..Default::default() })
            .await
            .expect("activate");
        eventually(Duration::from_secs(10), "a pass to work out the reactivated agent's next tick", || async {
            next().await == expected()
        })
        .await;

        // An agent not due is not read: one marked "may have a schedule" (as the migration of
        // the scheduled column leaves rows) keeps its mark while its next tick is far off, and
        // is read (and the mark cleared) once that time is cleared.
        let on_demand = active_walker(&app, "tenant-cron-next", config(vec![output("done")], 0, vec![])).await;
        let marked = || async {
            let sql = format!("SELECT CASE WHEN scheduled THEN 'yes' ELSE 'no' END FROM agents WHERE id = '{}'", on_demand.id);
            app.agent_db.sql(&sql).await
        };
        let far_off = format!(
            "UPDATE agents SET scheduled = TRUE, next_tick_at = '2999-01-01T00:00:00+00:00' WHERE id = '{}' RETURNING 'set'",
            on_demand.id
        );
        assert_eq!(app.agent_db.sql(&far_off).await, "set");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(marked().await, "yes", "passes read no agent whose tick is not due");
        let cleared = format!("UPDATE agents SET next_tick_at = NULL WHERE id = '{}' RETURNING 'cleared'", on_demand.id);
        assert_eq!(app.agent_db.sql(&cleared).await, "cleared");
        eventually(Duration::from_secs(10), "a pass to read the agent and clear its mark", || async {
            marked().await == "no"
        })
        .await;
    }
);
