//! agent-service's health follows its own database (not workflow-service), for each of the
//! three services it serves, and a grpcurl session through reflection provisions and lists agents.

use std::process::Command;
use std::time::Duration;

use engarde::proto::agent::v1 as pb;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::agents_crud::new_agent;
use crate::helpers::*;
use crate::workflows_health::ThrowawayPostgres;

const SERVICE: &str = "engarde.agent.v1.AgentService";
/// Every service agent-service serves: health reports each.
const SERVICES: [&str; 3] = [SERVICE, "engarde.agent.v1.ExecutionService", "engarde.agent.v1.RunService"];

/// The status of each of SERVICES, when all of them answer the same one.
async fn status_of(health: &mut HealthClient<tonic::transport::Channel>) -> Option<i32> {
    let mut statuses = Vec::new();
    for service in SERVICES {
        statuses.push(health.check(HealthCheckRequest { service: service.into() }).await.ok()?.into_inner().status);
    }
    statuses.iter().all(|s| *s == statuses[0]).then(|| statuses[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_of_each_agent_service_follows_the_agent_database_not_workflow_service() {
    let workflow_db = TestDb::new(Backend::Sqlite).await;
    let mut workflow = spawn_workflow_service(&workflow_db, &[]).await;
    let pg = ThrowawayPostgres::start();
    let agent = ServiceProcess::start(
        "agent-service",
        &[("DATABASE_URL", pg.url()), ("AUTH_MODE", "dev".into()), ("WORKFLOW_SERVICE_URL", workflow.url())],
    )
    .await;
    let mut health = HealthClient::new(agent.channel().await);
    let mut agents = engarde::proto::agent::v1::agent_service_client::AgentServiceClient::with_interceptor(
        agent.channel().await,
        as_tenant("tenant-a"),
    );
    let kept = agents.create_agent(new_agent("Before the outage")).await.unwrap().into_inner();
    assert_eq!(status_of(&mut health).await, Some(ServingStatus::Serving as i32));

    // workflow-service going away is not agent-service's outage: it stays SERVING.
    workflow.kill().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(status_of(&mut health).await, Some(ServingStatus::Serving as i32));

    pg.stop();
    eventually(Duration::from_secs(15), "NOT_SERVING while the database is down", || {
        let mut h = health.clone();
        async move { status_of(&mut h).await == Some(ServingStatus::NotServing as i32) }
    })
    .await;
    expect_code(agents.get_agent(pb::GetAgentRequest { id: kept.id.clone() }).await, Code::Unavailable);

    pg.resume();
    eventually(Duration::from_secs(15), "SERVING again once the database is back", || {
        let mut h = health.clone();
        async move { status_of(&mut h).await == Some(ServingStatus::Serving as i32) }
    })
    .await;
    let read = agents.get_agent(pb::GetAgentRequest { id: kept.id.clone() }).await.expect("reads work again");
    assert_eq!(read.into_inner().name, "Before the outage");
}

fn grpcurl(args: &[&str]) -> String {
    let program = std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into());
    let output = Command::new(program).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run grpcurl ({e}); scripts/install-test-deps installs it and scripts/test sets GRPCURL")
    });
    assert!(output.status.success(), "grpcurl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_provisions_and_lists_installed_agents_through_reflection() {
    let app = spawn_app(Backend::Sqlite).await;
    let addr = app.agent.addr.to_string();

    let services = grpcurl(&["-plaintext", &addr, "list"]);
    assert!(services.lines().any(|l| l == SERVICE), "{services}");
    let described = grpcurl(&["-plaintext", &addr, "describe", SERVICE]);
    assert!(described.contains("rpc ProvisionAgents"), "{described}");
    assert!(described.contains("exactly one agent"), "the .proto comments are the documentation:\n{described}");
    let status_enum = grpcurl(&["-plaintext", &addr, "describe", "engarde.agent.v1.AgentStatus"]);
    assert!(status_enum.contains("DRAFT --DeployAgent--> DEPLOYED"), "{status_enum}");

    let tenant = ["-H", "x-tenant-id: default-tenant-001"];
    let provisioned = grpcurl(
        &[&["-plaintext"], &tenant[..], &["-d", "{}", &addr, "engarde.agent.v1.AgentService/ProvisionAgents"]].concat(),
    );
    let json: serde_json::Value = serde_json::from_str(&provisioned).expect("JSON answer");
    assert_eq!(json["created"].as_array().expect("created").len(), 11);

    let installed = grpcurl(
        &[
            &["-plaintext"],
            &tenant[..],
            &["-d", r#"{"page_size": 50}"#, &addr, "engarde.agent.v1.AgentService/ListInstalledAgents"],
        ]
        .concat(),
    );
    let json: serde_json::Value = serde_json::from_str(&installed).expect("JSON answer");
    let items = json["installedAgents"].as_array().expect("installedAgents");
    assert_eq!(items.len(), 11);
    assert!(items.iter().all(|i| i["isTemplate"] == true && i["workflowStatus"] == "WORKFLOW_STATUS_ACTIVE"));

    let health =
        grpcurl(&["-plaintext", "-d", &format!(r#"{{"service": "{SERVICE}"}}"#), &addr, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("SERVING"), "{health}");
}
