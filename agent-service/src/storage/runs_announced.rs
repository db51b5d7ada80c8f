//! On SQLite, the run repository announces its own committed events to the process's
//! [`RunAnnouncer`] (the walker's watch hub) (PostgreSQL's trigger does it there, for every process). SQLite is the
//! embedded mode of one process: processes sharing one file would not see each other's events
//! live (a watcher still reads them when woken for another reason, or when it starts).
//!
//! Each call that may append events announces its run after it returns, whatever it answers: a
//! needless announcement costs a watcher one read.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use engarde::kit::error::ServiceResult;
use engarde::kit::idempotency::IdempotencyKey;
use engarde::kit::pagination::PageRequest;
use uuid::Uuid;

use super::runs::{Lease, RunAnnouncer, RunRepository, StepOutcome, StepWork};
use crate::domain::run::{
    NewRun, Review, ReviewDecision, Run, RunEvent, RunFilter, RunRequestKey, RunStatus, ScheduledAgent, TickOutcome,
};

/// A run repository whose writes announce the runs they changed.
pub struct AnnouncedRunRepository {
    inner: Arc<dyn RunRepository>,
    events: Arc<dyn RunAnnouncer>,
}

impl AnnouncedRunRepository {
    pub fn new(inner: Arc<dyn RunRepository>, events: Arc<dyn RunAnnouncer>) -> Self {
        Self { inner, events }
    }
}

#[async_trait]
impl RunRepository for AnnouncedRunRepository {
    async fn counts(&self) -> ServiceResult<(Vec<(String, i64)>, i64)> {
        self.inner.counts().await
    }

    async fn create(&self, run: NewRun, key: Option<&RunRequestKey>) -> ServiceResult<Run> {
        let id = run.id;
        let result = self.inner.create(run, key).await;
        self.events.announce(id);
        result
    }

    async fn get(&self, tenant: &str, id: Uuid) -> ServiceResult<Run> {
        self.inner.get(tenant, id).await
    }

    async fn status(&self, tenant: &str, id: Uuid) -> ServiceResult<Option<RunStatus>> {
        self.inner.status(tenant, id).await
    }

    async fn list(&self, tenant: &str, filter: &RunFilter, page: &PageRequest) -> ServiceResult<Vec<Run>> {
        self.inner.list(tenant, filter, page).await
    }

    async fn cancel(&self, tenant: &str, id: Uuid, reason: &str, key: Option<&IdempotencyKey>) -> ServiceResult<Run> {
        let result = self.inner.cancel(tenant, id, reason, key).await;
        self.events.announce(id);
        result
    }

    async fn events(&self, run_id: Uuid, from: i64, limit: i64) -> ServiceResult<Vec<RunEvent>> {
        self.inner.events(run_id, from, limit).await
    }

    async fn pending_reviews(
        &self,
        tenant: &str,
        agent: Option<Uuid>,
        page: &PageRequest,
    ) -> ServiceResult<Vec<Review>> {
        self.inner.pending_reviews(tenant, agent, page).await
    }

    async fn decide(&self, tenant: &str, decision: ReviewDecision, key: Option<&IdempotencyKey>) -> ServiceResult<Run> {
        let run = decision.run_id;
        let result = self.inner.decide(tenant, decision, key).await;
        self.events.announce(run);
        result
    }

    async fn expire_reviews(&self, now: DateTime<Utc>, limit: i64) -> ServiceResult<usize> {
        let result = self.inner.expire_reviews(now, limit).await;
        // Which runs is not answered: rare enough to wake every watcher.
        if result.as_ref().is_ok_and(|expired| *expired > 0) {
            self.events.announce_all();
        }
        result
    }

    async fn claim(&self, lease: &Lease) -> ServiceResult<Option<Uuid>> {
        self.inner.claim(lease).await
    }

    async fn start_step(&self, run_id: Uuid, lease: &Lease) -> ServiceResult<StepWork> {
        let result = self.inner.start_step(run_id, lease).await;
        self.events.announce(run_id);
        result
    }

    async fn renew(&self, run_id: Uuid, lease: &Lease) -> ServiceResult<bool> {
        self.inner.renew(run_id, lease).await
    }

    async fn finish_step(
        &self,
        run_id: Uuid,
        lease: &Lease,
        step_index: i32,
        outcome: StepOutcome,
    ) -> ServiceResult<()> {
        let result = self.inner.finish_step(run_id, lease, step_index, outcome).await;
        self.events.announce(run_id);
        result
    }

    async fn scheduled_agents(&self) -> ServiceResult<Vec<ScheduledAgent>> {
        self.inner.scheduled_agents().await
    }

    async fn fire_tick(&self, agent_id: Uuid, tick: DateTime<Utc>, run: NewRun) -> ServiceResult<TickOutcome> {
        let id = run.id;
        let result = self.inner.fire_tick(agent_id, tick, run).await;
        self.events.announce(id);
        result
    }
}
