//! Walker agents: durable runs through a workflow snapshot's steps, human review, and cron
//! triggers. The state of every run lives in the database ([`crate::storage::runs`]); the
//! workers, the review janitor and the scheduler in each process only move it forward, so any
//! number of processes (or none, for a while) can share the work.

mod event_feed;
pub mod model;
mod review;
pub mod run_events;
mod scheduler;
pub mod watch;
mod worker;
mod workflow_status;

use std::sync::Arc;
use std::time::Duration;

use engarde::kit::db::DbPool;
use engarde::kit::error::{ServiceError, ServiceResult};
use futures::Stream;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::domain::{Agent, AgentStatus};
use crate::execution::Executor;
use crate::langflow::LangflowClient;
use crate::storage::runs::RunRepository;
use crate::storage::{self, AgentRepository};
use crate::workflows::WorkflowClient;
use model::{NewRun, RunEvent, RunPlan, RunRequestKey, RunTrigger};
use run_events::RunEvents;
use watch::{WatchEnd, WatchLimits, WatchRules};

pub use crate::domain::run::INTERRUPTION_RETRIES;

/// The walker's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct WalkerSettings {
    /// How many runs one process walks at once.
    #[arg(long, env = "WALKER_WORKERS", default_value_t = 2)]
    pub walker_workers: usize,
    /// How long a worker's hold on a run lasts without renewal, in seconds: a run whose worker
    /// died is picked up again after at most this long.
    #[arg(long, env = "WALKER_LEASE_SECS", default_value_t = 30)]
    pub walker_lease_secs: u64,
    /// How often the scheduler looks for due ticks, in milliseconds.
    #[arg(long, env = "SCHEDULER_INTERVAL_MS", default_value_t = 1000)]
    pub scheduler_interval_ms: u64,
    /// WatchRun streams one tenant may have open on one process; more answer RESOURCE_EXHAUSTED.
    #[arg(long, env = "WATCH_MAX_PER_TENANT", default_value_t = 100)]
    pub watch_max_per_tenant: usize,
    /// WatchRun streams one process serves at once, all tenants together; more answer
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "WATCH_MAX_PER_PROCESS", default_value_t = 5000)]
    pub watch_max_per_process: usize,
    /// How long one WatchRun stream stays open, in seconds: it then ends UNAVAILABLE, saying
    /// which `from_sequence` to resume with (so that no stream holds a server, or a slot of its
    /// limits, forever).
    #[arg(long, env = "WATCH_MAX_LIFETIME_SECS", default_value_t = 900)]
    pub watch_max_lifetime_secs: u64,
}

/// The walker of one process: starts runs and wakes its workers.
#[derive(Clone)]
pub struct Walker {
    pub(crate) runs: Arc<dyn RunRepository>,
    agents: Arc<dyn AgentRepository>,
    langflow: Option<Arc<LangflowClient>>,
    /// Runs the llm steps: each is an execution of the agent, recorded, counted and reported
    /// as ExecuteAgent's are.
    executor: Executor,
    /// Wakes idle workers at once when there is work (a new run, an approval).
    wake: Arc<Notify>,
    /// Wakes watchers when their run has new events.
    events: Arc<RunEvents>,
    watches: Arc<WatchLimits>,
    watch_rules: WatchRules,
    /// Whether a scheduled agent's workflow is ACTIVE (only then do its triggers fire).
    statuses: workflow_status::WorkflowStatuses,
}

/// Publishes `walker_runs{status}` and `walker_reviews_pending` every 15 s (counted in the
/// database, so every replica reports the same totals).
fn spawn_metrics(runs: Arc<dyn RunRepository>) {
    tokio::spawn(async move {
        loop {
            match runs.counts().await {
                Ok((by_status, pending)) => {
                    for status in
                        ["queued", "running", "waiting_review", "succeeded", "failed", "rejected", "cancelled"]
                    {
                        let n = by_status.iter().find(|(s, _)| s == status).map_or(0, |(_, n)| *n);
                        metrics::gauge!("walker_runs", "status" => status).set(n as f64);
                    }
                    metrics::gauge!("walker_reviews_pending").set(pending as f64);
                }
                Err(e) => tracing::debug!(error = %e, "could not count runs for metrics"),
            }
            tokio::time::sleep(Duration::from_secs(15)).await;
        }
    });
}

impl Walker {
    /// The walker over `db`, with its workers, review janitor and scheduler running.
    pub fn start(
        settings: &WalkerSettings,
        db: &DbPool,
        agents: Arc<dyn AgentRepository>,
        langflow: Option<Arc<LangflowClient>>,
        executor: Executor,
        workflows: WorkflowClient,
    ) -> Self {
        let events = RunEvents::new();
        if let DbPool::Postgres(pool) = db {
            event_feed::spawn(pool.sqlx().clone(), events.clone());
        }
        let walker = Self {
            runs: storage::run_repository(db, &events),
            agents,
            langflow,
            executor,
            wake: Arc::new(Notify::new()),
            events,
            watches: WatchLimits::new(settings.watch_max_per_tenant, settings.watch_max_per_process),
            watch_rules: WatchRules { lifetime: Duration::from_secs(settings.watch_max_lifetime_secs.max(1)) },
            statuses: workflow_status::WorkflowStatuses::new(workflows),
        };
        let lease = Duration::from_secs(settings.walker_lease_secs.max(1));
        for n in 0..settings.walker_workers.max(1) {
            worker::spawn(walker.clone(), n, lease);
        }
        review::spawn_janitor(walker.runs.clone());
        scheduler::spawn(walker.clone(), Duration::from_millis(settings.scheduler_interval_ms.max(10)));
        spawn_metrics(walker.runs.clone());
        tracing::info!(workers = settings.walker_workers.max(1), lease_secs = lease.as_secs(), "walker started");
        walker
    }

    pub fn runs(&self) -> &dyn RunRepository {
        self.runs.as_ref()
    }

    pub fn agents(&self) -> &dyn AgentRepository {
        self.agents.as_ref()
    }

    /// Counts a new watch of the tenant's, or RESOURCE_EXHAUSTED past a limit (see
    /// [`WatchLimits`]). Taken before any database work for the watch.
    pub fn admit_watch(&self, tenant: &str) -> ServiceResult<watch::WatchPermit> {
        self.watches.admit(tenant)
    }

    /// The events of the tenant's run from sequence `from` on, as they are written (WatchRun).
    pub fn watch(
        &self,
        permit: watch::WatchPermit,
        tenant: String,
        run_id: Uuid,
        from: i64,
    ) -> impl Stream<Item = Result<RunEvent, WatchEnd>> + Send + use<> {
        // Subscribed before the first read, so that nothing committed after it goes unheard.
        let announcements = self.events.subscribe(run_id);
        watch::events(self.runs.clone(), announcements, permit, self.watch_rules, tenant, run_id, from)
    }

    /// Tells idle workers there is work.
    pub fn wake(&self) {
        self.wake.notify_waiters();
    }

    /// What a run of `agent` would walk, or FAILED_PRECONDITION saying why it cannot run.
    pub fn plan_for(&self, agent: &Agent) -> ServiceResult<RunPlan> {
        plan_for(
            agent.status,
            agent.snapshot.as_ref().map(|s| &s.config),
            !agent.langflow_workflow_id.is_empty(),
            self.langflow.is_some(),
        )
        .map_err(|why| ServiceError::FailedPrecondition(format!("agent {} cannot run: {why}", agent.id)))
    }

    /// Starts a run (StartRun): stored QUEUED, then left to the workers. Its steps report to
    /// workflow-service as this service (see `execution::reporter`), not as the caller.
    pub async fn start_run(
        &self,
        tenant: &str,
        agent_id: Uuid,
        input: String,
        key: Option<RunRequestKey>,
    ) -> ServiceResult<model::Run> {
        let agent = self.agents.get(tenant, agent_id).await?;
        let plan = self.plan_for(&agent)?;
        let new = NewRun {
            id: Uuid::now_v7(),
            tenant_id: tenant.to_owned(),
            agent_id,
            trigger: RunTrigger::Manual,
            input,
            scheduled_for: None,
            plan,
        };
        let run = self.runs.create(new, key.as_ref()).await?;
        self.wake();
        Ok(run)
    }
}

/// Whether an agent in `status` with `config` can run, and its plan.
fn plan_for(
    status: AgentStatus,
    config: Option<&engarde::proto::workflow::v1::WorkflowConfig>,
    has_flow: bool,
    langflow_configured: bool,
) -> Result<RunPlan, String> {
    if !status.runs() {
        return Err(format!("it is {}; deploy or activate it first", status.as_str()));
    }
    let config = config.ok_or("it has no workflow to walk (it was not made from a workflow)")?;
    let plan = RunPlan::of(config)?;
    if plan.has_llm_steps() {
        if !langflow_configured {
            return Err("its llm steps need Langflow, and none is configured (set LANGFLOW_URL)".into());
        }
        if !has_flow {
            return Err("its llm steps need a flow, and it has none (link or regenerate one)".into());
        }
    }
    Ok(plan)
}

/// The next `count` fire times of a workflow's scheduled triggers after `after`, merged and
/// earliest first, each with its trigger's cron and time zone. Two triggers firing at the same
/// time are one tick (one run), so one fire.
pub fn scheduler_preview(
    config: &engarde::proto::workflow::v1::WorkflowConfig,
    after: chrono::DateTime<chrono::Utc>,
    count: usize,
) -> Vec<(chrono::DateTime<chrono::Utc>, String, String)> {
    let mut fires: Vec<_> = scheduler::schedules(config)
        .into_iter()
        .flat_map(|(schedule, trigger)| {
            schedule
                .upcoming(after, count)
                .into_iter()
                .map(move |t| (t, trigger.cron.clone(), trigger.timezone.clone()))
        })
        .collect();
    fires.sort_by_key(|fire| fire.0);
    fires.dedup_by_key(|fire| fire.0);
    fires.truncate(count);
    fires
}
