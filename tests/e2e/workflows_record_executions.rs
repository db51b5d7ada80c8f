//! RecordExecutions: agent-service's outbox reports many executions in one call, as its own
//! service identity; each entry is recorded as RecordExecution would, answered in order. To a
//! workflow-service of a release before it, the outbox reports one by one.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use engarde::proto::workflow::v1 as pb;
use engarde::proto::workflow::v1::workflow_service_client::WorkflowServiceClient;
use engarde::proto::workflow::v1::workflow_service_server::{WorkflowService, WorkflowServiceServer};
use pb::record_execution_result::Result as Outcome;
use tonic::{Code, Request, Response, Status};

use crate::both_backends;
use crate::helpers::*;
use crate::service_identity::{TENANT_SECRET, signed, tenant_token};
use crate::workflows_crud::create_request;

fn report(workflow_id: &str, execution_id: &str, succeeded: bool) -> pb::RecordExecutionRequest {
    pb::RecordExecutionRequest { workflow_id: workflow_id.into(), execution_id: execution_id.into(), succeeded }
}

fn batch(executions: Vec<pb::RecordExecutionRequest>) -> pb::RecordExecutionsRequest {
    pb::RecordExecutionsRequest { executions }
}

/// An entry's answer: (counted, execution_count, success_rate), or the error's code.
fn outcome(result: &pb::RecordExecutionResult) -> Result<(bool, i64, f64), Code> {
    match &result.result {
        Some(Outcome::Recorded(r)) => Ok((r.counted, r.execution_count, r.success_rate)),
        Some(Outcome::Error(e)) => Err(Code::from_i32(e.code)),
        None => panic!("an entry without a result"),
    }
}

both_backends!(
    async fn a_batch_of_reports_is_counted_exactly_and_only_for_the_service(backend) {
        let auth_env = [("AUTH_MODE", "jwt".to_owned()), ("JWT_HS256_SECRET", TENANT_SECRET.to_owned())];
        let db = TestDb::new(backend).await;
        let service_process = spawn_workflow_service(&db, &auth_env).await;
        let mut client = WorkflowServiceClient::new(service_process.channel().await);
        let service = service_bearer("agent-service", SERVICE_SECRET);
        let (alice, bob) = (tenant_token("tenant-a", 600), tenant_token("tenant-b", 600));
        let own = client.create_workflow(signed(create_request("Alice's own"), &alice, None)).await.unwrap().into_inner();
        let bobs = client.create_workflow(signed(create_request("Bob's"), &bob, None)).await.unwrap().into_inner();
        let unknown = uuid::Uuid::now_v7().to_string();
        let as_service = |request: pb::RecordExecutionsRequest| signed(request, &service, Some("tenant-a"));

        // Nothing: nothing to answer.
        let empty = client.record_executions(as_service(batch(vec![]))).await.unwrap().into_inner();
        assert!(empty.results.is_empty());

        // Each entry answered in order: counted, a duplicate within the batch, a workflow the
        // tenant cannot read (unknown, or another tenant's) NOT_FOUND; the rest still counted.
        let first = client
            .record_executions(as_service(batch(vec![
                report(&own.id, "e-1", true),
                report(&own.id, "e-2", false),
                report(&unknown, "e-3", true),
                report(&own.id, "e-1", true),
                report(&bobs.id, "e-4", true),
                report(&own.id, "e-5", true),
            ])))
            .await
            .expect("the service records a batch")
            .into_inner();
        let answered: Vec<_> = first.results.iter().map(outcome).collect();
        let after = (3, 2.0 / 3.0);
        assert_eq!(
            answered,
            vec![
                Ok((true, after.0, after.1)),
                Ok((true, after.0, after.1)),
                Err(Code::NotFound),
                Ok((false, after.0, after.1)),
                Err(Code::NotFound),
                Ok((true, after.0, after.1)),
            ]
        );
        // A later batch: a repeat is not counted again; an execution recorded for another
        // workflow is ALREADY_EXISTS.
        let other = client.create_workflow(signed(create_request("Other"), &alice, None)).await.unwrap().into_inner();
        let second = client
            .record_executions(as_service(batch(vec![
                report(&own.id, "e-2", false),
                report(&other.id, "e-1", true),
                report(&other.id, "e-6", false),
            ])))
            .await
            .unwrap()
            .into_inner();
        let answered: Vec<_> = second.results.iter().map(outcome).collect();
        assert_eq!(answered, vec![Ok((false, 3, 2.0 / 3.0)), Err(Code::AlreadyExists), Ok((true, 1, 0.0))]);
        let message = match &second.results[1].result {
            Some(Outcome::Error(e)) => e.message.clone(),
            other => panic!("{other:?}"),
        };
        assert!(message.contains("e-1"), "{message}");

        // The statistics are exact, as each tenant reads them.
        let read = |id: &str, who: &str| signed(pb::GetWorkflowRequest { id: id.into() }, who, None);
        let own_read = client.get_workflow(read(&own.id, &alice)).await.unwrap().into_inner();
        assert_eq!((own_read.execution_count, own_read.success_count), (3, 2));
        let other_read = client.get_workflow(read(&other.id, &alice)).await.unwrap().into_inner();
        assert_eq!((other_read.execution_count, other_read.success_count), (1, 0));
        let bobs_read = client.get_workflow(read(&bobs.id, &bob)).await.unwrap().into_inner();
        assert_eq!(bobs_read.execution_count, 0, "nothing counted on another tenant's workflow");

        // A tenant's token may not call it, and nothing is counted.
        let status = expect_code(
            client.record_executions(signed(batch(vec![report(&own.id, "forged-1", true)]), &alice, None)).await,
            Code::PermissionDenied,
        );
        assert!(status.message().contains("service"), "{}", status.message());
        assert_eq!(client.get_workflow(read(&own.id, &alice)).await.unwrap().into_inner().execution_count, 3);

        // More than 500 entries: INVALID_ARGUMENT naming the list, and nothing is counted.
        let many = (0..501).map(|n| report(&own.id, &format!("many-{n}"), true)).collect();
        let status = expect_code(client.record_executions(as_service(batch(many))).await, Code::InvalidArgument);
        assert_eq!(field_violations(&status)[0].0, "executions", "{status:?}");
        // A malformed entry is named by its index, and the batch records nothing.
        let status = expect_code(
            client
                .record_executions(as_service(batch(vec![
                    report(&own.id, "fine-1", true),
                    report("not-a-uuid", "fine-2", true),
                    report(&own.id, "", true),
                ])))
                .await,
            Code::InvalidArgument,
        );
        let fields: Vec<String> = field_violations(&status).into_iter().map(|(field, _)| field).collect();
        assert_eq!(fields, ["executions[1].workflow_id", "executions[2].execution_id"]);
        assert_eq!(client.get_workflow(read(&own.id, &alice)).await.unwrap().into_inner().execution_count, 3);
    }
);

/// workflow-service behind a proxy that counts agent-service's reports, and, as a release before
/// RecordExecutions would, may answer it UNIMPLEMENTED.
#[derive(Clone)]
struct ReportCounter {
    inner: WorkflowServiceClient<tonic::transport::Channel>,
    knows_batches: bool,
    batch_calls: Arc<AtomicUsize>,
    single_calls: Arc<AtomicUsize>,
}

impl ReportCounter {
    /// Serves on 127.0.0.1:0 in front of `upstream`; answers the proxy and its URL.
    async fn start(upstream: &ServiceProcess, knows_batches: bool) -> (Self, String) {
        let proxy = Self {
            inner: WorkflowServiceClient::new(upstream.channel().await),
            knows_batches,
            batch_calls: Arc::default(),
            single_calls: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tonic::transport::Server::builder()
            .add_service(WorkflowServiceServer::new(proxy.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
        tokio::spawn(server);
        (proxy, url)
    }

    fn calls(&self) -> (usize, usize) {
        (self.batch_calls.load(Ordering::SeqCst), self.single_calls.load(Ordering::SeqCst))
    }
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl WorkflowService for ReportCounter {
    async fn create_workflow(&self, r: Request<pb::CreateWorkflowRequest>) -> Answer<pb::WorkflowDefinition> {
        self.inner.clone().create_workflow(r).await
    }
    async fn get_workflow(&self, r: Request<pb::GetWorkflowRequest>) -> Answer<pb::WorkflowDefinition> {
        self.inner.clone().get_workflow(r).await
    }
    async fn list_workflows(&self, r: Request<pb::ListWorkflowsRequest>) -> Answer<pb::ListWorkflowsResponse> {
        self.inner.clone().list_workflows(r).await
    }
    async fn update_workflow(&self, r: Request<pb::UpdateWorkflowRequest>) -> Answer<pb::WorkflowDefinition> {
        self.inner.clone().update_workflow(r).await
    }
    async fn delete_workflow(&self, r: Request<pb::DeleteWorkflowRequest>) -> Answer<pb::DeleteWorkflowResponse> {
        self.inner.clone().delete_workflow(r).await
    }
    async fn activate_workflow(&self, r: Request<pb::ActivateWorkflowRequest>) -> Answer<pb::WorkflowDefinition> {
        self.inner.clone().activate_workflow(r).await
    }
    async fn archive_workflow(&self, r: Request<pb::ArchiveWorkflowRequest>) -> Answer<pb::WorkflowDefinition> {
        self.inner.clone().archive_workflow(r).await
    }
    async fn clone_workflow(&self, r: Request<pb::CloneWorkflowRequest>) -> Answer<pb::WorkflowDefinition> {
        self.inner.clone().clone_workflow(r).await
    }
    async fn validate_workflow_config(
        &self,
        r: Request<pb::ValidateWorkflowConfigRequest>,
    ) -> Answer<pb::ValidateWorkflowConfigResponse> {
        self.inner.clone().validate_workflow_config(r).await
    }
    async fn record_execution(&self, r: Request<pb::RecordExecutionRequest>) -> Answer<pb::RecordExecutionResponse> {
        self.single_calls.fetch_add(1, Ordering::SeqCst);
        self.inner.clone().record_execution(r).await
    }
    async fn record_executions(&self, r: Request<pb::RecordExecutionsRequest>) -> Answer<pb::RecordExecutionsResponse> {
        self.batch_calls.fetch_add(1, Ordering::SeqCst);
        if !self.knows_batches {
            return Err(Status::unimplemented("unknown method RecordExecutions"));
        }
        self.inner.clone().record_executions(r).await
    }
    async fn import_workflows(&self, r: Request<pb::ImportWorkflowsRequest>) -> Answer<pb::ImportWorkflowsResponse> {
        self.inner.clone().import_workflows(r).await
    }
}

/// agent-service's outbox sends its reports in RecordExecutions calls; to a workflow-service of
/// a release before them (UNIMPLEMENTED) it sends them one by one, says so once, and keeps to
/// that (for minutes) rather than trying the batch with every delivery. Counted exactly either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_reports_in_batches_and_one_by_one_to_an_older_workflow_service() {
    use crate::agents_execution::{active_agent, run_agent, workflow_counts_reach};
    use crate::langflow_support::FakeLangflow;
    use engarde::proto::agent::v1 as apb;

    let fake = FakeLangflow::start().await;
    for knows_batches in [true, false] {
        let workflow_db = TestDb::new(Backend::Sqlite).await;
        let agent_db = TestDb::new(Backend::Sqlite).await;
        let workflow = spawn_workflow_service(&workflow_db, &[]).await;
        let (proxy, proxy_url) = ReportCounter::start(&workflow, knows_batches).await;
        let env = [("LANGFLOW_URL", fake.url()), ("REPORT_INTERVAL_MS", "200".to_owned())];
        let agent = spawn_agent_service(&agent_db, &proxy_url, &env).await;
        let app = TestApp { workflow, agent, workflow_db, agent_db };
        let (definition, agent) = active_agent(&app, "tenant-a").await;
        let mut executions = app.executions("tenant-a").await;
        for n in 1..=4 {
            let execution = run_agent(&mut executions, &agent.id, &format!("topic {n}"), "").await;
            assert_eq!(execution.status, apb::ExecutionStatus::Succeeded as i32);
            workflow_counts_reach(&app, "tenant-a", &definition.id, (n, n)).await;
        }
        let (batches, singles) = proxy.calls();
        let announced = app.agent.logs().matches("does not know RecordExecutions").count();
        if knows_batches {
            assert_eq!((batches, singles, announced), (4, 0, 0), "every report in a batch");
        } else {
            assert_eq!((batches, singles, announced), (1, 4, 1), "one batch tried, then one by one, said once");
        }
    }
}
