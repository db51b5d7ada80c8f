//! The scheduler: every process looks for due ticks of the active agents' scheduled triggers
//! and fires each exactly once across all processes, through a unique claim per (agent, tick)
//! in the database (not a lock held in memory).
//!
//! No catch-up storm: a pass only considers each trigger's latest tick at or before now, so
//! after downtime at most the most recent missed tick runs, never the whole backlog. A tick from
//! before the agent last changed (e.g. was activated) does not fire. Overlap policy: skip — a
//! tick that comes while a run of the agent has not ended is recorded and creates no run. Only
//! an ACTIVE workflow's triggers fire: a due tick first asks workflow-service for the status of
//! the agent's workflow (see `workflow_status`), so a tick after ArchiveWorkflow is skipped.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use engarde::proto::workflow::v1 as workflow_pb;
use engarde::schedule::Schedule;
use uuid::Uuid;

use super::Walker;
use super::model::{NewRun, RunTrigger, ScheduledAgent, TickOutcome};
use super::workflow_status::{PassMemo, Verdict};
use crate::domain::{AgentStatus, now};

pub fn spawn(walker: Walker, interval: Duration) {
    tokio::spawn(async move {
        // What this process already saw claimed, so that it does not ask the database again
        // every pass; the database alone decides who fires a tick.
        let mut seen: HashMap<Uuid, DateTime<Utc>> = HashMap::new();
        loop {
            let started = std::time::Instant::now();
            match walker.schedule_pass(now(), &mut seen).await {
                Ok(agents) => {
                    // A pass reads every scheduled agent: its cost grows with them, and an
                    // operator sees it here before the passes overlap the interval.
                    metrics::histogram!("agent_scheduler_pass_seconds").record(started.elapsed().as_secs_f64());
                    metrics::gauge!("agent_scheduled_agents").set(agents as f64);
                }
                Err(e) => tracing::warn!(error = %e, "scheduler pass failed"),
            }
            tokio::time::sleep(interval).await;
        }
    });
}

/// The schedules of an agent's scheduled triggers (a bad one is skipped: workflow-service
/// validates them, so it is not expected).
pub fn schedules(config: &workflow_pb::WorkflowConfig) -> Vec<(Schedule, &workflow_pb::Trigger)> {
    config
        .triggers
        .iter()
        .filter(|t| t.r#type == workflow_pb::TriggerType::Scheduled as i32)
        .filter_map(|t| match Schedule::parse(&t.cron, &t.timezone) {
            Ok(s) => Some((s, t)),
            Err(e) => {
                tracing::debug!(cron = t.cron, error = e, "unusable scheduled trigger skipped");
                None
            }
        })
        .collect()
}

/// The ticks due for `agent` at `at`: each trigger's latest, if after the agent last changed.
fn due_ticks(agent: &ScheduledAgent, at: DateTime<Utc>) -> BTreeSet<DateTime<Utc>> {
    schedules(&agent.config)
        .iter()
        .filter_map(|(schedule, _)| schedule.previous_at_or_before(at))
        .filter(|tick| *tick > agent.updated_at)
        .collect()
}

impl Walker {
    /// One pass; answers how many scheduled agents it looked at.
    async fn schedule_pass(
        &self,
        at: DateTime<Utc>,
        seen: &mut HashMap<Uuid, DateTime<Utc>>,
    ) -> engarde::kit::error::ServiceResult<usize> {
        let agents = self.runs.scheduled_agents().await?;
        let mut statuses = PassMemo::new();
        for agent in &agents {
            for tick in due_ticks(agent, at) {
                if seen.get(&agent.agent_id).is_some_and(|last| *last >= tick) {
                    continue;
                }
                match self.statuses.verdict(&mut statuses, &agent.tenant_id, agent.workflow_id).await {
                    Verdict::Fire => {}
                    Verdict::Skip(why) => {
                        tracing::info!(agent_id = %agent.agent_id, %tick, why, "scheduled tick skipped: only an active workflow's triggers fire");
                        seen.insert(agent.agent_id, tick);
                        continue;
                    }
                    // Not marked seen: the next pass asks again, and the tick fires late
                    // rather than never if workflow-service answers before the next one.
                    Verdict::Unknown(why) => {
                        tracing::warn!(agent_id = %agent.agent_id, %tick, why, "scheduled tick waits: its workflow's status is not known");
                        continue;
                    }
                }
                let plan = match super::plan_for(
                    AgentStatus::Active,
                    Some(&agent.config),
                    agent.has_flow,
                    self.langflow.is_some(),
                ) {
                    Ok(plan) => plan,
                    Err(why) => {
                        tracing::warn!(agent_id = %agent.agent_id, %tick, why, "scheduled tick cannot run");
                        seen.insert(agent.agent_id, tick);
                        continue;
                    }
                };
                let run = NewRun {
                    id: Uuid::now_v7(),
                    tenant_id: agent.tenant_id.clone(),
                    agent_id: agent.agent_id,
                    trigger: RunTrigger::Scheduled,
                    input: format!("Scheduled run for {}", tick.to_rfc3339()),
                    scheduled_for: Some(tick),
                    plan,
                };
                match self.runs.fire_tick(agent.agent_id, tick, run).await? {
                    TickOutcome::Started(run_id) => {
                        tracing::info!(agent_id = %agent.agent_id, %tick, run_id = %run_id, "scheduled run started");
                        self.wake();
                    }
                    TickOutcome::SkippedOverlap => tracing::info!(
                        agent_id = %agent.agent_id,
                        %tick,
                        "scheduled tick skipped: a run of the agent is still going"
                    ),
                    TickOutcome::AlreadyClaimed => {}
                }
                seen.insert(agent.agent_id, tick);
            }
        }
        let in_use: HashSet<(String, Uuid)> = agents.iter().map(|a| (a.tenant_id.clone(), a.workflow_id)).collect();
        self.statuses.retain(&in_use);
        Ok(agents.len())
    }
}
