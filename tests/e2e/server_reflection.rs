//! Server reflection, as grpcurl and other tools use it: each server lists exactly the services
//! it answers (v1 and v1alpha), and serves the descriptors of the google.rpc error details our
//! errors carry, so that grpcurl shows a bad request's field violations as text.

use std::collections::BTreeSet;
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

use crate::helpers::*;

/// The messages of grpc.reflection.{v1,v1alpha} a `list` needs (both versions number them
/// alike): ServerReflectionRequest.list_services and ServerReflectionResponse's
/// ListServiceResponse.
#[derive(Clone, PartialEq, prost::Message)]
struct ReflectionRequest {
    #[prost(string, tag = "1")]
    host: String,
    #[prost(string, optional, tag = "7")]
    list_services: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ReflectionResponse {
    #[prost(message, optional, tag = "6")]
    list_services_response: Option<ListServices>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ListServices {
    #[prost(message, repeated, tag = "1")]
    service: Vec<ServiceName>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ServiceName {
    #[prost(string, tag = "1")]
    name: String,
}

/// The services `process` lists through reflection `version` ("v1" or "v1alpha"), answered
/// within `within`.
pub async fn list_services(process: &ServiceProcess, version: &str, within: Duration) -> Vec<String> {
    let mut grpc = tonic::client::Grpc::new(process.channel().await);
    grpc.ready().await.expect("ready");
    let path =
        http::uri::PathAndQuery::from_str(&format!("/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"))
            .expect("path");
    let ask = ReflectionRequest { host: String::new(), list_services: Some(String::new()) };
    let mut request = tonic::Request::new(futures::stream::iter([ask]));
    request.set_timeout(within);
    let codec = tonic_prost::ProstCodec::<ReflectionRequest, ReflectionResponse>::default();
    let mut answers = grpc.streaming(request, path, codec).await.expect("reflection answers").into_inner();
    let answer = tokio::time::timeout(within, answers.message())
        .await
        .expect("reflection answers in time")
        .expect("a reflection answer")
        .expect("one message");
    answer.list_services_response.expect("a list of services").service.into_iter().map(|s| s.name).collect()
}

fn grpcurl() -> String {
    std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into())
}

/// grpcurl's exit status, stdout and stderr.
fn grpcurl_run(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(grpcurl()).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run grpcurl ({e}); scripts/install-test-deps installs it and scripts/test sets GRPCURL")
    });
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

const ALWAYS: [&str; 3] =
    ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_server_lists_exactly_the_services_it_serves() {
    let app = spawn_app(Backend::Sqlite).await;
    let agent_services =
        ["engarde.agent.v1.AgentService", "engarde.agent.v1.ExecutionService", "engarde.agent.v1.RunService"];
    for (process, own) in
        [(&app.workflow, &["engarde.workflow.v1.WorkflowService"][..]), (&app.agent, &agent_services[..])]
    {
        let expected: BTreeSet<String> = set(&ALWAYS).into_iter().chain(set(own)).collect();
        for version in ["v1", "v1alpha"] {
            let listed: BTreeSet<String> =
                list_services(process, version, Duration::from_secs(10)).await.into_iter().collect();
            assert_eq!(listed, expected, "{} through reflection {version}", process.name);
        }
        // grpcurl 1.8.6 asks v1alpha; everything it lists it can also describe.
        let addr = process.addr.to_string();
        let (ok, out, err) = grpcurl_run(&["-plaintext", &addr, "list"]);
        assert!(ok, "grpcurl list: {err}");
        assert_eq!(
            out.lines().map(str::to_owned).collect::<BTreeSet<_>>(),
            expected,
            "grpcurl list of {}",
            process.name
        );
        for name in &expected {
            let (ok, _, err) = grpcurl_run(&["-plaintext", &addr, "describe", name]);
            assert!(ok, "grpcurl describe {name} on {}: {err}", process.name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_shows_the_field_violations_of_a_bad_request_as_text() {
    let app = spawn_workflows(Backend::Sqlite).await;
    let addr = app.service.addr.to_string();
    let (ok, out, err) = grpcurl_run(&[
        "-plaintext",
        "-H",
        "x-tenant-id: t1",
        "-d",
        r#"{"name": "", "category": "WORKFLOW_CATEGORY_CONTENT_GENERATION"}"#,
        &addr,
        "engarde.workflow.v1.WorkflowService/CreateWorkflow",
    ]);
    assert!(!ok, "an empty name is refused: {out}");
    let shown = format!("{out}{err}");
    assert!(shown.contains("Code: InvalidArgument"), "{shown}");
    // Resolved through reflection, the details read as JSON naming each field, not as bytes.
    let details = shown
        .lines()
        .find_map(|line| line.trim().strip_prefix("1)"))
        .and_then(|json| serde_json::from_str::<serde_json::Value>(json.trim()).ok())
        .unwrap_or_else(|| panic!("the details as JSON text:\n{shown}"));
    assert_eq!(details["@type"], "type.googleapis.com/google.rpc.BadRequest", "{shown}");
    let violations = details["fieldViolations"].as_array().unwrap_or_else(|| panic!("{shown}"));
    assert!(violations.iter().any(|v| v["field"] == "name" && v["description"] == "must not be empty"), "{shown}");
}
