//! Faults, each checked against what must survive them: nothing acknowledged is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use engarde::proto::workflow::v1 as wpb;
use engarde::proto::workflow::v1::workflow_service_client::WorkflowServiceClient;
use tokio::sync::Mutex;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::*;
use crate::workflows_crud::create_request;
use crate::workflows_health::ThrowawayPostgres;

const SERVICE: &str = "engarde.workflow.v1.WorkflowService";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_with_zero_failed_requests() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut service =
        spawn_workflow_service(&db, &[("DRAIN_TIMEOUT_SECS", "10".into()), ("SHUTDOWN_DELAY_MS", "1000".into())]).await;
    let channel = service.channel().await;
    // Clients stop sending new calls once health says NOT_SERVING, as a load balancer would.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(Vec::new())));
    let mut clients = Vec::new();
    for _ in 0..16 {
        let mut client = WorkflowServiceClient::with_interceptor(channel.clone(), as_tenant("t-drain"));
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match client.list_workflows(wpb::ListWorkflowsRequest { page_size: 20, ..Default::default() }).await {
                    Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                    Err(status) => {
                        failed.lock().await.push(status);
                        0
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut health = HealthClient::new(channel.clone());
    let mut watch = health.watch(HealthCheckRequest { service: SERVICE.into() }).await.unwrap().into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, ServingStatus::Serving as i32);

    service.sigterm();
    let flipped = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.expect("health flips first");
    assert_eq!(flipped.ok().flatten().map(|m| m.status), Some(ServingStatus::NotServing as i32));
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }
    drop((watch, health, channel));
    let exit = service.wait_exit(Duration::from_secs(15)).await.expect("exits within the drain timeout");
    assert!(exit.success(), "{exit:?}");
    let failed = failed.lock().await;
    assert!(failed.is_empty(), "{} calls failed, e.g. {:?}", failed.len(), failed.first());
    assert!(ok.load(Ordering::SeqCst) > 50, "the load was real: {} calls", ok.load(Ordering::SeqCst));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_under_write_load_loses_no_acknowledged_write() {
    let pg = ThrowawayPostgres::start();
    let service =
        ServiceProcess::start("workflow-service", &[("DATABASE_URL", pg.url()), ("AUTH_MODE", "dev".into())]).await;
    let channel = service.channel().await;
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let unexpected = Arc::new(Mutex::new(Vec::<tonic::Status>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut client = WorkflowServiceClient::with_interceptor(channel.clone(), as_tenant("t-outage"));
        let (acknowledged, unexpected, stop) = (acknowledged.clone(), unexpected.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let mut request = create_request(&format!("writer {w} #{n}"));
                request.request_id = format!("w{w}-{n}");
                match client.create_workflow(request).await {
                    Ok(created) => acknowledged.lock().await.push(created.into_inner().id),
                    Err(s) if matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled) => {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    Err(s) => unexpected.lock().await.push(s),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    pg.stop();
    let health = HealthClient::new(channel.clone());
    eventually(Duration::from_secs(15), "NOT_SERVING while PostgreSQL is down", || {
        let mut h = health.clone();
        async move {
            h.check(HealthCheckRequest { service: SERVICE.into() }).await.map(|r| r.into_inner().status).ok()
                == Some(ServingStatus::NotServing as i32)
        }
    })
    .await;
    let during = acknowledged.lock().await.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(acknowledged.lock().await.len(), during, "no write is acknowledged while the database is down");

    pg.resume();
    let back = std::time::Instant::now();
    eventually(Duration::from_secs(10), "SERVING again", || {
        let mut h = health.clone();
        async move {
            h.check(HealthCheckRequest { service: SERVICE.into() }).await.map(|r| r.into_inner().status).ok()
                == Some(ServingStatus::Serving as i32)
        }
    })
    .await;
    assert!(back.elapsed() < Duration::from_secs(5), "SERVING {:?} after PostgreSQL returned", back.elapsed());
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }
    let unexpected = unexpected.lock().await;
    assert!(unexpected.is_empty(), "only UNAVAILABLE-class errors: {:?}", unexpected.first());

    let acknowledged = acknowledged.lock().await.clone();
    assert!(acknowledged.len() > during, "writes resumed after the outage");
    let mut client = WorkflowServiceClient::with_interceptor(channel, as_tenant("t-outage"));
    let mut stored = std::collections::HashSet::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_workflows(wpb::ListWorkflowsRequest {
                is_template: Some(false),
                page_size: 200,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        stored.extend(page.workflows.into_iter().map(|w| w.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    for id in &acknowledged {
        assert!(stored.contains(id), "acknowledged workflow {id} is stored");
    }
}
