//! The read cache of workflow-service: replicas on one database never keep serving what another
//! replica, or an operator's SQL, has changed; a replica reads its own writes at once; and a lost
//! change feed turns the cache off rather than leaving it stale.

use std::time::Duration;

use engarde::proto::workflow::v1 as pb;
use prost_types::FieldMask;
use tonic::Code;

use crate::both_backends;
use crate::helpers::*;
use crate::workflows_crud::create_request;
use pb::workflow_service_client::WorkflowServiceClient;

/// How long a change made elsewhere may take to reach another replica's reads.
const PROPAGATION: Duration = Duration::from_secs(5);

async fn get(client: &mut WorkflowClient, id: &str) -> Result<pb::WorkflowDefinition, tonic::Status> {
    client.get_workflow(pb::GetWorkflowRequest { id: id.to_owned() }).await.map(|r| r.into_inner())
}

async fn names(client: &mut WorkflowClient) -> Vec<String> {
    let request = pb::ListWorkflowsRequest { is_template: Some(false), page_size: 50, ..Default::default() };
    client.list_workflows(request).await.unwrap().into_inner().workflows.into_iter().map(|w| w.name).collect()
}

async fn rename(client: &mut WorkflowClient, workflow: &pb::WorkflowDefinition, name: &str) -> pb::WorkflowDefinition {
    let mut patch = workflow.clone();
    patch.name = name.into();
    let request = pb::UpdateWorkflowRequest {
        workflow: Some(patch),
        update_mask: Some(FieldMask { paths: vec!["name".into()] }),
        request_id: String::new(),
    };
    client.update_workflow(request).await.unwrap().into_inner()
}

/// Waits until replica `client` answers `id` with `name`.
async fn until_named(client: &WorkflowClient, id: &str, name: &str) {
    eventually(PROPAGATION, &format!("workflow {id} read as {name:?}"), || {
        let mut client = client.clone();
        async move { get(&mut client, id).await.is_ok_and(|w| w.name == name) }
    })
    .await;
}

both_backends!(
    async fn replicas_on_one_database_read_each_others_writes(backend) {
        let db = TestDb::new(backend).await;
        let a = spawn_workflow_service(&db, &[]).await;
        let b = spawn_workflow_service(&db, &[]).await;
        let mut on_a = WorkflowServiceClient::with_interceptor(a.channel().await, as_tenant("tenant-a"));
        let mut on_b = WorkflowServiceClient::with_interceptor(b.channel().await, as_tenant("tenant-a"));

        // B reads (and caches) the workflow and the listing; A changes them.
        let created = on_a.create_workflow(create_request("Original")).await.unwrap().into_inner();
        for _ in 0..3 {
            assert_eq!(get(&mut on_b, &created.id).await.unwrap().name, "Original");
            assert_eq!(names(&mut on_b).await, ["Original"]);
        }
        let renamed = rename(&mut on_a, &created, "Renamed on A").await;
        until_named(&on_b, &created.id, "Renamed on A").await;
        assert_eq!(names(&mut on_b).await, ["Renamed on A"], "the cached page was dropped too");

        // A replica reads its own writes at once, and an etag it answered is current.
        let fresh = get(&mut on_b, &created.id).await.unwrap();
        assert_eq!(fresh, renamed);
        let renamed_on_b = rename(&mut on_b, &fresh, "Renamed on B").await;
        assert_eq!(get(&mut on_b, &created.id).await.unwrap(), renamed_on_b);
        assert_eq!(names(&mut on_b).await, ["Renamed on B"]);
        until_named(&on_a, &created.id, "Renamed on B").await;

        // Statistics counted on a template through A reach the reporting tenant's reads on B;
        // another tenant's stay its own (statistics are per tenant).
        let mut other_on_b = WorkflowServiceClient::with_interceptor(b.channel().await, as_tenant("tenant-b"));
        let template = other_on_b
            .list_workflows(pb::ListWorkflowsRequest { is_template: Some(true), page_size: 1, ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .workflows
            .remove(0);
        assert_eq!(get(&mut other_on_b, &template.id).await.unwrap().execution_count, 0);
        assert_eq!(get(&mut on_b, &template.id).await.unwrap().execution_count, 0);
        let report = pb::RecordExecutionRequest { workflow_id: template.id.clone(), execution_id: "e-1".into(), succeeded: true };
        on_a.record_execution(report).await.unwrap();
        eventually(PROPAGATION, "the template's count read on B", || {
            let (mut client, id) = (on_b.clone(), template.id.clone());
            async move { get(&mut client, &id).await.is_ok_and(|w| w.execution_count == 1) }
        })
        .await;
        assert_eq!(get(&mut other_on_b, &template.id).await.unwrap().execution_count, 0, "tenant-b's own");

        // A deletion on A is NOT_FOUND on B.
        on_a.delete_workflow(pb::DeleteWorkflowRequest { id: created.id.clone(), ..Default::default() }).await.unwrap();
        eventually(PROPAGATION, "the deleted workflow gone from B", || {
            let (mut client, id) = (on_b.clone(), created.id.clone());
            async move { matches!(get(&mut client, &id).await, Err(s) if s.code() == Code::NotFound) }
        })
        .await;
        assert!(names(&mut on_b).await.is_empty());
    }
);

/// On PostgreSQL the cache is on (its hits are counted), follows changes made outside the
/// service, and survives losing its change feed without serving a change it missed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cache_follows_sql_changes_and_a_lost_feed() {
    let db = TestDb::new(Backend::Postgres).await;
    let metrics = free_port();
    let service = spawn_workflow_service(
        &db,
        &[("METRICS_ADDR", format!("127.0.0.1:{metrics}")), ("WORKFLOW_CACHE_HEARTBEAT_MS", "200".into())],
    )
    .await;
    let mut client = WorkflowServiceClient::with_interceptor(service.channel().await, as_tenant("tenant-a"));
    let created = client.create_workflow(create_request("Cached")).await.unwrap().into_inner();

    let hits = || async {
        metric_sum(&scrape(metrics).await, "workflow_cache_lookups_total", &[r#"kind="get""#, r#"result="hit""#])
    };
    eventually(PROPAGATION, "reads served from the cache", || {
        let mut client = client.clone();
        let id = created.id.clone();
        async move {
            get(&mut client, &id).await.unwrap();
            get(&mut client, &id).await.unwrap();
            hits().await > 0.0
        }
    })
    .await;

    // An operator's UPDATE is announced by the table's trigger like any other commit.
    db.psql(&format!("UPDATE workflows SET name = 'Renamed by SQL' WHERE id = '{}'", created.id));
    until_named(&client, &created.id, "Renamed by SQL").await;

    // The feed's connection dies, and a change commits before it is back: that announcement is
    // lost, and the change must be read anyway.
    let terminated = db.psql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    );
    assert_eq!(terminated, "1", "one replica, one listening connection");
    db.psql(&format!("UPDATE workflows SET name = 'Renamed while deaf' WHERE id = '{}'", created.id));
    until_named(&client, &created.id, "Renamed while deaf").await;
    for _ in 0..20 {
        assert_eq!(get(&mut client, &created.id).await.unwrap().name, "Renamed while deaf");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // ...and the cache comes back on by itself.
    let before = hits().await;
    eventually(PROPAGATION, "the cache on again after the feed reconnected", || {
        let mut client = client.clone();
        let id = created.id.clone();
        async move {
            get(&mut client, &id).await.unwrap();
            hits().await > before
        }
    })
    .await;
    assert_eq!(get(&mut client, &created.id).await.unwrap().name, "Renamed while deaf");
    db.psql(&format!("UPDATE workflows SET name = 'Renamed after' WHERE id = '{}'", created.id));
    until_named(&client, &created.id, "Renamed after").await;

    // A listening connection that goes deaf without failing, as a partition leaves it half open:
    // its backend is stopped, so nothing arrives and nothing errors. The heartbeats it no longer
    // hears turn the cache off, and the change is read.
    let listener =
        db.psql("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'");
    let _stopped = StoppedProcess::stop(&listener);
    db.psql(&format!("UPDATE workflows SET name = 'Renamed while half open' WHERE id = '{}'", created.id));
    until_named(&client, &created.id, "Renamed while half open").await;
    drop(service);
}

/// A process stopped with SIGSTOP, continued when dropped (even when the test fails).
struct StoppedProcess(String);

impl StoppedProcess {
    fn stop(pid: &str) -> Self {
        assert!(!pid.is_empty() && pid.chars().all(|c| c.is_ascii_digit()), "one pid, got {pid:?}");
        signal(pid, "-STOP");
        Self(pid.to_owned())
    }
}

impl Drop for StoppedProcess {
    fn drop(&mut self) {
        signal(&self.0, "-CONT");
    }
}

fn signal(pid: &str, which: &str) {
    let status = std::process::Command::new("kill").args([which, pid]).status().expect("kill runs");
    assert!(status.success(), "kill {which} {pid} failed");
}

/// How stale a replica's cached read may be after another replica's write has been answered: the
/// README promises about a millisecond; this leaves a loaded machine a thousand times that.
const STALE_BOUND: Duration = Duration::from_secs(1);

/// A replica whose every pooled connection is busy (its calls wait on a row an operator keeps
/// locked) still applies the change feed as it arrives: another replica's write is never read
/// stale from its cache past the bound, even while nothing can reach the database through its
/// pool. (The feed used to wait for a pooled connection to send its heartbeat with, and apply
/// nothing meanwhile: stale for seconds.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_saturated_pool_does_not_hold_back_the_change_feed() {
    use sqlx::Connection as _;

    let db = TestDb::new(Backend::Postgres).await;
    let metrics = free_port();
    let a = spawn_workflow_service(
        &db,
        &[
            ("DB_MAX_CONNECTIONS", "2".into()),
            ("WORKFLOW_CACHE_HEARTBEAT_MS", "200".into()),
            ("METRICS_ADDR", format!("127.0.0.1:{metrics}")),
        ],
    )
    .await;
    let b = spawn_workflow_service(&db, &[]).await;
    let on_a = WorkflowServiceClient::with_interceptor(a.channel().await, as_tenant("tenant-a"));
    let mut on_b = WorkflowServiceClient::with_interceptor(b.channel().await, as_tenant("tenant-a"));
    let watched = on_b.create_workflow(create_request("Before")).await.unwrap().into_inner();
    let locked = on_b.create_workflow(create_request("Locked")).await.unwrap().into_inner();

    // A serves `watched` from its cache.
    let hits = move || async move {
        metric_sum(&scrape(metrics).await, "workflow_cache_lookups_total", &[r#"kind="get""#, r#"result="hit""#])
    };
    let served_from_cache = |what: &'static str| {
        eventually(PROPAGATION, what, || {
            let (mut client, id) = (on_a.clone(), watched.id.clone());
            async move {
                let before = hits().await;
                get(&mut client, &id).await.is_ok_and(|w| w.name == "Before") && hits().await > before
            }
        })
    };
    served_from_cache("A's reads served from its cache").await;

    // An operator locks a workflow, and A's pool fills with updates of it, each holding its
    // connection while it waits for the lock.
    let mut operator = sqlx::PgConnection::connect(db.url()).await.unwrap();
    sqlx::query("BEGIN").execute(&mut operator).await.unwrap();
    sqlx::query("SELECT id FROM workflows WHERE id = $1::uuid FOR UPDATE")
        .bind(&locked.id)
        .execute(&mut operator)
        .await
        .unwrap();
    let stuck: Vec<_> = (0..4)
        .map(|n| {
            let (mut client, mut patch) = (on_a.clone(), locked.clone());
            patch.description = format!("update {n}");
            tokio::spawn(async move {
                let request = pb::UpdateWorkflowRequest {
                    workflow: Some(patch),
                    update_mask: Some(FieldMask { paths: vec!["description".into()] }),
                    request_id: String::new(),
                };
                let _ = client.update_workflow(request).await;
            })
        })
        .collect();
    let operator_db = &db;
    eventually(PROPAGATION, "A's calls waiting on the operator's lock", move || async move {
        operator_db
            .sql(
                "SELECT CASE WHEN count(*) > 0 THEN 'yes' ELSE 'no' END FROM pg_stat_activity \
                WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .await
            == "yes"
    })
    .await;

    // A's cache stays on: its feed does not depend on its pool.
    served_from_cache("A's reads served from its cache while its pool is saturated").await;

    // B changes `watched`. A is read every 50 ms for 4 s, each read on its own (a read that
    // misses the cache waits for a pooled connection, and gets UNAVAILABLE): none that starts
    // past the bound may answer the old name.
    rename(&mut on_b, &watched, "After").await;
    let written = tokio::time::Instant::now();
    let reads: Vec<_> = (0..80u32)
        .map(|n| {
            let (mut client, id) = (on_a.clone(), watched.id.clone());
            let start = written + Duration::from_millis(50) * n;
            tokio::spawn(async move {
                tokio::time::sleep_until(start).await;
                let answer = get(&mut client, &id).await;
                (start - written, answer.map(|w| w.name))
            })
        })
        .collect();
    let mut stale_after = Vec::new();
    for read in reads {
        let (after, answer) = read.await.unwrap();
        if matches!(&answer, Ok(name) if name == "Before") && after > STALE_BOUND {
            stale_after.push(after);
        }
    }
    assert!(stale_after.is_empty(), "A read its cache stale this long after B's write: {stale_after:?}");

    // The lock goes, A's pool frees up, and A reads the change.
    sqlx::query("ROLLBACK").execute(&mut operator).await.unwrap();
    for call in stuck {
        call.await.unwrap();
    }
    until_named(&on_a, &watched.id, "After").await;
}
