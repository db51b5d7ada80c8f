//! A read-through cache of workflows in front of the repository, for the reads that dominate
//! this service's traffic (GetWorkflow, ListWorkflows, agent-service's lookups).
//!
//! Correctness rests on generations ([`Generations`]), not on expiry. Every tenant (hashed into one of
//! [`BUCKETS`]) and the template library have a generation that moves on each change; a cached
//! answer carries the generations read *before* its query ran and is served only while they are
//! unchanged. A change is counted twice: here, right after this replica's own write commits (so
//! a caller reads its own writes), and when PostgreSQL announces the commit of any replica's
//! write (see `change_feed`). An answer filled from a query that raced a write therefore never
//! outlives the write's announcement. Statistics are the reading tenant's own, templates'
//! included: a tenant's counted execution moves that tenant's generation only.
//!
//! Without announcements (the feed's connection is down, or the database is SQLite, whose file
//! other processes may share) the cache is off and every read goes to the database.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use engarde::kit::error::ServiceResult;
use engarde::kit::generations::{self, Generations};
use engarde::kit::idempotency::IdempotencyKey;
use engarde::kit::pagination::PageRequest;
use quick_cache::sync::Cache;
use uuid::Uuid;

use super::{DeleteCheck, ImportApplied, Mutation, SeedOutcome, WorkflowRepository};
use crate::domain::templates::Template;
use crate::domain::{ExecutionReport, NewWorkflow, RecordedExecution, Workflow, WorkflowFilter};

/// Tenants share this many generation counters: two tenants in one bucket only invalidate each
/// other's entries more often than needed.
const BUCKETS: usize = 1024;

/// The payload that announces a change to every tenant (a TRUNCATE).
pub const EVERYTHING: &str = "*";

/// The generations an answer depends on: the cache's epoch and the tenant's bucket, and the
/// template library's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    tenant: generations::Stamp,
    templates: u64,
}

#[derive(Clone)]
struct Entry<T> {
    stamp: Stamp,
    value: T,
}

/// How many bytes of a workflow count as one workflow of the capacity: most workflows are a few
/// KiB, and one of the largest allowed (MBs of prompts and flow export) counts as one per
/// started slot, so `capacity` workflows bound memory at about `capacity` × this.
pub const SLOT_BYTES: usize = 16 * 1024;

/// A workflow's weight in capacity slots: 1 for all but the large.
fn slots(workflow: &Workflow) -> u64 {
    workflow.approx_bytes().div_ceil(SLOT_BYTES).max(1) as u64
}

/// Weighs cached answers by slots, so the capacity bounds memory whatever the page and
/// workflow sizes.
#[derive(Clone)]
struct BySlots;

impl quick_cache::Weighter<String, Entry<Arc<[Workflow]>>> for BySlots {
    fn weight(&self, _: &String, entry: &Entry<Arc<[Workflow]>>) -> u64 {
        entry.value.iter().map(slots).sum::<u64>().max(1)
    }
}

impl quick_cache::Weighter<(String, Uuid), Entry<Arc<Workflow>>> for BySlots {
    fn weight(&self, _: &(String, Uuid), entry: &Entry<Arc<Workflow>>) -> u64 {
        slots(&entry.value)
    }
}

/// The cached answers and the generations that say whether they are still true.
pub struct WorkflowCache {
    /// Keyed by tenant.
    generations: Generations,
    templates: AtomicU64,
    workflows: Cache<(String, Uuid), Entry<Arc<Workflow>>, BySlots>,
    pages: Cache<String, Entry<Arc<[Workflow]>>, BySlots>,
}

impl WorkflowCache {
    /// A cache holding at most about `capacity` workflows (half for single reads, half in pages),
    /// a workflow larger than [`SLOT_BYTES`] counting as one per started slot.
    /// It starts off: [`WorkflowCache::enable`] turns it on once changes are announced.
    pub fn new(capacity: u64) -> Self {
        let half = (capacity / 2).max(1);
        let items = usize::try_from(half).unwrap_or(usize::MAX);
        let estimated = items.min(65_536);
        Self {
            generations: Generations::new(BUCKETS),
            templates: AtomicU64::new(0),
            workflows: Cache::with_weighter(estimated, half, BySlots),
            pages: Cache::with_weighter((estimated / 50).max(16), half, BySlots),
        }
    }

    /// Starts serving cached answers, none from before this call.
    pub fn enable(&self) {
        self.generations.enable();
    }

    /// Stops serving cached answers (changes may go unannounced from now on).
    pub fn disable(&self) {
        self.generations.disable();
        self.workflows.clear();
        self.pages.clear();
    }

    pub fn is_enabled(&self) -> bool {
        self.generations.is_enabled()
    }

    /// Records a change to what `owner` holds: `""` is the template library, which every tenant
    /// sees; [`EVERYTHING`] is every tenant's.
    pub fn changed(&self, owner: &str) {
        if owner.is_empty() {
            self.templates.fetch_add(1, Ordering::SeqCst);
        } else if owner == EVERYTHING {
            self.generations.changed_everything();
        } else {
            self.generations.changed(owner);
        }
    }

    /// The generations a read by `tenant` depends on, as they are now.
    fn stamp(&self, tenant: &str) -> Stamp {
        Stamp { tenant: self.generations.stamp(tenant), templates: self.templates.load(Ordering::SeqCst) }
    }
}

/// Which listing a page is: everything its answer depends on.
fn page_key(tenant: &str, filter: &WorkflowFilter, page: &PageRequest) -> String {
    // Serialised with a separator no part can hold unescaped: JSON.
    serde_json::json!([
        tenant,
        filter.category.map(|c| c.as_str()),
        filter.status.map(|s| s.as_str()),
        filter.is_template,
        filter.name_contains,
        page.size,
        page.after,
    ])
    .to_string()
}

fn record_lookup(kind: &'static str, result: &'static str) {
    metrics::counter!("workflow_cache_lookups_total", "kind" => kind, "result" => result).increment(1);
}

/// The repository with a [`WorkflowCache`] in front of its reads; writes go through and count
/// as changes.
pub struct CachedWorkflowRepository {
    inner: Arc<dyn WorkflowRepository>,
    cache: Arc<WorkflowCache>,
}

impl CachedWorkflowRepository {
    pub fn new(inner: Arc<dyn WorkflowRepository>, cache: Arc<WorkflowCache>) -> Self {
        Self { inner, cache }
    }
}

#[async_trait]
impl WorkflowRepository for CachedWorkflowRepository {
    async fn seed_templates(&self, templates: &[Template]) -> ServiceResult<SeedOutcome> {
        let result = self.inner.seed_templates(templates).await;
        self.cache.changed("");
        result
    }

    async fn fold_names(&self) -> ServiceResult<u64> {
        let result = self.inner.fold_names().await;
        self.cache.changed(EVERYTHING);
        result
    }

    async fn create(&self, tenant: &str, new: NewWorkflow, key: Option<&IdempotencyKey>) -> ServiceResult<Workflow> {
        let result = self.inner.create(tenant, new, key).await;
        self.cache.changed(tenant);
        result
    }

    async fn get(&self, tenant: &str, id: Uuid) -> ServiceResult<Workflow> {
        if !self.cache.is_enabled() {
            record_lookup("get", "bypass");
            return self.inner.get(tenant, id).await;
        }
        let stamp = self.cache.stamp(tenant);
        let key = (tenant.to_owned(), id);
        if let Some(entry) = self.cache.workflows.get(&key)
            && entry.stamp == stamp
        {
            record_lookup("get", "hit");
            return Ok(Workflow::clone(&entry.value));
        }
        record_lookup("get", "miss");
        let workflow = self.inner.get(tenant, id).await?;
        self.cache.workflows.insert(key, Entry { stamp, value: Arc::new(workflow.clone()) });
        Ok(workflow)
    }

    async fn list(&self, tenant: &str, filter: &WorkflowFilter, page: &PageRequest) -> ServiceResult<Arc<[Workflow]>> {
        if !self.cache.is_enabled() {
            record_lookup("list", "bypass");
            return self.inner.list(tenant, filter, page).await;
        }
        let stamp = self.cache.stamp(tenant);
        let key = page_key(tenant, filter, page);
        if let Some(entry) = self.cache.pages.get(&key)
            && entry.stamp == stamp
        {
            record_lookup("list", "hit");
            return Ok(entry.value);
        }
        record_lookup("list", "miss");
        let workflows = self.inner.list(tenant, filter, page).await?;
        self.cache.pages.insert(key, Entry { stamp, value: workflows.clone() });
        Ok(workflows)
    }

    async fn mutate(
        &self,
        tenant: &str,
        id: Uuid,
        key: Option<&IdempotencyKey>,
        mutation: Mutation,
    ) -> ServiceResult<Workflow> {
        let result = self.inner.mutate(tenant, id, key, mutation).await;
        self.cache.changed(tenant);
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
        self.cache.changed(tenant);
        result
    }

    async fn record_execution(
        &self,
        tenant: &str,
        workflow_id: Uuid,
        execution_id: &str,
        succeeded: bool,
    ) -> ServiceResult<RecordedExecution> {
        let result = self.inner.record_execution(tenant, workflow_id, execution_id, succeeded).await;
        // Only the reporting tenant's statistics change, even on a template: every tenant reads
        // its own (and a cached answer is the reading tenant's, keyed and stamped by it).
        self.cache.changed(tenant);
        result
    }

    async fn record_executions(
        &self,
        tenant: &str,
        reports: &[ExecutionReport],
    ) -> ServiceResult<Vec<ServiceResult<RecordedExecution>>> {
        let result = self.inner.record_executions(tenant, reports).await;
        // As for one record: the reporting tenant's statistics only.
        self.cache.changed(tenant);
        result
    }

    async fn import(&self, workflow: &Workflow, dry_run: bool) -> ServiceResult<ImportApplied> {
        let result = self.inner.import(workflow, dry_run).await;
        if !dry_run {
            self.cache.changed(&workflow.tenant_id);
        }
        result
    }

    async fn expire_idempotency_keys(&self, before: chrono::DateTime<chrono::Utc>, limit: i64) -> ServiceResult<u64> {
        self.inner.expire_idempotency_keys(before, limit).await
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use engarde::kit::pagination::PageRequest;

    use super::*;
    use crate::domain::templates;
    use crate::storage::{SQLITE_MIGRATIONS, SqliteWorkflowRepository};

    /// A cache over a real (in-memory SQLite) repository, and that repository for writing
    /// behind the cache's back, as another replica would.
    async fn cached() -> (CachedWorkflowRepository, Arc<WorkflowCache>, Arc<dyn WorkflowRepository>) {
        let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await.unwrap();
        SQLITE_MIGRATIONS.run(&pool).await.unwrap();
        let inner: Arc<dyn WorkflowRepository> = Arc::new(SqliteWorkflowRepository::new(pool.into()));
        inner.seed_templates(&templates::library(Utc::now())).await.unwrap();
        let cache = Arc::new(WorkflowCache::new(100));
        cache.enable();
        (CachedWorkflowRepository::new(inner.clone(), cache.clone()), cache, inner)
    }

    fn rename(name: &'static str) -> Mutation {
        Box::new(move |w: &mut Workflow| {
            w.name = name.into();
            Ok(())
        })
    }

    fn new_workflow(name: &str) -> NewWorkflow {
        let template = &templates::library(Utc::now())[0].workflow;
        NewWorkflow {
            name: name.into(),
            description: String::new(),
            category: template.category,
            config: template.config.clone(),
        }
    }

    #[tokio::test]
    async fn answers_from_memory_until_the_owner_changes() {
        let (repo, cache, behind) = cached().await;
        let created = repo.create("t1", new_workflow("One"), None).await.unwrap();
        assert_eq!(repo.get("t1", created.id).await.unwrap().name, "One");

        // Changed unannounced: the cached answer stands.
        behind.mutate("t1", created.id, None, rename("Two")).await.unwrap();
        assert_eq!(repo.get("t1", created.id).await.unwrap().name, "One");
        // Another tenant's change (in another bucket) leaves it cached; the owner's drops it.
        let other = (0..).map(|n| format!("other-{n}")).find(|t| !cache.generations.same_bucket(t, "t1")).unwrap();
        cache.changed(&other);
        assert_eq!(repo.get("t1", created.id).await.unwrap().name, "One");
        cache.changed("t1");
        assert_eq!(repo.get("t1", created.id).await.unwrap().name, "Two");

        // Its own writes are read at once.
        repo.mutate("t1", created.id, None, rename("Three")).await.unwrap();
        assert_eq!(repo.get("t1", created.id).await.unwrap().name, "Three");
    }

    #[tokio::test]
    async fn pages_depend_on_the_tenant_and_the_template_library() {
        let (repo, cache, behind) = cached().await;
        let filter = WorkflowFilter::default();
        let page = PageRequest::parse(50, "", String::new()).unwrap();
        let before = repo.list("t1", &filter, &page).await.unwrap();
        assert_eq!(before.len(), 11, "the library");

        behind.create("t1", new_workflow("Mine"), None).await.unwrap();
        assert_eq!(repo.list("t1", &filter, &page).await.unwrap(), before, "cached");
        cache.changed("");
        assert_eq!(
            repo.list("t1", &filter, &page).await.unwrap().len(),
            12,
            "a library change drops every tenant's pages"
        );

        behind.create("t1", new_workflow("Mine too"), None).await.unwrap();
        cache.changed(EVERYTHING);
        assert_eq!(repo.list("t1", &filter, &page).await.unwrap().len(), 13);

        // Off: every read goes to the database.
        cache.disable();
        behind.create("t1", new_workflow("Third"), None).await.unwrap();
        assert_eq!(repo.list("t1", &filter, &page).await.unwrap().len(), 14);
    }

    #[tokio::test]
    async fn a_record_on_a_template_changes_the_reporting_tenants_reads_only() {
        let (repo, cache, behind) = cached().await;
        let template = templates::library(Utc::now())[0].workflow.id;
        let other = (0..).map(|n| format!("other-{n}")).find(|t| !cache.generations.same_bucket(t, "t1")).unwrap();
        let filter = WorkflowFilter { is_template: Some(true), ..Default::default() };
        let page = PageRequest::parse(50, "", String::new()).unwrap();
        let read = |tenant: String| {
            let (repo, filter, page) = (&repo, &filter, &page);
            async move {
                let got = repo.get(&tenant, template).await.unwrap().execution_count;
                let listed = repo.list(&tenant, filter, page).await.unwrap();
                (got, listed.iter().find(|w| w.id == template).unwrap().execution_count)
            }
        };
        assert_eq!((read("t1".into()).await, read(other.clone()).await), ((0, 0), (0, 0)), "both cached");

        // The other tenant counts one behind the cache's back: its cached answers stand...
        behind.record_execution(&other, template, "theirs", true).await.unwrap();
        // ...and T1's record through the cache drops T1's answers, which read T1's own count at
        // once, and not the other tenant's.
        let recorded = repo.record_execution("t1", template, "mine", true).await.unwrap();
        assert_eq!(recorded.workflow.execution_count, 1);
        assert_eq!(read("t1".into()).await, (1, 1));
        assert_eq!(read(other.clone()).await, (0, 0), "still the other tenant's cached answers");
        cache.changed(&other);
        assert_eq!(read(other).await, (1, 1), "its own count, once its change is announced");
    }

    #[test]
    fn a_page_key_tells_every_request_apart() {
        let page = PageRequest::parse(50, "", String::new()).unwrap();
        let filter = WorkflowFilter::default();
        let mut smaller = page.clone();
        smaller.size = 10;
        let mut later = page.clone();
        later.after = Some(vec!["a".into(), "b".into()]);
        let keys = [
            page_key("t1", &filter, &page),
            page_key("t2", &filter, &page),
            page_key("t1", &WorkflowFilter { name_contains: "a".into(), ..filter.clone() }, &page),
            page_key("t1", &WorkflowFilter { is_template: Some(false), ..filter.clone() }, &page),
            page_key("t1", &filter, &smaller),
            page_key("t1", &filter, &later),
            page_key("t1\",\"x", &filter, &page),
        ];
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len());
    }

    #[test]
    fn large_workflows_take_a_slot_per_16_kib_so_a_few_cannot_fill_memory() {
        let mut workflow = templates::library(Utc::now())[0].workflow.clone();
        assert_eq!(slots(&workflow), 1, "an ordinary workflow is one slot");
        workflow.config.langflow_flow_json = "x".repeat(1024 * 1024);
        assert!(slots(&workflow) >= 64, "a 1 MiB export weighs at least 64 slots: {}", slots(&workflow));

        // A capacity of 100 (50 for single reads) holds the ordinary workflows it names, but
        // not 50 of the large: memory stays about 50 x 16 KiB, not 50 MiB.
        let cache = WorkflowCache::new(100);
        for _ in 0..50 {
            let big = Workflow { id: Uuid::new_v4(), ..workflow.clone() };
            let stamp = cache.stamp("t1");
            cache.workflows.insert(("t1".into(), big.id), Entry { stamp, value: Arc::new(big) });
        }
        assert!(cache.workflows.len() <= 1, "{} large workflows kept", cache.workflows.len());
    }
}
