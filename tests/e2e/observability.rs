//! What operators watch: Prometheus metrics on their own port, and one trace id followed from
//! agent-service to workflow-service in the JSON logs.

use std::time::Duration;

use engarde::proto::agent::v1 as pb;
use engarde::proto::workflow::v1 as wpb;

use crate::helpers::*;

fn with_trace<T>(message: T, tenant: &str, traceparent: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("x-tenant-id", tenant.parse().unwrap());
    request.metadata_mut().insert("traceparent", traceparent.parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_by_method_and_code_and_traces_cross_services() {
    let (workflow_metrics, agent_metrics) = (free_port(), free_port());
    let workflow_db = TestDb::new(Backend::Sqlite).await;
    let agent_db = TestDb::new(Backend::Sqlite).await;
    let workflow = spawn_workflow_service(
        &workflow_db,
        &[("METRICS_ADDR", format!("127.0.0.1:{workflow_metrics}")), ("LOG_FORMAT", "json".into())],
    )
    .await;
    let agent = spawn_agent_service(
        &agent_db,
        &workflow.url(),
        &[("METRICS_ADDR", format!("127.0.0.1:{agent_metrics}")), ("LOG_FORMAT", "json".into())],
    )
    .await;

    let mut workflows =
        engarde::proto::workflow::v1::workflow_service_client::WorkflowServiceClient::new(workflow.channel().await);
    let mut agents = engarde::proto::agent::v1::agent_service_client::AgentServiceClient::new(agent.channel().await);
    let listed = workflows
        .list_workflows(with_trace(
            wpb::ListWorkflowsRequest { page_size: 1, ..Default::default() },
            "t-obs",
            &trace(1),
        ))
        .await
        .unwrap()
        .into_inner();
    let bad =
        workflows.get_workflow(with_trace(wpb::GetWorkflowRequest { id: "nope".into() }, "t-obs", &trace(2))).await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);
    agents
        .create_agent_from_workflow(with_trace(
            pb::CreateAgentFromWorkflowRequest { workflow_id: listed.workflows[0].id.clone(), ..Default::default() },
            "t-obs",
            &trace(3),
        ))
        .await
        .unwrap();

    let body = scrape(workflow_metrics).await;
    let line = |method: &str, code: &str| {
        format!(
            "grpc_server_requests_total{{method=\"/engarde.workflow.v1.WorkflowService/{method}\",code=\"{code}\"}}"
        )
    };
    for (method, code) in [("ListWorkflows", "Ok"), ("GetWorkflow", "InvalidArgument"), ("GetWorkflow", "Ok")] {
        assert!(body.contains(&line(method, code)), "{} in:\n{body}", line(method, code));
    }
    assert!(body.contains("grpc_server_request_duration_seconds_bucket"), "{body}");
    assert!(body.contains("db_pool_connections{state=\"idle\"}"), "{body}");
    let body = scrape(agent_metrics).await;
    assert!(body.contains("/engarde.agent.v1.AgentService/CreateAgentFromWorkflow\",code=\"Ok\""), "{body}");
    assert!(body.contains("walker_reviews_pending"), "run and review gauges: {body}");
    assert!(body.contains("walker_runs{status=\"succeeded\"}"), "{body}");

    // The trace id the caller sent is in agent-service's log line and in workflow-service's
    // line for the GetWorkflow agent-service made on its behalf.
    let trace_id = format!("{:032x}", 3);
    let find = |logs: &str, rpc: &str| {
        logs.lines().any(|l| l.contains(&format!("\"trace_id\":\"{trace_id}\"")) && l.contains(rpc))
    };
    // Lines are written by a thread of their own, a moment after the call.
    eventually(Duration::from_secs(10), "the trace id in both services' logs", || async {
        find(&agent.logs(), "CreateAgentFromWorkflow") && find(&workflow.logs(), "WorkflowService/GetWorkflow")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_calls_log_line_is_written_and_none_is_dropped_under_load() {
    let metrics_port = free_port();
    let db = TestDb::new(Backend::Sqlite).await;
    let workflow = spawn_workflow_service(
        &db,
        &[
            ("METRICS_ADDR", format!("127.0.0.1:{metrics_port}")),
            ("LOG_FORMAT", "json".into()),
            ("LOG_BUFFER_LINES", "4096".into()),
        ],
    )
    .await;
    let channel = workflow.channel().await;
    let id = engarde::proto::workflow::v1::workflow_service_client::WorkflowServiceClient::new(channel.clone())
        .list_workflows(with_trace(
            wpb::ListWorkflowsRequest { page_size: 1, ..Default::default() },
            "t-log",
            &trace(9),
        ))
        .await
        .unwrap()
        .into_inner()
        .workflows[0]
        .id
        .clone();
    // 2,000 calls, 32 at a time: the lines arrive faster than one call at a time would write them.
    let calls: Vec<_> = (0..32)
        .map(|_| {
            let mut client =
                engarde::proto::workflow::v1::workflow_service_client::WorkflowServiceClient::new(channel.clone());
            let id = id.clone();
            tokio::spawn(async move {
                for _ in 0..(2_000 / 32) {
                    client
                        .get_workflow(with_trace(wpb::GetWorkflowRequest { id: id.clone() }, "t-log", &trace(10)))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap();
    }
    let sent = (2_000 / 32) * 32;
    let logged = || workflow.logs().lines().filter(|l| l.contains("WorkflowService/GetWorkflow")).count();
    eventually(Duration::from_secs(20), "one access line per call", || async { logged() >= sent }).await;
    assert_eq!(logged(), sent, "one line per call, no more");
    // Published every few seconds: read it once it has been.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let body = scrape(metrics_port).await;
    assert!(body.contains("log_lines_dropped_total 0"), "{body}");
}

/// A traceparent whose trace id is `n`.
fn trace(n: u128) -> String {
    format!("00-{n:032x}-{:016x}-01", 7u64)
}
