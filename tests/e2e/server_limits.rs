//! The limits that protect a server from its callers, and from load: health never waits behind
//! business calls.

use std::time::{Duration, Instant};

use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::agents_execution::{active_agent, execute, spawn_with_langflow};
use crate::helpers::*;
use crate::langflow_support::FakeLangflow;

const SERVING: i32 = ServingStatus::Serving as i32;

/// Health/Check of `service` with a deadline of `within`.
async fn check(health: &mut HealthClient<Channel>, service: &str, within: Duration) -> Result<i32, tonic::Status> {
    let mut request = tonic::Request::new(HealthCheckRequest { service: service.into() });
    request.set_timeout(within);
    Ok(health.check(request).await?.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_while_business_calls_saturate_the_concurrency_limit() {
    let fake = FakeLangflow::start().await;
    let app = spawn_with_langflow(Backend::Sqlite, &fake.url(), &[("MAX_CONCURRENT_RPCS", "2".into())]).await;
    let (_, agent) = active_agent(&app, "tenant-a").await;

    // Two slow executions take both permits; a third waits for one.
    fake.set_delay(Duration::from_secs(120));
    let mut slow = Vec::new();
    for i in 0..3 {
        let mut agents = app.agents("tenant-a").await;
        let request = execute(&agent.id, &format!("slow {i}"), "");
        slow.push(tokio::spawn(async move { agents.execute_agent(request).await }));
    }
    eventually(Duration::from_secs(30), "two executions waiting on Langflow", || async { fake.runs() >= 2 }).await;
    let mut agents = app.agents("tenant-a").await;
    let mut waiting = tonic::Request::new(engarde::proto::agent::v1::GetAgentRequest { id: agent.id.clone() });
    waiting.set_timeout(Duration::from_millis(500));
    // Business calls do wait: the limit is reached (the client's deadline cuts this one short).
    let status = agents.get_agent(waiting).await.expect_err("a business call waits for a permit");
    assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled), "{status:?}");

    // Liveness, readiness and reflection do not queue behind them. The target is well under
    // 100 ms; the deadline is generous for a loaded machine (without the bypass they would
    // wait the full two minutes of the slow calls).
    let mut health = HealthClient::new(app.agent.channel().await);
    let started = Instant::now();
    assert_eq!(check(&mut health, "", Duration::from_secs(2)).await.expect("liveness answers"), SERVING);
    let named = check(&mut health, "engarde.agent.v1.AgentService", Duration::from_secs(2)).await;
    assert_eq!(named.expect("readiness answers"), SERVING);
    eprintln!("two health checks under saturation took {:?}", started.elapsed());
    let services = crate::server_reflection::list_services(&app.agent, "v1", Duration::from_secs(2)).await;
    assert!(services.iter().any(|s| s == "engarde.agent.v1.AgentService"), "{services:?}");

    for call in slow {
        call.abort();
    }
}
