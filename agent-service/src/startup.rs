//! Builds the service from its config: database, migrations, the workflow-service client,
//! health, then serves until told to stop.

use std::time::Duration;

use anyhow::Context as _;
use engarde::kit::import::{ImportArgs, ImportReport};

use engarde::kit::health::Health;
use engarde::kit::server::BoundServer;
use engarde::kit::service_identity::ServiceAccess;
use engarde::proto::agent::v1::agent_service_server::AgentServiceServer;
use engarde::proto::agent::v1::execution_service_server::ExecutionServiceServer;
use engarde::proto::agent::v1::run_service_server::RunServiceServer;
use tonic::service::Routes;

use crate::config::Config;
use crate::execution::group_commit::FinishCommitter;
use crate::execution::reporter::Reporter;
use crate::execution::{Executor, janitor};
use crate::flow_mark::DeploymentId;
use crate::flow_reconciler::FlowReconciler;
use crate::grpc::{AgentApi, ExecutionApi, RunApi};
use crate::import::{AgentImporter, Scope};
use crate::langflow::LangflowClient;
use crate::linkage::FlowLinker;
use crate::provisioner::Provisioner;
use crate::storage::{self, POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS};
use crate::walker::Walker;
use crate::workflows::WorkflowClient;

/// No RPC of agent-service is for another service: a service token gets PERMISSION_DENIED.
const SERVICE_ACCESS: ServiceAccess = ServiceAccess { service_only: &[], service_allowed: &[] };

/// The fully-qualified name of the service readiness probes ask about (health reports each of
/// `SERVICE_NAMES`; all three share one process and one database, so they are ready together).
pub const SERVICE_NAME: &str = "engarde.agent.v1.AgentService";

/// The gRPC services this process serves, as health checks and reflection name them.
pub const SERVICE_NAMES: [&str; 3] = [SERVICE_NAME, "engarde.agent.v1.ExecutionService", "engarde.agent.v1.RunService"];

/// Runs the service until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let common = &config.common;
    // Fail fast on bad settings, before touching the database.
    common.check_auth()?;
    common.check_service_identity(config.workflow_service_client_cert_file.is_some())?;
    common.check_tls()?;
    common.start_metrics()?;
    let listen = engarde::kit::config::parse_listen_addr(&config.listen_addr)?;
    let pages = common.page_budget()?;
    // Connects lazily: workflow-service may start after this service, or be down for a while
    // (calls that need it answer UNAVAILABLE meanwhile; the rest keep working).
    let workflows = workflow_client(&config)?;
    tracing::info!(
        workflow_service = %config.workflow_service_url,
        call_timeout_ms = config.workflow_call_timeout_ms,
        "workflow-service client ready"
    );
    let db = common.open_database(&config.database_url, &POSTGRES_MIGRATIONS, &SQLITE_MIGRATIONS).await?;
    let repo = storage::cached_repository(&db, config.agent_cache_capacity);

    let server = BoundServer::bind(listen).await?;
    let (health, health_service) = Health::new(SERVICE_NAMES.to_vec()).await;
    health.set_dependencies_ok(true, "").await;
    health.watch_database(db.clone(), Duration::from_secs(2));
    crate::retention::spawn(
        &config.retention,
        &common.janitor,
        repo.clone(),
        storage::retention::retention_repository(&db),
    );

    let langflow = connect_langflow(&config).await?;
    let deployment = deployment_id(&config, &db).await?;
    let linker = FlowLinker { langflow: langflow.clone(), deployment: deployment.clone() };
    if let Some(client) = &langflow
        && config.langflow_reconcile_interval_secs > 0
    {
        let reconciler = FlowReconciler {
            langflow: client.clone(),
            agents: repo.clone(),
            deployment,
            grace: Duration::from_secs(config.langflow_orphan_grace_secs),
        };
        reconciler.spawn(Duration::from_secs(config.langflow_reconcile_interval_secs));
    }
    let (executor, finishes) = start_execution(&config, &db, repo.clone(), langflow.clone(), workflows.clone());
    let walker =
        Walker::start(&config.walker, &db, repo.clone(), langflow.clone(), executor.clone(), workflows.clone());
    let default_models = storage::default_model_repository(&db);
    let importer = AgentImporter { repo: repo.clone(), workflows: workflows.clone(), linker: linker.clone() };
    if config.import.import_source_url.is_some() {
        tracing::info!("ImportAgents is enabled (IMPORT_SOURCE_URL is set)");
    }
    let provisioner = Provisioner::new(repo.clone(), default_models.clone(), workflows, linker.clone());
    let max = common.max_message_bytes;
    let api =
        AgentApi::new(repo, default_models, provisioner, linker, pages).with_import(importer, config.import.clone());
    let agents = AgentServiceServer::new(api).max_decoding_message_size(max).max_encoding_message_size(max);
    let executions = ExecutionServiceServer::new(ExecutionApi::new(executor, pages))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let runs =
        RunServiceServer::new(RunApi::new(walker, pages)).max_decoding_message_size(max).max_encoding_message_size(max);
    let routes = Routes::new(agents).add_service(executions).add_service(runs);
    let result = server
        .with_service_access(SERVICE_ACCESS)
        .serve("agent-service", routes, health, health_service, common, shutdown)
        .await;
    // What finished during the drain is recorded before the database goes.
    finishes.close().await;
    db.close().await;
    result
}

/// The workflow-service client (lazy: it connects at the first call).
fn workflow_client(config: &Config) -> anyhow::Result<WorkflowClient> {
    let common = &config.common;
    WorkflowClient::connect_lazy(
        &config.workflow_service_url,
        config.workflow_call_timeout(),
        common.max_message_bytes,
        common.service_tokens("agent-service")?,
        config.workflow_service_tls()?,
    )
}

/// `agent-service import`: every tenant's rows of the source, into this service's database
/// (migrated first), their snapshots read from workflow-service and their flows linked in
/// Langflow, as the service would.
pub async fn import(config: Config, args: ImportArgs) -> anyhow::Result<ImportReport> {
    let source = args.source_url.context("the import needs --source-url (or IMPORT_SOURCE_URL)")?;
    engarde::kit::import::check_schema("--schema", &args.schema)
        .map_err(|v| anyhow::anyhow!("{}: {}", v.field, v.description))?;
    let workflows = workflow_client(&config)?;
    let db = config.common.open_database(&config.database_url, &POSTGRES_MIGRATIONS, &SQLITE_MIGRATIONS).await?;
    let langflow = connect_langflow(&config).await?;
    let deployment = deployment_id(&config, &db).await?;
    let importer =
        AgentImporter { repo: storage::repository(&db), workflows, linker: FlowLinker { langflow, deployment } };
    tracing::info!(source = %source, schema = args.schema, dry_run = args.dry_run, "importing agents");
    let report = importer.run(&source, &args.schema, &Scope::Everyone, u32::MAX, args.dry_run).await;
    db.close().await;
    Ok(report?)
}

/// The executor of agents, with its background work: the group commit of finishes (answered,
/// to be closed at shutdown), the janitor of interrupted executions and the outbox worker that
/// reports executions to workflow-service.
fn start_execution(
    config: &Config,
    db: &engarde::kit::db::DbPool,
    agents: std::sync::Arc<dyn storage::AgentRepository>,
    langflow: Option<std::sync::Arc<LangflowClient>>,
    workflows: WorkflowClient,
) -> (Executor, FinishCommitter) {
    let executions = storage::execution_repository(db);
    let finishes = FinishCommitter::start(executions.clone(), config.finish_batch_max as usize);
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let executor = Executor::new(
        agents,
        executions.clone(),
        finishes.clone(),
        langflow,
        wake.clone(),
        config.common.rpc_timeout(),
        config.memory,
    )
    .with_running_row_after(Duration::from_millis(config.execution_running_row_after_ms));
    janitor::spawn(executor.clone(), config.execution_stale_after());
    Reporter {
        executions,
        workflows,
        wake,
        interval: config.report_interval(),
        batch_delay: config.report_batch_delay(),
        lease: Reporter::lease_for(config.workflow_call_timeout()),
        batches: Default::default(),
    }
    .spawn();
    (executor, finishes)
}

/// The mark of this deployment's flows: LANGFLOW_DEPLOYMENT_ID, or the id stored in its database.
async fn deployment_id(config: &Config, db: &engarde::kit::db::DbPool) -> anyhow::Result<DeploymentId> {
    let (id, source) = match config.langflow_deployment_id.as_deref().filter(|id| !id.is_empty()) {
        Some(id) => (id.to_owned(), "LANGFLOW_DEPLOYMENT_ID"),
        None => (storage::deployment::stored_deployment_id(db).await?, "database"),
    };
    let deployment = DeploymentId::parse(&id).map_err(|e| anyhow::anyhow!("LANGFLOW_DEPLOYMENT_ID: {e}"))?;
    tracing::info!(deployment = %deployment, source, "deployment identity (the mark on the Langflow flows it makes)");
    Ok(deployment)
}

/// Refuses, at start-up rather than at the first call, a LANGFLOW_URL this build cannot call.
fn check_langflow_url(url: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).map_err(|e| anyhow::anyhow!("LANGFLOW_URL {url:?} is not a URL: {e}"))?;
    match parsed.scheme() {
        "http" | "https" if parsed.host().is_some() => Ok(()),
        _ => anyhow::bail!("LANGFLOW_URL {url:?} must be http://host:port or https://host[:port]"),
    }
}

/// The Langflow client, when one is configured. Its version is read and logged; a Langflow that
/// does not answer yet is not fatal (calls that need it answer UNAVAILABLE until it does).
async fn connect_langflow(config: &Config) -> anyhow::Result<Option<std::sync::Arc<LangflowClient>>> {
    let Some(settings) = config.langflow() else {
        tracing::warn!("no LANGFLOW_URL: agents get no flows and cannot execute");
        return Ok(None);
    };
    check_langflow_url(&settings.base_url)?;
    let client = LangflowClient::new(settings)?;
    match client.version().await {
        Ok(version) => tracing::info!(langflow = client.base_url(), version, "Langflow reachable"),
        Err(e) => tracing::warn!(langflow = client.base_url(), error = %e, "Langflow not reachable yet"),
    }
    Ok(Some(std::sync::Arc::new(client)))
}

#[cfg(test)]
mod tests {
    use super::check_langflow_url;

    #[test]
    fn langflow_urls_this_build_can_call() {
        assert!(check_langflow_url("http://langflow:7860").is_ok());
        assert!(check_langflow_url("http://127.0.0.1:7860/").is_ok());
        assert!(check_langflow_url("https://langflow.example.com").is_ok());
        for bad in ["langflow:7860", "ftp://langflow", "not a url", "http://", "https://"] {
            assert!(check_langflow_url(bad).is_err(), "{bad}");
        }
    }
}
