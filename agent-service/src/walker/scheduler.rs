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
//!
//! A pass reads only the agents due: once a pass has handled an agent's ticks up to now, it
//! writes when the agent's next tick comes (`next_tick_at`), and the agent is not read again
//! until then (or until it changes, which clears that time). The cost of a pass follows the
//! ticks due, not the agents scheduled.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use engarde::proto::workflow::v1 as workflow_pb;
use engarde::schedule::Schedule;
use uuid::Uuid;

use super::Walker;
use super::model::{NewRun, RunTrigger, TickOutcome};
use super::workflow_status::{PassMemo, Verdict};
use crate::domain::{AgentStatus, now};

/// Every how many passes the workflows' last known statuses are kept to those of the agents
/// still scheduled (a pass sees only the agents due, so it cannot tell which are gone).
const PRUNE_EVERY: u64 = 300;

pub fn spawn(walker: Walker, interval: Duration) {
    tokio::spawn(async move {
        // What this process already saw claimed, so that it does not ask the database again
        // every pass; the database alone decides who fires a tick.
        let mut seen: HashMap<Uuid, DateTime<Utc>> = HashMap::new();
        for pass in 1u64.. {
            let started = std::time::Instant::now();
            match walker.schedule_pass(now(), &mut seen).await {
                Ok(agents) => {
                    // A pass reads the agents due: its cost follows the ticks, and an operator
                    // sees here whether passes come near the interval.
                    metrics::histogram!("agent_scheduler_pass_seconds").record(started.elapsed().as_secs_f64());
                    metrics::gauge!("agent_scheduler_agents_read").set(agents as f64);
                }
                Err(e) => tracing::warn!(error = %e, "scheduler pass failed"),
            }
            if pass.is_multiple_of(PRUNE_EVERY) {
                walker.forget_unscheduled().await;
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

/// When an agent with `schedules` next has to be looked at after `at`: their earliest next
/// tick (a day on when none comes, to look again rather than never).
fn next_tick(schedules: &[(Schedule, &workflow_pb::Trigger)], at: DateTime<Utc>) -> DateTime<Utc> {
    schedules.iter().filter_map(|(schedule, _)| schedule.next_after(at)).min().unwrap_or(at + chrono::Duration::days(1))
}

/// The ticks of `schedules` due at `at`: each one's latest, if after the agent last changed
/// (`changed`).
fn due_ticks(
    schedules: &[(Schedule, &workflow_pb::Trigger)],
    changed: DateTime<Utc>,
    at: DateTime<Utc>,
) -> BTreeSet<DateTime<Utc>> {
    schedules
        .iter()
        .filter_map(|(schedule, _)| schedule.previous_at_or_before(at))
        .filter(|tick| *tick > changed)
        .collect()
}

impl Walker {
    /// One pass; answers how many scheduled agents it looked at (those due).
    async fn schedule_pass(
        &self,
        at: DateTime<Utc>,
        seen: &mut HashMap<Uuid, DateTime<Utc>>,
    ) -> engarde::kit::error::ServiceResult<usize> {
        let agents = self.runs.scheduled_agents(at).await?;
        let mut statuses = PassMemo::new();
        let mut next_ticks = Vec::with_capacity(agents.len());
        for agent in &agents {
            // A tick that waits keeps the agent due: the next pass reads it again.
            let mut waiting = false;
            // Parsed once for both: the ticks due now and the next one.
            let schedules = schedules(&agent.config);
            for tick in due_ticks(&schedules, agent.updated_at, at) {
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
                        waiting = true;
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
            if !waiting {
                next_ticks.push((agent.agent_id, agent.version, next_tick(&schedules, at)));
            }
        }
        self.runs.set_next_ticks(&next_ticks).await?;
        Ok(agents.len())
    }

    /// Forgets the last known statuses of workflows no scheduled agent uses any more.
    async fn forget_unscheduled(&self) {
        match self.runs.scheduled_workflows().await {
            Ok(in_use) => self.statuses.retain(&in_use.into_iter().collect::<HashSet<_>>()),
            Err(e) => tracing::debug!(error = %e, "could not read the scheduled agents' workflows; kept every status"),
        }
    }
}
