//! Scheduled triggers: exactly one run per tick across two agent-service processes (PostgreSQL:
//! SQLite is one process's database by design), and PreviewSchedule's fire times.

use std::collections::BTreeSet;
use std::time::Duration;

use engarde::proto::agent::v1 as pb;
use engarde::proto::workflow::v1 as wpb;

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
    let mut agents = app.agents("tenant-cron").await;
    let steps = vec![llm("report", "Report for {input}"), output("done")];
    let agent = active_walker(&app, "tenant-cron", config(steps, 0, vec![every_two_seconds()])).await;

    let preview = agents
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
    let runs = agents
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
    let done = wait_run(&mut agents, &first.id, Duration::from_secs(20), status_is(pb::RunStatus::Succeeded)).await;
    assert!(done.output.contains("Report for"), "{}", done.output);
    drop(second);
}
