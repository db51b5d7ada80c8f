//! Production authentication: the tenant comes from a verified JWT, never from a header.

use std::time::Duration;

use engarde::proto::workflow::v1 as pb;
use engarde::proto::workflow::v1::workflow_service_client::WorkflowServiceClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::helpers::*;
use crate::workflows_crud::create_request;

const SECRET: &str = "test-secret-at-least-32-bytes-long!!";

fn token(tenant: &str, secret: &str, expires_in: i64) -> String {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        tenant_id: &'a str,
        exp: i64,
    }
    let claims = Claims { tenant_id: tenant, exp: chrono::Utc::now().timestamp() + expires_in };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token")
}

fn with_auth<T>(message: T, authorization: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", authorization.parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_valid_token_names_the_tenant() {
    let db = TestDb::new(Backend::Sqlite).await;
    let service =
        spawn_workflow_service(&db, &[("AUTH_MODE", "jwt".into()), ("JWT_HS256_SECRET", SECRET.into())]).await;
    let mut client: WorkflowServiceClient<Channel> = WorkflowServiceClient::new(service.channel().await);
    let list = pb::ListWorkflowsRequest::default;

    let status = expect_code(client.list_workflows(list()).await, Code::Unauthenticated);
    assert!(status.message().contains("Bearer"), "{}", status.message());
    // The development header means nothing in production mode.
    let mut dev = tonic::Request::new(list());
    dev.metadata_mut().insert("x-tenant-id", "tenant-a".parse().unwrap());
    expect_code(client.list_workflows(dev).await, Code::Unauthenticated);
    expect_code(client.list_workflows(with_auth(list(), "Bearer not.a.jwt")).await, Code::Unauthenticated);
    expect_code(
        client
            .list_workflows(with_auth(
                list(),
                &format!("Bearer {}", token("tenant-a", "wrong-secret-wrong-secret-wrong!!", 60)),
            ))
            .await,
        Code::Unauthenticated,
    );
    expect_code(
        client.list_workflows(with_auth(list(), &format!("Bearer {}", token("tenant-a", SECRET, -3600)))).await,
        Code::Unauthenticated,
    );
    expect_code(
        client.list_workflows(with_auth(list(), &format!("Bearer {}", token("bad tenant!", SECRET, 60)))).await,
        Code::Unauthenticated,
    );

    let alice = format!("Bearer {}", token("tenant-a", SECRET, 60));
    let bob = format!("Bearer {}", token("tenant-b", SECRET, 60));
    let created = client.create_workflow(with_auth(create_request("Alice's"), &alice)).await.unwrap().into_inner();
    assert_eq!(created.tenant_id, "tenant-a");
    let id = created.id.clone();
    client.get_workflow(with_auth(pb::GetWorkflowRequest { id: id.clone() }, &alice)).await.expect("owner reads it");
    expect_code(client.get_workflow(with_auth(pb::GetWorkflowRequest { id }, &bob)).await, Code::NotFound);

    // Probes need no credentials.
    let mut health = tonic_health::pb::health_client::HealthClient::new(service.channel().await);
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest { service: "engarde.workflow.v1.WorkflowService".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
}

#[tokio::test]
async fn production_mode_without_a_key_refuses_to_start() {
    let db = TestDb::new(Backend::Sqlite).await;
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(binary("workflow-service"))
            .env_clear()
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("DATABASE_URL", db.url())
            .env("AUTH_MODE", "jwt")
            .output(),
    )
    .await
    .expect("exits promptly")
    .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("JWT_HS256_SECRET"), "{stderr}");
    assert!(output.stdout.is_empty(), "it never announced itself as listening");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_tokens_are_verified_with_the_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = rsa_key_pair(dir.path());

    let db = TestDb::new(Backend::Sqlite).await;
    let service = spawn_workflow_service(
        &db,
        &[
            ("AUTH_MODE", "jwt".into()),
            ("JWT_RS256_PUBLIC_KEY_FILE", public.display().to_string()),
            ("JWT_ISSUER", "engarde-auth".into()),
        ],
    )
    .await;
    let mut client: WorkflowServiceClient<Channel> = WorkflowServiceClient::new(service.channel().await);
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap();
    let sign = |issuer: &str| {
        let claims =
            serde_json::json!({"tenant_id": "tenant-rs", "exp": chrono::Utc::now().timestamp() + 60, "iss": issuer});
        format!(
            "Bearer {}",
            jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims, &key).unwrap()
        )
    };
    let created = client.create_workflow(with_auth(create_request("RSA"), &sign("engarde-auth"))).await.unwrap();
    assert_eq!(created.into_inner().tenant_id, "tenant-rs");
    // A token from another issuer, or signed with HS256, is refused.
    expect_code(
        client.list_workflows(with_auth(pb::ListWorkflowsRequest::default(), &sign("someone-else"))).await,
        Code::Unauthenticated,
    );
    let hs = format!("Bearer {}", token("tenant-rs", SECRET, 60));
    expect_code(
        client.list_workflows(with_auth(pb::ListWorkflowsRequest::default(), &hs)).await,
        Code::Unauthenticated,
    );
}

/// An RSA key pair made with openssl: (private PEM path, public PEM path), in `dir`.
pub fn rsa_key_pair(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let private = dir.join("key.pem");
    let public = dir.join("pub.pem");
    let openssl = |args: &[&str]| {
        let status = std::process::Command::new("openssl").args(args).stderr(std::process::Stdio::null()).status();
        assert!(status.expect("openssl runs").success(), "openssl {args:?}");
    };
    openssl(&["genrsa", "-out", private.to_str().unwrap(), "2048"]);
    openssl(&["rsa", "-in", private.to_str().unwrap(), "-pubout", "-out", public.to_str().unwrap()]);
    (private, public)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_the_configured_issuer_or_audience_is_unauthenticated_on_both_services() {
    use engarde::proto::agent::v1 as apb;
    use engarde::proto::agent::v1::agent_service_client::AgentServiceClient;

    let dir = tempfile::tempdir().unwrap();
    let (private, public) = rsa_key_pair(dir.path());
    let auth_env = [
        ("AUTH_MODE", "jwt".to_owned()),
        ("JWT_RS256_PUBLIC_KEY_FILE", public.display().to_string()),
        ("JWT_ISSUER", "https://issuer.example".to_owned()),
        ("JWT_AUDIENCE", "engarde".to_owned()),
    ];
    let workflow_db = TestDb::new(Backend::Sqlite).await;
    let agent_db = TestDb::new(Backend::Sqlite).await;
    let workflow = spawn_workflow_service(&workflow_db, &auth_env).await;
    let agent = spawn_agent_service(&agent_db, &workflow.url(), &auth_env).await;
    let mut workflows: WorkflowServiceClient<Channel> = WorkflowServiceClient::new(workflow.channel().await);
    let mut agents = AgentServiceClient::new(agent.channel().await);

    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap();
    let sign = |claims: serde_json::Value| {
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        format!("Bearer {}", jsonwebtoken::encode(&header, &claims, &key).unwrap())
    };
    let now = chrono::Utc::now().timestamp();
    let full =
        serde_json::json!({"tenant_id": "tA", "exp": now + 600, "iss": "https://issuer.example", "aud": "engarde"});
    let without = |claims: &[&str]| {
        let mut token = full.clone();
        for claim in claims {
            token.as_object_mut().unwrap().remove(*claim);
        }
        sign(token)
    };
    let mut future_nbf = full.clone();
    future_nbf["nbf"] = serde_json::json!(now + 50 * 60);

    // The token the issue reported (neither claim), each claim missing alone, and one not valid
    // for another 50 minutes: refused by every call, on both services.
    for (what, bearer) in [
        ("no iss, no aud", without(&["iss", "aud"])),
        ("no iss", without(&["iss"])),
        ("no aud", without(&["aud"])),
        ("nbf in 50 minutes", sign(future_nbf)),
    ] {
        let status = expect_code(
            workflows.list_workflows(with_auth(pb::ListWorkflowsRequest::default(), &bearer)).await,
            Code::Unauthenticated,
        );
        assert!(status.message().contains("invalid token"), "{what}: {}", status.message());
        expect_code(
            workflows.create_workflow(with_auth(create_request("Unauthenticated"), &bearer)).await,
            Code::Unauthenticated,
        );
        expect_code(
            agents.list_agents(with_auth(apb::ListAgentsRequest::default(), &bearer)).await,
            Code::Unauthenticated,
        );
    }

    // A token with both claims, and a valid nbf, is the caller's.
    let mut past_nbf = full.clone();
    past_nbf["nbf"] = serde_json::json!(now - 60);
    for bearer in [sign(full.clone()), sign(past_nbf)] {
        let created = workflows.create_workflow(with_auth(create_request("Authenticated"), &bearer)).await.unwrap();
        assert_eq!(created.into_inner().tenant_id, "tA");
        agents
            .list_agents(with_auth(apb::ListAgentsRequest::default(), &bearer))
            .await
            .expect("agent-service takes it");
    }
}

#[tokio::test]
async fn a_short_hs256_secret_stops_both_services_at_start_saying_why() {
    for name in ["workflow-service", "agent-service"] {
        let db = TestDb::new(Backend::Sqlite).await;
        let output = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(binary(name))
                .env_clear()
                .env("LISTEN_ADDR", "127.0.0.1:0")
                .env("DATABASE_URL", db.url())
                .env("AUTH_MODE", "jwt")
                .env("JWT_HS256_SECRET", "x")
                .output(),
        )
        .await
        .expect("exits promptly")
        .expect("runs");
        assert!(!output.status.success(), "{name} refused to start");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("JWT_HS256_SECRET"), "{name}: {stderr}");
        assert!(stderr.contains("at least 32 bytes"), "{name}: {stderr}");
        assert!(output.stdout.is_empty(), "{name} never announced itself as listening");
    }
}
