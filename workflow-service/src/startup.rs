//! Builds the service from its config: database, migrations, template library, health, then
//! serves until told to stop.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use engarde::kit::db::DbPool;
use engarde::kit::import::{ImportArgs, ImportReport};

use engarde::kit::health::Health;
use engarde::kit::retention::{Expiring, spawn_janitor};
use engarde::kit::server::BoundServer;
use engarde::kit::service_identity::ServiceAccess;
use engarde::proto::workflow::v1::workflow_service_server::WorkflowServiceServer;
use tonic::service::Routes;

use crate::config::Config;
use crate::domain::templates;
use crate::grpc::{AnswerLimits, WorkflowApi};

/// What agent-service's service identity may call: RecordExecution and RecordExecutions, which
/// only it may call (a tenant able to call them could forge its statistics), and GetWorkflow, to read a workflow for
/// the tenant it acts for when no caller is there (its scheduler checks a workflow's status).
const SERVICE_ACCESS: ServiceAccess = ServiceAccess {
    service_only: &[
        "/engarde.workflow.v1.WorkflowService/RecordExecution",
        "/engarde.workflow.v1.WorkflowService/RecordExecutions",
    ],
    service_allowed: &["/engarde.workflow.v1.WorkflowService/GetWorkflow"],
};
use crate::storage::{self, POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS, WorkflowRepository};

/// The fully-qualified gRPC service name, as health checks name it.
pub const SERVICE_NAME: &str = "engarde.workflow.v1.WorkflowService";

/// The database, migrated, and its repository with the template library seeded.
async fn open_repository(config: &Config) -> anyhow::Result<(DbPool, Arc<dyn WorkflowRepository>)> {
    let common = &config.common;
    let db = common.open_database(&config.database_url, &POSTGRES_MIGRATIONS, &SQLITE_MIGRATIONS).await?;
    let repo = storage::cached_repository(&db, config.workflow_cache_capacity, config.workflow_cache_heartbeat());
    let folded = repo.fold_names().await?;
    if folded > 0 {
        tracing::info!(folded, "folded the names of workflows written before name_folded");
    }
    let seeded =
        repo.seed_templates(&templates::library(chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6))).await?;
    tracing::info!(inserted = seeded.inserted, updated = seeded.updated, "template library seeded");
    Ok((db, repo))
}

/// `workflow-service import`: every tenant's rows of the source, into this service's database
/// (migrated and seeded first, so that a clash with a template's id is seen).
pub async fn import(config: Config, args: ImportArgs) -> anyhow::Result<ImportReport> {
    let source = args.source_url.context("the import needs --source-url (or IMPORT_SOURCE_URL)")?;
    engarde::kit::import::check_schema("--schema", &args.schema)
        .map_err(|v| anyhow::anyhow!("{}: {}", v.field, v.description))?;
    let (db, repo) = open_repository(&config).await?;
    tracing::info!(source = %source, schema = args.schema, dry_run = args.dry_run, "importing workflows");
    let report = crate::import::run(&*repo, &source, &args.schema, None, u32::MAX, args.dry_run).await;
    db.close().await;
    Ok(report?)
}

/// Runs the service until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let common = &config.common;
    // Fail fast on bad settings, before touching the database.
    common.check_auth()?;
    common.check_service_identity(false)?;
    common.check_tls()?;
    common.start_metrics()?;
    let listen = engarde::kit::config::parse_listen_addr(&config.listen_addr)?;
    let pages = common.page_budget()?;
    let (db, repo) = open_repository(&config).await?;

    let server = BoundServer::bind(listen).await?;
    let (health, health_service) = Health::new(vec![SERVICE_NAME]).await;
    health.set_dependencies_ok(true, "").await;
    health.watch_database(db.clone(), Duration::from_secs(2));
    let expiring = repo.clone();
    let idempotency = Expiring::new("idempotency_keys", common.janitor.idempotency_retention, move |before, limit| {
        let repo = expiring.clone();
        async move { repo.expire_idempotency_keys(before, limit).await }
    });
    spawn_janitor(&common.janitor, vec![idempotency]);

    if config.import.import_source_url.is_some() {
        tracing::info!("ImportWorkflows is enabled (IMPORT_SOURCE_URL is set)");
    }
    let api = WorkflowServiceServer::new(
        WorkflowApi::new(repo, AnswerLimits { pages, reported_violations: config.max_reported_violations })
            .with_import(config.import.clone()),
    )
    .max_decoding_message_size(common.max_message_bytes)
    .max_encoding_message_size(common.max_message_bytes);
    let routes = Routes::new(api);
    let result = server
        .with_service_access(SERVICE_ACCESS)
        .serve("workflow-service", routes, health, health_service, common, shutdown)
        .await;
    db.close().await;
    result
}
