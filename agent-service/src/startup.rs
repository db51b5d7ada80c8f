//! Builds the service from its config: database, migrations, the workflow-service client,
//! health, then serves until told to stop.

use std::time::Duration;

use engarde::kit::db::{DbPool, redact};
use engarde::kit::health::Health;
use engarde::kit::server::BoundServer;
use engarde::proto::agent::v1::agent_service_server::AgentServiceServer;
use tonic::service::Routes;

use crate::config::Config;
use crate::grpc::AgentApi;
use crate::provisioner::Provisioner;
use crate::storage::{self, POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS};
use crate::workflows::WorkflowClient;

/// The fully-qualified gRPC service name, as health checks name it.
pub const SERVICE_NAME: &str = "engarde.agent.v1.AgentService";

/// How long idempotency keys are kept for replays.
const IDEMPOTENCY_RETENTION: chrono::Duration = chrono::Duration::hours(24);

/// Runs the service until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let common = &config.common;
    // Fail fast on bad settings, before touching the database.
    common.authenticator()?;
    if common.auth_mode == engarde::kit::config::AuthMode::Dev {
        tracing::warn!(
            dev_tenant = %common.dev_tenant_id,
            "AUTH_MODE=dev: NO AUTHENTICATION. Any caller may act as any tenant via x-tenant-id. Never use this in production."
        );
    }
    let listen = engarde::kit::config::parse_listen_addr(&config.listen_addr)?;
    // Connects lazily: workflow-service may start after this service, or be down for a while
    // (calls that need it answer UNAVAILABLE meanwhile; the rest keep working).
    let workflows = WorkflowClient::connect_lazy(&config.workflow_service_url, config.workflow_call_timeout())?;
    tracing::info!(
        workflow_service = %config.workflow_service_url,
        call_timeout_ms = config.workflow_call_timeout_ms,
        "workflow-service client ready"
    );
    let db = DbPool::connect(&common.db_settings(&config.database_url)).await?;
    tracing::info!(database = %redact(&config.database_url), backend = db.backend(), "connecting to the database");
    db.migrate(
        common.database_schema.as_deref(),
        &POSTGRES_MIGRATIONS,
        &SQLITE_MIGRATIONS,
        common.db_startup_timeout(),
    )
    .await?;
    let repo = storage::repository(&db);

    let server = BoundServer::bind(listen).await?;
    let (health, health_service) = Health::new(vec![SERVICE_NAME]).await;
    health.set_dependencies_ok(true, "").await;
    health.watch_database(db.clone(), Duration::from_secs(2));
    spawn_idempotency_expiry(repo.clone());

    let provisioner = Provisioner::new(repo.clone(), workflows);
    let api = AgentServiceServer::new(AgentApi::new(repo, provisioner))
        .max_decoding_message_size(common.max_message_bytes)
        .max_encoding_message_size(common.max_message_bytes);
    let routes = Routes::new(api);
    let result = server.serve("agent-service", routes, health, health_service, common, shutdown).await;
    db.close().await;
    result
}

fn spawn_idempotency_expiry(repo: std::sync::Arc<dyn storage::AgentRepository>) {
    tokio::spawn(async move {
        loop {
            match repo.expire_idempotency_keys(chrono::Utc::now() - IDEMPOTENCY_RETENTION).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(expired = n, "expired old idempotency keys"),
                Err(e) => tracing::warn!(error = %e, "could not expire idempotency keys"),
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    });
}
