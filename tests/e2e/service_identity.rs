//! The services' own identity: agent-service calls workflow-service as itself (a service token
//! signed with SERVICE_TOKEN_SECRET, the tenant in `x-tenant-id`), RecordExecution takes only
//! that identity, and a service token opens no tenant RPC.

use std::time::Duration;

use engarde::proto::agent::v1 as apb;
use engarde::proto::agent::v1::agent_service_client::AgentServiceClient;
use engarde::proto::agent::v1::execution_service_client::ExecutionServiceClient;
use engarde::proto::workflow::v1 as pb;
use engarde::proto::workflow::v1::workflow_service_client::WorkflowServiceClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::helpers::*;
use crate::langflow_support::FakeLangflow;
use crate::walker_support::{config, llm, walker_env};
use crate::workflows_crud::create_request;

pub const TENANT_SECRET: &str = "the-tenants-hs256-secret-0123456789abcd";

pub fn tenant_token(tenant: &str, expires_in: i64) -> String {
    let claims = serde_json::json!({"tenant_id": tenant, "exp": chrono::Utc::now().timestamp() + expires_in});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(TENANT_SECRET.as_bytes()),
    )
    .unwrap();
    format!("Bearer {token}")
}

/// `message` with an `authorization` header and, when given, an `x-tenant-id`.
pub fn signed<T>(message: T, authorization: &str, tenant: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", authorization.parse().unwrap());
    if let Some(tenant) = tenant {
        request.metadata_mut().insert("x-tenant-id", tenant.parse().unwrap());
    }
    request
}

fn record(workflow_id: &str, execution_id: &str) -> pb::RecordExecutionRequest {
    pb::RecordExecutionRequest { workflow_id: workflow_id.into(), execution_id: execution_id.into(), succeeded: true }
}

async fn a_template(client: &mut WorkflowServiceClient<Channel>, authorization: &str) -> pb::WorkflowDefinition {
    let listed = client
        .list_workflows(signed(
            pb::ListWorkflowsRequest { is_template: Some(true), page_size: 1, ..Default::default() },
            authorization,
            None,
        ))
        .await
        .expect("list templates")
        .into_inner();
    listed.workflows.into_iter().next().expect("a built-in template")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_service_identity_records_executions_and_it_opens_no_tenant_rpc() {
    let auth_env = [("AUTH_MODE", "jwt".to_owned()), ("JWT_HS256_SECRET", TENANT_SECRET.to_owned())];
    let workflow_db = TestDb::new(Backend::Sqlite).await;
    let agent_db = TestDb::new(Backend::Sqlite).await;
    let workflow_service = spawn_workflow_service(&workflow_db, &auth_env).await;
    let agent_service = spawn_agent_service(&agent_db, &workflow_service.url(), &auth_env).await;
    let mut workflows = WorkflowServiceClient::new(workflow_service.channel().await);
    let service = service_bearer("agent-service", SERVICE_SECRET);
    let (alice, bob) = (tenant_token("tenant-a", 600), tenant_token("tenant-b", 600));

    // The forgery the issue found: a tenant reporting made-up executions on a shared template,
    // and on its own workflow. Refused, and nothing is counted.
    let template = a_template(&mut workflows, &alice).await;
    let own = workflows
        .create_workflow(signed(create_request("Alice's own"), &alice, None))
        .await
        .expect("create")
        .into_inner();
    for (id, n) in [(&template.id, 1), (&template.id, 2), (&own.id, 3)] {
        let status = expect_code(
            workflows.record_execution(signed(record(id, &format!("forged-{n}")), &alice, None)).await,
            Code::PermissionDenied,
        );
        assert!(status.message().contains("service"), "{}", status.message());
    }
    for (id, who) in [(&template.id, &bob), (&own.id, &alice)] {
        let read = workflows
            .get_workflow(signed(pb::GetWorkflowRequest { id: id.clone() }, who, None))
            .await
            .expect("get")
            .into_inner();
        assert_eq!(read.execution_count, 0, "nothing forged was counted");
    }
    // A tenant naming another tenant in x-tenant-id changes nothing: its token names it.
    expect_code(
        workflows.record_execution(signed(record(&own.id, "forged-4"), &alice, Some("tenant-a"))).await,
        Code::PermissionDenied,
    );

    // The service identity, acting for the tenant it names.
    let counted = workflows
        .record_execution(signed(record(&own.id, "exec-1"), &service, Some("tenant-a")))
        .await
        .expect("the service records")
        .into_inner();
    assert!(counted.counted);
    assert_eq!(counted.execution_count, 1);
    // For another tenant, Alice's workflow does not exist.
    expect_code(
        workflows.record_execution(signed(record(&own.id, "exec-2"), &service, Some("tenant-b"))).await,
        Code::NotFound,
    );
    // It must say which tenant it acts for.
    let status = expect_code(
        workflows.record_execution(signed(record(&own.id, "exec-3"), &service, None)).await,
        Code::InvalidArgument,
    );
    assert!(status.message().contains("x-tenant-id"), "{}", status.message());
    // A token signed with another secret is no service token (nor a tenant's).
    let forged = service_bearer("agent-service", "a-secret-nobody-configured-0123456789");
    expect_code(
        workflows.record_execution(signed(record(&own.id, "exec-4"), &forged, Some("tenant-a"))).await,
        Code::Unauthenticated,
    );

    // GetWorkflow, which the scheduler needs, is open to it; changing a tenant's workflows is not.
    workflows
        .get_workflow(signed(pb::GetWorkflowRequest { id: own.id.clone() }, &service, Some("tenant-a")))
        .await
        .expect("the service reads for its tenant");
    for status in [
        workflows.create_workflow(signed(create_request("By a service"), &service, Some("tenant-a"))).await.map(drop),
        workflows
            .list_workflows(signed(pb::ListWorkflowsRequest::default(), &service, Some("tenant-a")))
            .await
            .map(drop),
        workflows
            .archive_workflow(signed(
                pb::ArchiveWorkflowRequest { id: own.id.clone(), ..Default::default() },
                &service,
                Some("tenant-a"),
            ))
            .await
            .map(drop),
    ] {
        expect_code(status, Code::PermissionDenied);
    }
    // agent-service has no RPC for services at all.
    let mut agents = AgentServiceClient::new(agent_service.channel().await);
    expect_code(
        agents.list_agents(signed(apb::ListAgentsRequest::default(), &service, Some("tenant-a"))).await,
        Code::PermissionDenied,
    );
}

/// RS256, the production setting, where no service can sign a tenant's token: an execution
/// whose caller's token has expired by the time workflow-service is back is still counted,
/// because the report goes with agent-service's own identity, not the caller's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_is_counted_after_its_callers_token_has_expired() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = crate::workflows_auth::rsa_key_pair(dir.path());
    let auth_env = [
        ("AUTH_MODE", "jwt".to_owned()),
        ("JWT_RS256_PUBLIC_KEY_FILE", public.display().to_string()),
        ("JWT_LEEWAY_SECS", "0".to_owned()),
    ];
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap();
    let token = |expires_in: i64| {
        let claims = serde_json::json!({"tenant_id": "tenant-rs", "exp": chrono::Utc::now().timestamp() + expires_in});
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        format!("Bearer {}", jsonwebtoken::encode(&header, &claims, &key).unwrap())
    };
    let fake = FakeLangflow::start().await;
    let workflow_db = TestDb::new(Backend::Sqlite).await;
    let agent_db = TestDb::new(Backend::Sqlite).await;
    let mut workflow_service = spawn_workflow_service(&workflow_db, &auth_env).await;
    let workflow_addr = workflow_service.addr;
    let agent_service =
        spawn_agent_service(&agent_db, &workflow_service.url(), &walker_env(&fake.url(), &auth_env)).await;

    let long = token(600);
    let mut workflows = WorkflowServiceClient::new(workflow_service.channel().await);
    let workflow = workflows
        .create_workflow(signed(
            pb::CreateWorkflowRequest {
                name: "Counted late".into(),
                description: "One step".into(),
                category: pb::WorkflowCategory::ContentGeneration as i32,
                workflow_config: Some(config(vec![llm("draft", "Draft: {input}")], 0, vec![])),
                request_id: String::new(),
            },
            &long,
            None,
        ))
        .await
        .expect("create workflow")
        .into_inner();
    let mut agents = AgentServiceClient::new(agent_service.channel().await);
    let agent = agents
        .create_agent_from_workflow(signed(
            apb::CreateAgentFromWorkflowRequest { workflow_id: workflow.id.clone(), ..Default::default() },
            &long,
            None,
        ))
        .await
        .expect("create agent")
        .into_inner();
    agents
        .deploy_agent(signed(apb::DeployAgentRequest { id: agent.id.clone(), ..Default::default() }, &long, None))
        .await
        .expect("deploy");

    // workflow-service goes away; the execution's report waits in the outbox.
    workflow_service.kill().await;
    let short = token(3);
    let mut executions = ExecutionServiceClient::new(agent_service.channel().await);
    let execution = executions
        .execute_agent(signed(
            apb::ExecuteAgentRequest { agent_id: agent.id.clone(), input: "tea".into(), ..Default::default() },
            &short,
            None,
        ))
        .await
        .expect("execute while the token is valid")
        .into_inner();
    assert!(!execution.execution.expect("execution").id.is_empty());

    // The caller's token expires; only then does workflow-service come back.
    tokio::time::sleep(Duration::from_secs(4)).await;
    expect_code(
        agents.list_agents(signed(apb::ListAgentsRequest::default(), &short, None)).await,
        Code::Unauthenticated,
    );
    let _workflow_service = spawn_workflow_service(
        &workflow_db,
        &[auth_env.as_slice(), &[("LISTEN_ADDR", workflow_addr.to_string())]].concat(),
    )
    .await;
    let channel = Channel::from_shared(format!("http://{workflow_addr}")).unwrap().connect().await.unwrap();
    let workflows = WorkflowServiceClient::new(channel);
    eventually(Duration::from_secs(60), "the execution is counted", || {
        let mut workflows = workflows.clone();
        let (id, long) = (workflow.id.clone(), long.clone());
        async move {
            let read = workflows.get_workflow(signed(pb::GetWorkflowRequest { id }, &long, None)).await;
            read.is_ok_and(|w| w.into_inner().execution_count == 1)
        }
    })
    .await;
}
