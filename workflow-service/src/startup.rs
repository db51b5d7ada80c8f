//! Builds the service from its config: database, migrations, template library, health, then
//! serves until told to stop.

use std::time::Duration;

use engarde::kit::db::{DbPool, redact};
use engarde::kit::health::Health;
use engarde::kit::server::BoundServer;
use engarde::proto::workflow::v1::workflow_service_server::WorkflowServiceServer;
use tonic::service::Routes;

use crate::config::Config;
use crate::domain::templates;
use crate::grpc::WorkflowApi;
use crate::storage::{self, POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS};

/// The fully-qualified gRPC service name, as health checks name it.
pub const SERVICE_NAME: &str = "engarde.workflow.v1.WorkflowService";

/// How long idempotency keys are kept for replays.
const IDEMPOTENCY_RETENTION: chrono::Duration = chrono::Duration::hours(24);

/// Runs the service until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let common = &config.common;
    // Fail fast on bad auth settings, before touching the database.
    common.authenticator()?;
    if common.auth_mode == engarde::kit::config::AuthMode::Dev {
        tracing::warn!(
            dev_tenant = %common.dev_tenant_id,
            "AUTH_MODE=dev: NO AUTHENTICATION. Any caller may act as any tenant via x-tenant-id. Never use this in production."
        );
    }
    let listen = engarde::kit::config::parse_listen_addr(&config.listen_addr)?;
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
    let seeded =
        repo.seed_templates(&templates::library(chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6))).await?;
    tracing::info!(inserted = seeded, "template library seeded");

    let server = BoundServer::bind(listen).await?;
    let (health, health_service) = Health::new(vec![SERVICE_NAME]).await;
    health.set_dependencies_ok(true, "").await;
    health.watch_database(db.clone(), Duration::from_secs(2));
    spawn_idempotency_expiry(repo.clone());

    let api = WorkflowServiceServer::new(WorkflowApi::new(repo))
        .max_decoding_message_size(common.max_message_bytes)
        .max_encoding_message_size(common.max_message_bytes);
    let routes = Routes::new(api);
    let result = server.serve("workflow-service", routes, health, health_service, common, shutdown).await;
    db.close().await;
    result
}

fn spawn_idempotency_expiry(repo: std::sync::Arc<dyn storage::WorkflowRepository>) {
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
