//! The baseline: a bare tonic server implementing `WorkflowService` that answers every call
//! from memory with the message the real service answered (no database, no auth, no logging, no
//! limits), plus the health service. It runs on a Tokio runtime of its own, with as many workers
//! as the real services get, so that it does not share the load generator's scheduler.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use engarde::proto::workflow::v1 as pb;
use pb::workflow_service_server::{WorkflowService, WorkflowServiceServer};
use tonic::{Request, Response, Status};

/// The name of the in-process bare server's threads (its CPU time is told apart by it).
pub const THREAD_NAME: &str = "bare-server";

/// The answers the bare server gives.
#[derive(Clone, Default)]
pub struct BareWorkflows {
    workflow: Arc<pb::WorkflowDefinition>,
    list: Arc<pb::ListWorkflowsResponse>,
}

impl BareWorkflows {
    pub fn new(workflow: pb::WorkflowDefinition, list: pb::ListWorkflowsResponse) -> Self {
        Self { workflow: Arc::new(workflow), list: Arc::new(list) }
    }

    fn workflow(&self) -> Result<Response<pb::WorkflowDefinition>, Status> {
        Ok(Response::new((*self.workflow).clone()))
    }
}

#[tonic::async_trait]
impl WorkflowService for BareWorkflows {
    async fn create_workflow(
        &self,
        _: Request<pb::CreateWorkflowRequest>,
    ) -> Result<Response<pb::WorkflowDefinition>, Status> {
        self.workflow()
    }

    async fn get_workflow(
        &self,
        _: Request<pb::GetWorkflowRequest>,
    ) -> Result<Response<pb::WorkflowDefinition>, Status> {
        self.workflow()
    }

    async fn list_workflows(
        &self,
        _: Request<pb::ListWorkflowsRequest>,
    ) -> Result<Response<pb::ListWorkflowsResponse>, Status> {
        Ok(Response::new((*self.list).clone()))
    }

    async fn update_workflow(
        &self,
        _: Request<pb::UpdateWorkflowRequest>,
    ) -> Result<Response<pb::WorkflowDefinition>, Status> {
        self.workflow()
    }

    async fn delete_workflow(
        &self,
        _: Request<pb::DeleteWorkflowRequest>,
    ) -> Result<Response<pb::DeleteWorkflowResponse>, Status> {
        Ok(Response::new(pb::DeleteWorkflowResponse { id: self.workflow.id.clone() }))
    }

    async fn activate_workflow(
        &self,
        _: Request<pb::ActivateWorkflowRequest>,
    ) -> Result<Response<pb::WorkflowDefinition>, Status> {
        self.workflow()
    }

    async fn archive_workflow(
        &self,
        _: Request<pb::ArchiveWorkflowRequest>,
    ) -> Result<Response<pb::WorkflowDefinition>, Status> {
        self.workflow()
    }

    async fn clone_workflow(
        &self,
        _: Request<pb::CloneWorkflowRequest>,
    ) -> Result<Response<pb::WorkflowDefinition>, Status> {
        self.workflow()
    }

    async fn validate_workflow_config(
        &self,
        _: Request<pb::ValidateWorkflowConfigRequest>,
    ) -> Result<Response<pb::ValidateWorkflowConfigResponse>, Status> {
        Ok(Response::new(pb::ValidateWorkflowConfigResponse { valid: true, ..Default::default() }))
    }

    async fn record_execution(
        &self,
        _: Request<pb::RecordExecutionRequest>,
    ) -> Result<Response<pb::RecordExecutionResponse>, Status> {
        Ok(Response::new(pb::RecordExecutionResponse {
            counted: true,
            execution_count: self.workflow.execution_count + 1,
            success_rate: 1.0,
        }))
    }

    async fn record_executions(
        &self,
        request: Request<pb::RecordExecutionsRequest>,
    ) -> Result<Response<pb::RecordExecutionsResponse>, Status> {
        let recorded = pb::RecordExecutionResponse {
            counted: true,
            execution_count: self.workflow.execution_count + 1,
            success_rate: 1.0,
        };
        let result =
            pb::RecordExecutionResult { result: Some(pb::record_execution_result::Result::Recorded(recorded)) };
        Ok(Response::new(pb::RecordExecutionsResponse { results: vec![result; request.into_inner().executions.len()] }))
    }

    async fn import_workflows(
        &self,
        _: Request<pb::ImportWorkflowsRequest>,
    ) -> Result<Response<pb::ImportWorkflowsResponse>, Status> {
        Err(Status::failed_precondition("import is not enabled"))
    }
}

/// Serves `service` (and health, SERVING for the workflow service's name) on `listener` until
/// the process ends.
pub async fn serve(service: BareWorkflows, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<WorkflowServiceServer<BareWorkflows>>().await;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(WorkflowServiceServer::new(service))
        .serve_with_incoming(incoming)
        .await
        .context("bare server")
}

/// Starts the bare server on its own `workers`-thread runtime in this process; answers its address.
/// The thread lives as long as the process.
pub fn spawn_in_process(service: BareWorkflows, workers: usize) -> anyhow::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the bare server")?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .thread_name(THREAD_NAME)
        .enable_all()
        .build()
        .context("the bare server's runtime")?;
    std::thread::Builder::new().name(THREAD_NAME.into()).spawn(move || {
        runtime.block_on(async move {
            let result = match tokio::net::TcpListener::from_std(std_listener) {
                Ok(listener) => serve(service, listener).await,
                Err(e) => Err(e.into()),
            };
            if let Err(e) = result {
                eprintln!("bare server stopped: {e:#}");
            }
        });
    })?;
    Ok(addr)
}

/// `engarde-bench --serve-bare`: the bare server as a process of its own (for the memory and
/// start-up baselines), on `LISTEN_ADDR`, announcing itself like the services do.
pub async fn serve_as_process() -> anyhow::Result<()> {
    let listen = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:0".into());
    let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("binding {listen}"))?;
    println!("bare listening on {}", listener.local_addr()?);
    let workflow = pb::WorkflowDefinition {
        id: "00000000-0000-0000-0000-000000000000".into(),
        name: "bare".into(),
        ..Default::default()
    };
    serve(
        BareWorkflows::new(
            workflow.clone(),
            pb::ListWorkflowsResponse { workflows: vec![workflow], ..Default::default() },
        ),
        listener,
    )
    .await
}
