//! Traces exported over OTLP/gRPC: an OTLP receiver runs here on loopback, both services export
//! to it, and one caller's trace is followed through agent-service, workflow-service, their
//! databases and Langflow (the in-process FakeLangflow: the spans are agent-service's own).
//! Without an endpoint, no exporter runs at all.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use engarde::proto::agent::v1 as pb;
use engarde::proto::agent::v1::agent_service_client::AgentServiceClient;
use engarde::proto::agent::v1::execution_service_client::ExecutionServiceClient;
use engarde::proto::workflow::v1::workflow_service_client::WorkflowServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

use crate::both_backends;
use crate::helpers::*;
use crate::langflow_support::FakeLangflow;
use crate::workflows_crud::create_request;

/// One exported span, with the `service.name` of the process that sent it.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    /// Empty for a root span.
    parent_span_id: String,
    attributes: Vec<KeyValue>,
}

impl Exported {
    fn attribute(&self, key: &str) -> Option<String> {
        attribute(&self.attributes, key)
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()?;
    Some(match value {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::IntValue(i) => i.to_string(),
        any_value::Value::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/gRPC trace receiver on 127.0.0.1, keeping every span it is sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Exported>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut kept = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| attribute(&r.attributes, "service.name"))
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                kept.push(Exported {
                    service: service.clone(),
                    name: span.name,
                    kind: span.kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span.attributes,
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Receiver {
    /// Serves on 127.0.0.1:0 for as long as the test runs; answers the receiver and its URL.
    async fn start() -> (Self, String) {
        let receiver = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
        tokio::spawn(server);
        (receiver, url)
    }

    fn spans(&self) -> Vec<Exported> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until a span named `name` of `trace_id` has arrived, and answers it.
    async fn span(&self, trace_id: &str, name: &str) -> Exported {
        self.span_where(&format!("span {name} of trace {trace_id}"), |s| s.trace_id == trace_id && s.name == name).await
    }

    /// Waits until a span of `trace_id` named `name` and of `kind` has arrived: the client and
    /// server spans of one call share a name but come from two processes, each exporting in its
    /// own batches, so either may arrive first.
    async fn span_of_kind(&self, trace_id: &str, name: &str, kind: SpanKind) -> Exported {
        self.span_where(&format!("{kind:?} span {name} of trace {trace_id}"), |s| {
            s.trace_id == trace_id && s.name == name && s.kind == kind as i32
        })
        .await
    }

    async fn span_where(&self, what: &str, matches: impl Fn(&Exported) -> bool) -> Exported {
        let find = || self.spans().into_iter().find(|s| matches(s));
        eventually(Duration::from_secs(15), what, || async { find().is_some() }).await;
        find().unwrap()
    }
}

/// The settings that point a service at the receiver, exporting every 100 ms.
fn exporting_to(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", url.to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ("LOG_FORMAT", "json".into()),
    ]
}

fn traced<T>(message: T, traceparent: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("x-tenant-id", "t-trace".parse().unwrap());
    request.metadata_mut().insert("traceparent", traceparent.parse().unwrap());
    request
}

fn untraced<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("x-tenant-id", "t-trace".parse().unwrap());
    request
}

/// The trace id of the access line of `rpc` in a JSON log.
fn logged_trace_ids(logs: &str, rpc: &str) -> Vec<String> {
    logs.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["message"] == "rpc" && line["rpc"].as_str().is_some_and(|r| r.ends_with(rpc)))
        .filter_map(|line| line["trace_id"].as_str().map(str::to_owned))
        .collect()
}

fn assert_rpc_span(span: &Exported, service: &str, method: &str, kind: SpanKind) {
    assert_eq!(span.kind, kind as i32, "{span:?}");
    assert_eq!(span.attribute("rpc.system").as_deref(), Some("grpc"), "{span:?}");
    assert_eq!(span.attribute("rpc.service").as_deref(), Some(service), "{span:?}");
    assert_eq!(span.attribute("rpc.method").as_deref(), Some(method), "{span:?}");
    assert_eq!(span.attribute("rpc.grpc.status_code").as_deref(), Some("0"), "{span:?}");
}

both_backends!(
    async fn one_callers_trace_crosses_both_services_their_databases_and_langflow(backend) {
        let (receiver, otlp) = Receiver::start().await;
        let fake = FakeLangflow::start().await;
        let (workflow_db, agent_db) = (TestDb::new(backend).await, TestDb::new(backend).await);
        let workflow = spawn_workflow_service(&workflow_db, &exporting_to(&otlp)).await;
        let mut agent_env = exporting_to(&otlp);
        agent_env.push(("LANGFLOW_URL", fake.url()));
        agent_env.push(("OTEL_SERVICE_NAME", "agents-under-test".into()));
        // The RUNNING row written at once, so that its write is in the trace too (a short run
        // is otherwise stored by its finish alone).
        agent_env.push(("EXECUTION_RUNNING_ROW_AFTER_MS", "0".into()));
        let agent = spawn_agent_service(&agent_db, &workflow.url(), &agent_env).await;
        let mut workflows = WorkflowServiceClient::new(workflow.channel().await);
        let mut agents = AgentServiceClient::new(agent.channel().await);
        let mut executions = ExecutionServiceClient::new(agent.channel().await);
        let db_system = match backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgresql",
        };

        // The caller's trace: its two calls are children of its spans 0…1 and 0…2.
        let trace_id = format!("{:032x}", 0x5eed_0000_0000_0000_0000_0000_0000_0001_u128);
        let caller = |span: u64| format!("00-{trace_id}-{span:016x}-01");
        let workflow_id = workflows.create_workflow(untraced(create_request("Traced"))).await.unwrap().into_inner().id;
        let made = agents
            .create_agent_from_workflow(traced(
                pb::CreateAgentFromWorkflowRequest { workflow_id, ..Default::default() },
                &caller(1),
            ))
            .await
            .unwrap()
            .into_inner();
        agents.deploy_agent(untraced(pb::DeployAgentRequest { id: made.id.clone(), ..Default::default() })).await.unwrap();
        agents
            .activate_agent(untraced(pb::ActivateAgentRequest { id: made.id.clone(), ..Default::default() }))
            .await
            .unwrap();
        let executed = executions
            .execute_agent(traced(
                pb::ExecuteAgentRequest { agent_id: made.id.clone(), input: "tea".into(), ..Default::default() },
                &caller(2),
            ))
            .await
            .unwrap()
            .into_inner()
            .execution
            .unwrap();
        assert_eq!(executed.status, pb::ExecutionStatus::Succeeded as i32);

        // CreateAgentFromWorkflow: agent-service's server span, child of the caller's span …
        let create = receiver.span(&trace_id, "engarde.agent.v1.AgentService/CreateAgentFromWorkflow").await;
        assert_eq!(create.service, "agents-under-test");
        assert_eq!(create.parent_span_id, format!("{:016x}", 1));
        assert_rpc_span(&create, "engarde.agent.v1.AgentService", "CreateAgentFromWorkflow", SpanKind::Server);
        assert_eq!(create.attribute("engarde.tenant_id").as_deref(), Some("t-trace"));
        // … its client span to workflow-service …
        let get_workflow = "engarde.workflow.v1.WorkflowService/GetWorkflow";
        let client = receiver.span_of_kind(&trace_id, get_workflow, SpanKind::Client).await;
        assert_eq!(client.service, "agents-under-test");
        assert_eq!(client.parent_span_id, create.span_id);
        assert_rpc_span(&client, "engarde.workflow.v1.WorkflowService", "GetWorkflow", SpanKind::Client);
        // … workflow-service's server span, whose parent is that client span, and its read.
        let server = receiver.span_of_kind(&trace_id, get_workflow, SpanKind::Server).await;
        assert_eq!(server.service, "workflow-service");
        assert_eq!(server.parent_span_id, client.span_id);
        assert_rpc_span(&server, "engarde.workflow.v1.WorkflowService", "GetWorkflow", SpanKind::Server);
        let select = receiver.span(&trace_id, "workflows.get").await;
        assert_eq!((select.service.as_str(), select.parent_span_id.as_str()), ("workflow-service", server.span_id.as_str()));
        assert_eq!(select.attribute("db.system").as_deref(), Some(db_system));
        // The flow made in Langflow for the agent, a client span of the same call.
        let flow = receiver.span(&trace_id, "POST create flow").await;
        assert_eq!(flow.parent_span_id, create.span_id);
        assert_eq!(flow.attribute("url.path").as_deref(), Some("/api/v1/flows/"));

        // ExecuteAgent, in the same trace: its server span, its database work and the run in
        // Langflow (made in a task of its own, still in the caller's trace).
        let execute = receiver.span(&trace_id, "engarde.agent.v1.ExecutionService/ExecuteAgent").await;
        assert_eq!(execute.parent_span_id, format!("{:016x}", 2));
        assert_rpc_span(&execute, "engarde.agent.v1.ExecutionService", "ExecuteAgent", SpanKind::Server);
        let run = receiver.span(&trace_id, "POST run flow").await;
        assert_eq!(run.kind, SpanKind::Client as i32);
        assert_eq!(run.parent_span_id, execute.span_id);
        assert_eq!(run.attribute("http.request.method").as_deref(), Some("POST"));
        assert_eq!(run.attribute("url.path"), Some(format!("/api/v1/run/{}", made.langflow_workflow_id)));
        assert_eq!(run.attribute("http.response.status_code").as_deref(), Some("200"));
        for operation in ["agents.get", "executions.start", "executions.finish"] {
            let span = receiver.span(&trace_id, operation).await;
            assert_eq!(span.parent_span_id, execute.span_id, "{span:?}");
            assert_eq!(span.kind, SpanKind::Client as i32, "{span:?}");
            assert_eq!(span.attribute("db.system").as_deref(), Some(db_system), "{span:?}");
            assert_eq!(span.attribute("db.operation.name").as_deref(), Some(operation), "{span:?}");
        }

        // The log lines carry the exported trace ids: the caller's, and the one a call without a
        // traceparent started (its server span is a root).
        eventually(Duration::from_secs(10), "ExecuteAgent's log line", || async {
            logged_trace_ids(&agent.logs(), "/ExecuteAgent") == [trace_id.clone()]
        })
        .await;
        // workflow-service's lines are written by its own log writer: wait for them too.
        eventually(Duration::from_secs(10), "GetWorkflow's log line", || async {
            logged_trace_ids(&workflow.logs(), "/GetWorkflow") == [trace_id.clone()]
        })
        .await;
        let deploy_logged = logged_trace_ids(&agent.logs(), "/DeployAgent");
        assert_eq!(deploy_logged.len(), 1, "{deploy_logged:?}");
        let deploy = receiver.span(&deploy_logged[0], "engarde.agent.v1.AgentService/DeployAgent").await;
        assert_eq!(deploy.parent_span_id, "", "a call without traceparent starts a trace");
        assert_ne!(deploy.trace_id, trace_id);
    }
);

/// The threads of process `pid`, by name.
fn thread_names(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the process's threads")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_no_exporter_runs_and_with_one_spans_are_flushed_at_sigterm() {
    let (receiver, otlp) = Receiver::start().await;
    let db = TestDb::new(Backend::Sqlite).await;
    // The SDK's batch thread ("OpenTelemetry.Traces.BatchProcessor", cut to 15 characters).
    let exporter_thread = "OpenTelemetry.T";

    let plain = spawn_workflow_service(&db, &[("LOG_FORMAT", "json".into())]).await;
    let mut client = WorkflowServiceClient::new(plain.channel().await);
    client.list_workflows(untraced(Default::default())).await.unwrap();
    assert!(!thread_names(plain.pid()).iter().any(|t| t == exporter_thread), "{:?}", thread_names(plain.pid()));
    assert!(!plain.logs().contains("exporting traces"), "{}", plain.logs());
    drop(plain);

    // With an endpoint and a long batch delay, a span still waiting is exported at SIGTERM.
    let mut env = exporting_to(&otlp);
    env.push(("OTEL_BSP_SCHEDULE_DELAY", "60000".into()));
    let mut exporting = spawn_workflow_service(&db, &env).await;
    assert!(thread_names(exporting.pid()).iter().any(|t| t == exporter_thread), "{:?}", thread_names(exporting.pid()));
    let mut client = WorkflowServiceClient::new(exporting.channel().await);
    client.list_workflows(untraced(Default::default())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.spans().is_empty(), "nothing is exported before the batch delay: {:?}", receiver.spans());
    exporting.sigterm();
    assert!(exporting.wait_exit(Duration::from_secs(30)).await.is_some_and(|s| s.success()));
    let listed = logged_trace_ids(&exporting.logs(), "/ListWorkflows");
    assert_eq!(listed.len(), 1, "{}", exporting.logs());
    let span = receiver.span(&listed[0], "engarde.workflow.v1.WorkflowService/ListWorkflows").await;
    assert_eq!(span.service, "workflow-service");
    assert!(receiver.spans().iter().all(|s| s.service == "workflow-service"), "only the second process exported");
}
