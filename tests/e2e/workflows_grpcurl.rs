//! A user's first session: grpcurl, through server reflection only (grpcurl 1.8.6 asks for
//! reflection v1alpha).

use std::process::Command;

use crate::helpers::*;

fn grpcurl() -> String {
    std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into())
}

fn run(args: &[&str]) -> String {
    let output = Command::new(grpcurl()).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run grpcurl ({e}); scripts/install-test-deps installs it and scripts/test sets GRPCURL")
    });
    assert!(output.status.success(), "grpcurl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_calls_through_reflection() {
    let app = spawn_workflows(Backend::Sqlite).await;
    let addr = app.service.addr.to_string();

    let services = run(&["-plaintext", &addr, "list"]);
    for name in ["engarde.workflow.v1.WorkflowService", "grpc.health.v1.Health"] {
        assert!(services.lines().any(|l| l == name), "{name} in:\n{services}");
    }
    let described = run(&["-plaintext", &addr, "describe", "engarde.workflow.v1.WorkflowService"]);
    assert!(described.contains("rpc CreateWorkflow"), "{described}");
    assert!(described.contains("Copies a template"), "the .proto comments are the documentation:\n{described}");
    let message = run(&["-plaintext", &addr, "describe", "engarde.workflow.v1.Step"]);
    assert!(message.contains("reviews_step"), "{message}");

    let listed = run(&[
        "-plaintext",
        "-H",
        "x-tenant-id: default-tenant-001",
        "-d",
        r#"{"page_size": 50}"#,
        &addr,
        "engarde.workflow.v1.WorkflowService/ListWorkflows",
    ]);
    let json: serde_json::Value = serde_json::from_str(&listed).expect("JSON answer");
    let workflows = json["workflows"].as_array().expect("workflows");
    assert_eq!(workflows.len(), 11);
    assert!(workflows.iter().all(|w| w["isTemplate"] == true));

    let health = run(&[
        "-plaintext",
        "-d",
        r#"{"service": "engarde.workflow.v1.WorkflowService"}"#,
        &addr,
        "grpc.health.v1.Health/Check",
    ]);
    assert!(health.contains("SERVING"), "{health}");
}
