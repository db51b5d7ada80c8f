//! A cache of the agents executions run ([`AgentRepository::get_for_run`]), so that an execution
//! does not read its agent from the database each time: one round trip and one decode of the
//! agent's snapshot less on every run.
//!
//! Correctness rests on generations ([`Generations`]), as in workflow-service's read cache. Every
//! agent (hashed into one of [`BUCKETS`]) has a generation that moves on each change; a cached
//! agent carries the generations read *before* its query ran, and is served only while they are
//! unchanged. A change is counted twice: here, right after this process's own write returns (so
//! that a PauseAgent is seen by the next ExecuteAgent on the same replica), and when PostgreSQL
//! announces the commit of any process's write (migration 0018's trigger; see `agent_change_feed`). An agent cached
//! from a read that raced a write therefore never outlives the write's announcement.
//!
//! Only what moves an agent's `version` is announced: its statistics (counted by every finish)
//! are not, so a cached agent's are stale, which is why nothing that shows an agent reads it.
//!
//! Without announcements (the feed's connection is down, or the database is SQLite, whose file
//! other processes may share) the cache is off and every run reads its agent.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use engarde::kit::error::ServiceResult;
use engarde::kit::generations::{Generations, Stamp};
use engarde::kit::idempotency::IdempotencyKey;
use engarde::kit::pagination::PageRequest;
use quick_cache::sync::Cache;
use uuid::Uuid;

use super::{AgentRepository, Answer, DeleteCheck, ImportApplied, Mutated, Mutation};
use crate::domain::provisioning::{Candidate, ProvisionOutcome, ProvisionTarget, Skipped};
use crate::domain::{Agent, AgentFilter, NewAgent};

/// Agents share this many generation counters: two agents in one bucket only drop each other
/// from the cache more often than needed.
const BUCKETS: usize = 1024;

/// The payload that announces a change to every agent (a TRUNCATE).
pub const EVERYTHING: &str = "*";

/// How many bytes of an agent count as one agent of the capacity: most agents are a few KiB, and
/// one of the largest (a workflow's MBs of prompts in its snapshot) counts as one per started
/// slot, so `capacity` agents bound memory at about `capacity` × this.
pub const SLOT_BYTES: usize = 16 * 1024;

#[derive(Clone)]
struct Entry {
    stamp: Stamp,
    agent: Arc<Agent>,
    slots: u64,
}

#[derive(Clone)]
struct BySlots;

impl quick_cache::Weighter<(String, Uuid), Entry> for BySlots {
    fn weight(&self, _: &(String, Uuid), entry: &Entry) -> u64 {
        entry.slots
    }
}

/// An agent's weight in capacity slots (only weighed when it is cached, on a miss).
fn slots(agent: &Agent) -> u64 {
    let bytes = serde_json::to_vec(agent).map_or(SLOT_BYTES, |json| json.len());
    bytes.div_ceil(SLOT_BYTES).max(1) as u64
}

/// The cached agents and the generations that say whether they are still current.
pub struct AgentCache {
    /// Keyed by agent id.
    generations: Generations,
    agents: Cache<(String, Uuid), Entry, BySlots>,
}

impl AgentCache {
    /// A cache holding at most about `capacity` agents, one larger than [`SLOT_BYTES`] counting
    /// as one per started slot. It starts off: [`AgentCache::enable`] turns it on once changes
    /// are announced.
    pub fn new(capacity: u64) -> Self {
        let capacity = capacity.max(1);
        let estimated = usize::try_from(capacity).unwrap_or(usize::MAX).min(65_536);
        Self { generations: Generations::new(BUCKETS), agents: Cache::with_weighter(estimated, capacity, BySlots) }
    }

    /// Starts serving cached agents, none from before this call.
    pub fn enable(&self) {
        self.generations.enable();
    }

    /// Stops serving cached agents (changes may go unannounced from now on).
    pub fn disable(&self) {
        self.generations.disable();
        self.agents.clear();
    }

    pub fn is_enabled(&self) -> bool {
        self.generations.is_enabled()
    }

    /// Records an announced change: `payload` names the agent, or is [`EVERYTHING`]; anything
    /// else (an operator's NOTIFY) counts as everything.
    pub fn announced(&self, payload: &str) {
        match Uuid::parse_str(payload) {
            Ok(id) => self.changed(id),
            Err(_) => self.generations.changed_everything(),
        }
    }

    /// Records a change to agent `id`.
    pub fn changed(&self, id: Uuid) {
        self.generations.changed(id);
    }
}

fn record_lookup(result: &'static str) {
    metrics::counter!("agent_cache_lookups_total", "result" => result).increment(1);
}

/// The repository with an [`AgentCache`] in front of [`AgentRepository::get_for_run`]; every
/// other read goes to the database, and writes go through and count as changes.
pub struct CachedAgentRepository {
    inner: Arc<dyn AgentRepository>,
    cache: Arc<AgentCache>,
}

impl CachedAgentRepository {
    pub fn new(inner: Arc<dyn AgentRepository>, cache: Arc<AgentCache>) -> Self {
        Self { inner, cache }
    }
}

#[async_trait]
impl AgentRepository for CachedAgentRepository {
    async fn replay(&self, tenant: &str, key: Option<&IdempotencyKey>) -> ServiceResult<Option<String>> {
        self.inner.replay(tenant, key).await
    }

    async fn create(&self, tenant: &str, new: NewAgent, key: Option<&IdempotencyKey>) -> ServiceResult<Agent> {
        // A new agent replaces nothing cached.
        self.inner.create(tenant, new, key).await
    }

    async fn get(&self, tenant: &str, id: Uuid) -> ServiceResult<Agent> {
        self.inner.get(tenant, id).await
    }

    async fn get_for_run(&self, tenant: &str, id: Uuid) -> ServiceResult<Arc<Agent>> {
        if !self.cache.is_enabled() {
            record_lookup("bypass");
            return self.inner.get_for_run(tenant, id).await;
        }
        let stamp = self.cache.generations.stamp(id);
        let key = (tenant.to_owned(), id);
        if let Some(entry) = self.cache.agents.get(&key)
            && entry.stamp == stamp
        {
            record_lookup("hit");
            return Ok(entry.agent);
        }
        record_lookup("miss");
        // Not found is not cached: the agent may be created (imported) under this id later.
        let agent = self.inner.get_for_run(tenant, id).await?;
        let slots = slots(&agent);
        self.cache.agents.insert(key, Entry { stamp, agent: agent.clone(), slots });
        Ok(agent)
    }

    fn changed_elsewhere(&self, id: Uuid) {
        self.cache.changed(id);
    }

    async fn agent_exists(&self, id: Uuid) -> ServiceResult<bool> {
        self.inner.agent_exists(id).await
    }

    async fn list(&self, tenant: &str, filter: &AgentFilter, page: &PageRequest) -> ServiceResult<Vec<Agent>> {
        self.inner.list(tenant, filter, page).await
    }

    async fn mutate(
        &self,
        tenant: &str,
        id: Uuid,
        key: Option<&IdempotencyKey>,
        mutation: Mutation,
        answer: Answer,
    ) -> ServiceResult<Mutated> {
        let result = self.inner.mutate(tenant, id, key, mutation, answer).await;
        // Whatever the answer (an error may come after the commit), counted as a change.
        self.cache.changed(id);
        result
    }

    async fn delete(
        &self,
        tenant: &str,
        id: Uuid,
        key: Option<&IdempotencyKey>,
        check: DeleteCheck,
    ) -> ServiceResult<Uuid> {
        let result = self.inner.delete(tenant, id, key, check).await;
        self.cache.changed(id);
        result
    }

    async fn provision(
        &self,
        tenant: &str,
        candidates: Vec<Candidate>,
        skipped: Vec<Skipped>,
        pending: Option<ProvisionTarget>,
        key: Option<&IdempotencyKey>,
    ) -> ServiceResult<ProvisionOutcome> {
        // It stores new agents only.
        self.inner.provision(tenant, candidates, skipped, pending, key).await
    }

    async fn restate(&self, tenant: &str, key: &IdempotencyKey, answer: serde_json::Value) -> ServiceResult<()> {
        self.inner.restate(tenant, key, answer).await
    }

    async fn remember(
        &self,
        tenant: &str,
        key: &IdempotencyKey,
        answer: serde_json::Value,
    ) -> ServiceResult<Option<String>> {
        self.inner.remember(tenant, key, answer).await
    }

    async fn provisioned(&self, tenant: &str, workflow_ids: &[Uuid]) -> ServiceResult<HashSet<Uuid>> {
        self.inner.provisioned(tenant, workflow_ids).await
    }

    async fn import(&self, agent: &Agent, dry_run: bool) -> ServiceResult<ImportApplied> {
        let result = self.inner.import(agent, dry_run).await;
        if !dry_run {
            self.cache.changed(agent.id);
        }
        result
    }

    async fn expire_idempotency_keys(&self, before: chrono::DateTime<chrono::Utc>, limit: i64) -> ServiceResult<u64> {
        self.inner.expire_idempotency_keys(before, limit).await
    }
}

#[cfg(test)]
mod tests {
    use engarde::kit::db::{DbPool, DbSettings};
    use engarde::kit::error::ServiceError;

    use super::*;
    use crate::domain::AgentStatus;
    use crate::storage::{POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS, repository};

    /// agent-service's schema on `url` (in `schema` on PostgreSQL).
    async fn migrated(url: &str, schema: Option<&str>) -> DbPool {
        let settings = DbSettings { url: url.to_owned(), schema: schema.map(str::to_owned), max_connections: 4 };
        let pool = DbPool::connect(&settings).await.unwrap();
        pool.migrate(schema, &POSTGRES_MIGRATIONS, &SQLITE_MIGRATIONS, std::time::Duration::from_secs(10))
            .await
            .unwrap();
        pool
    }

    /// A SQLite file of its own, removed when dropped.
    struct TempFile(std::path::PathBuf);

    impl Drop for TempFile {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm", ".migrate-lock"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
            }
        }
    }

    /// A cache (on) over a real repository on SQLite, and that repository for writing behind
    /// the cache's back, as another replica would; with one agent of "t1".
    async fn cached() -> (CachedAgentRepository, Arc<AgentCache>, Arc<dyn AgentRepository>, Uuid, TempFile) {
        let file = TempFile(std::env::temp_dir().join(format!("engarde-agent-cache-{}.db", Uuid::new_v4().simple())));
        let inner = repository(&migrated(&format!("sqlite://{}", file.0.display()), None).await);
        let new = NewAgent {
            id: Uuid::now_v7(),
            name: "Original".into(),
            description: String::new(),
            agent_type: crate::domain::AgentType::ContentGeneration,
            snapshot: None,
            configuration: Default::default(),
            capabilities: Vec::new(),
            flow: None,
        };
        let id = inner.create("t1", new, None).await.unwrap().id;
        let cache = Arc::new(AgentCache::new(100));
        cache.enable();
        (CachedAgentRepository::new(inner.clone(), cache.clone()), cache, inner, id, file)
    }

    fn rename(name: &'static str) -> Mutation {
        Box::new(move |agent: &mut Agent| {
            agent.name = name.into();
            Ok(())
        })
    }

    fn no_answer() -> Answer {
        Box::new(|_| Ok(serde_json::Value::Null))
    }

    async fn name(repo: &CachedAgentRepository, id: Uuid) -> String {
        repo.get_for_run("t1", id).await.unwrap().name.clone()
    }

    #[tokio::test]
    async fn a_run_reads_its_agent_once_until_a_change_to_it_is_announced() {
        let (repo, cache, behind, id, _file) = cached().await;
        assert_eq!(name(&repo, id).await, "Original");
        behind.mutate("t1", id, None, rename("Behind"), no_answer()).await.unwrap();
        assert_eq!(name(&repo, id).await, "Original", "served from memory until announced");
        cache.announced(&id.to_string());
        assert_eq!(name(&repo, id).await, "Behind");
        // What shows an agent is never served from memory.
        behind.mutate("t1", id, None, rename("Again"), no_answer()).await.unwrap();
        assert_eq!(repo.get("t1", id).await.unwrap().name, "Again");
        // Everything, or a payload that names no agent, drops every agent.
        cache.announced(EVERYTHING);
        assert_eq!(name(&repo, id).await, "Again");
        behind.mutate("t1", id, None, rename("Operator"), no_answer()).await.unwrap();
        cache.announced("not an id");
        assert_eq!(name(&repo, id).await, "Operator");
    }

    #[tokio::test]
    async fn this_replicas_own_writes_are_seen_by_the_next_run_at_once() {
        let (repo, _, _, id, _file) = cached().await;
        assert_eq!(name(&repo, id).await, "Original");
        let pause = Box::new(|agent: &mut Agent| {
            agent.status = AgentStatus::Paused;
            Ok(())
        });
        repo.mutate("t1", id, None, pause, no_answer()).await.unwrap();
        assert_eq!(repo.get_for_run("t1", id).await.unwrap().status, AgentStatus::Paused);
        // A write elsewhere in this process that it is told of (a finish that failed the agent).
        repo.inner.mutate("t1", id, None, rename("Failed"), no_answer()).await.unwrap();
        repo.changed_elsewhere(id);
        assert_eq!(name(&repo, id).await, "Failed");
        // A deletion: NOT_FOUND at once, and not found is never cached.
        repo.delete("t1", id, None, Box::new(|_| Ok(()))).await.unwrap();
        assert!(matches!(repo.get_for_run("t1", id).await, Err(ServiceError::NotFound(_))));
    }

    #[tokio::test]
    async fn another_tenant_never_gets_a_cached_agent() {
        let (repo, _, _, id, _file) = cached().await;
        assert_eq!(name(&repo, id).await, "Original");
        assert!(matches!(repo.get_for_run("t2", id).await, Err(ServiceError::NotFound(_))));
    }

    #[tokio::test]
    async fn off_every_run_reads_its_agent_and_on_again_nothing_older_is_served() {
        let (repo, cache, behind, id, _file) = cached().await;
        assert_eq!(name(&repo, id).await, "Original");
        cache.disable();
        behind.mutate("t1", id, None, rename("While off"), no_answer()).await.unwrap();
        assert_eq!(name(&repo, id).await, "While off");
        cache.enable();
        behind.mutate("t1", id, None, rename("Missed"), no_answer()).await.unwrap();
        assert_eq!(name(&repo, id).await, "Missed", "nothing from before the feed listened again");
    }

    /// Migration 0018's trigger: a write that moves an agent's version, and its deletion,
    /// announce the agent; the statistics' updates of every finish announce nothing.
    #[tokio::test]
    async fn postgres_announces_what_moves_a_version_and_never_the_statistics() {
        let url = std::env::var("TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let schema = format!("agent_cache_test_{}", Uuid::new_v4().simple());
        let pool = migrated(&url, Some(&schema)).await;
        let DbPool::Postgres(pg) = &pool else { unreachable!("a PostgreSQL URL") };
        let mut listener = sqlx::postgres::PgListener::connect(&url).await.unwrap();
        listener.listen(super::super::agent_change_feed::CHANNEL).await.unwrap();
        let id = Uuid::now_v7();
        let sql = |s: &str| sqlx::AssertSqlSafe(format!("SET search_path TO {schema}; {s}"));
        let insert = format!(
            "INSERT INTO agents (id, tenant_id, name, agent_type, status, configuration, capabilities, \
             created_at, updated_at) VALUES ('{id}', 't1', 'A', 'content_generation', 'active', '{{}}', '[]', now(), now())"
        );
        sqlx::raw_sql(sql(&insert)).execute(pg.sqlx()).await.unwrap();
        let counted = format!("UPDATE agents SET total_executions = total_executions + 1 WHERE id = '{id}'");
        sqlx::raw_sql(sql(&counted)).execute(pg.sqlx()).await.unwrap();
        let paused = format!("UPDATE agents SET status = 'paused', version = version + 1 WHERE id = '{id}'");
        sqlx::raw_sql(sql(&paused)).execute(pg.sqlx()).await.unwrap();
        // The first announcement is the pause's: neither the insert nor the count announced.
        let first = listener.recv().await.unwrap();
        assert_eq!(first.payload(), id.to_string());
        sqlx::raw_sql(sql(&counted)).execute(pg.sqlx()).await.unwrap();
        sqlx::raw_sql(sql(&format!("DELETE FROM agents WHERE id = '{id}'"))).execute(pg.sqlx()).await.unwrap();
        assert_eq!(listener.recv().await.unwrap().payload(), id.to_string(), "the deletion's");
        sqlx::raw_sql(sql("TRUNCATE agents CASCADE")).execute(pg.sqlx()).await.unwrap();
        assert_eq!(listener.recv().await.unwrap().payload(), EVERYTHING);
        let nothing_more = tokio::time::timeout(std::time::Duration::from_millis(300), listener.recv()).await;
        assert!(nothing_more.is_err(), "one announcement each: {nothing_more:?}");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE"))).execute(pg.sqlx()).await.unwrap();
    }
}
