//! HTTP/JSON: the RPCs at their google.api.http paths on HTTP_LISTEN_ADDR, called with a plain
//! HTTP client as the platform's UI would: the workflow story, the platform's own
//! /api/agents/installed and /api/agents/config, authentication and tenancy, the error model
//! for what does not bind, and the OpenAPI document.

use engarde::proto::workflow::v1 as pb;
use engarde::proto::workflow::v1::workflow_service_client::WorkflowServiceClient;
use prost_reflect::{DescriptorPool, Value};
use reqwest::{Method, StatusCode};
use serde_json::{Value as Json, json};

use crate::both_backends;
use crate::helpers::*;

const SECRET: &str = "test-secret-at-least-32-bytes-long!!";
const TENANT: &str = "tenant-http";

/// A service's HTTP/JSON port and a plain client for it.
struct Http {
    base: String,
    client: reqwest::Client,
}

impl Http {
    fn new(port: u16) -> Self {
        Self { base: format!("http://127.0.0.1:{port}"), client: http_client().build().expect("HTTP client") }
    }

    /// `method path` with `headers` and an optional raw body: the status and the JSON answer.
    async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Json) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_owned());
        }
        let response = request.send().await.expect("HTTP call");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        (status, headers, json)
    }

    /// As the development tenant `tenant`.
    async fn as_tenant(&self, tenant: &str, method: Method, path: &str, body: Option<Json>) -> (StatusCode, Json) {
        let body = body.map(|b| b.to_string());
        let (status, _, json) = self.call(method, path, &[("x-tenant-id", tenant)], body.as_deref()).await;
        (status, json)
    }
}

/// The error model's status name and HTTP code, checked to agree with the answer's status.
fn error_of(status: StatusCode, json: &Json) -> &str {
    assert_eq!(json["error"]["code"], status.as_u16(), "{json}");
    json["error"]["status"].as_str().unwrap_or_else(|| panic!("no error model: {json}"))
}

fn violations(json: &Json) -> Vec<String> {
    json["error"]["details"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["@type"] == "type.googleapis.com/google.rpc.BadRequest")
        .flat_map(|d| d["fieldViolations"].as_array().cloned().unwrap_or_default())
        .map(|v| v["field"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn new_workflow(name: &str) -> Json {
    json!({
        "name": name,
        "description": "Weekly posts",
        "category": "WORKFLOW_CATEGORY_CONTENT_GENERATION",
        "workflowConfig": {"steps": [{"id": "draft", "kind": "STEP_KIND_LLM", "prompt": "Write about {input}"}]}
    })
}

both_backends!(
    async fn a_workflow_is_created_read_listed_and_activated_over_http(backend) {
        let db = TestDb::new(backend).await;
        let port = free_port();
        let service = spawn_workflow_service(&db, &[("HTTP_LISTEN_ADDR", format!("127.0.0.1:{port}"))]).await;
        let http = Http::new(port);

        let (status, created) = http.as_tenant(TENANT, Method::POST, "/v1/workflows", Some(new_workflow("Posts"))).await;
        assert_eq!(status, StatusCode::OK, "{created}");
        let id = created["id"].as_str().expect("id").to_owned();
        // proto3 JSON, as grpc-gateway writes it: lowerCamelCase, enums by name, int64 as strings.
        assert_eq!(created["tenantId"], TENANT);
        assert_eq!(created["status"], "WORKFLOW_STATUS_DRAFT");
        assert_eq!(created["version"], "1");
        assert_eq!(created["workflowConfig"]["steps"][0]["id"], "draft");

        let (status, read) = http.as_tenant(TENANT, Method::GET, &format!("/v1/workflows/{id}"), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(read["name"], "Posts");

        // Query parameters: a bool, an enum by name, an int as text.
        let (status, listed) = http
            .as_tenant(TENANT, Method::GET, "/v1/workflows?isTemplate=false&category=WORKFLOW_CATEGORY_CONTENT_GENERATION&page_size=10", None)
            .await;
        assert_eq!(status, StatusCode::OK, "{listed}");
        let ids: Vec<&str> = listed["workflows"].as_array().unwrap().iter().map(|w| w["id"].as_str().unwrap()).collect();
        assert_eq!(ids, [id.as_str()]);

        // A custom verb, with the etag read.
        let etag = read["etag"].as_str().unwrap();
        let (status, active) = http
            .as_tenant(TENANT, Method::POST, &format!("/v1/workflows/{id}:activate"), Some(json!({"etag": etag})))
            .await;
        assert_eq!(status, StatusCode::OK, "{active}");
        assert_eq!(active["status"], "WORKFLOW_STATUS_ACTIVE");

        // What HTTP made, gRPC reads: one service behind both ports.
        let mut grpc = WorkflowServiceClient::with_interceptor(service.channel().await, as_tenant(TENANT));
        let over_grpc = grpc.get_workflow(pb::GetWorkflowRequest { id: id.clone() }).await.unwrap().into_inner();
        assert_eq!(over_grpc.status, pb::WorkflowStatus::Active as i32);

        // Another tenant: NOT_FOUND, as over gRPC.
        let (status, error) = http.as_tenant("tenant-other", Method::GET, &format!("/v1/workflows/{id}"), None).await;
        assert_eq!((status, error_of(status, &error)), (StatusCode::NOT_FOUND, "NOT_FOUND"));
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_does_not_bind_is_answered_in_the_error_model() {
    let db = TestDb::new(Backend::Sqlite).await;
    let port = free_port();
    let _service = spawn_workflow_service(
        &db,
        &[
            ("HTTP_LISTEN_ADDR", format!("127.0.0.1:{port}")),
            ("HTTP_MAX_BODY_BYTES", "4096".into()),
            ("RPC_TIMEOUT_SECS", "2".into()),
        ],
    )
    .await;
    let http = Http::new(port);
    let tenant = [("x-tenant-id", TENANT)];

    // Bad JSON.
    let (status, _, error) = http.call(Method::POST, "/v1/workflows", &tenant, Some("{\"name\": ")).await;
    assert_eq!((status, error_of(status, &error)), (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"));
    assert!(error["error"]["message"].as_str().unwrap().contains("not valid JSON"), "{error}");

    // An unknown JSON field is named, not dropped.
    let mut body = new_workflow("Posts");
    body["colour"] = json!("blue");
    let (status, _, error) = http.call(Method::POST, "/v1/workflows", &tenant, Some(&body.to_string())).await;
    assert_eq!((status, error_of(status, &error)), (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"));
    assert_eq!(violations(&error), ["colour"], "{error}");

    // A field of the wrong type.
    let (status, _, error) =
        http.call(Method::POST, "/v1/workflows", &tenant, Some(r#"{"name": 5, "category": "NO_SUCH_CATEGORY"}"#)).await;
    assert_eq!((status, error_of(status, &error)), (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"));

    // Query parameters: unknown, of the wrong type, an unknown enum name, twice for one value.
    for (query, field) in [
        ("colour=blue", "colour"),
        ("pageSize=many", "pageSize"),
        ("status=NO_SUCH_STATUS", "status"),
        ("page_size=1&page_size=2", "page_size"),
    ] {
        let (status, _, error) = http.call(Method::GET, &format!("/v1/workflows?{query}"), &tenant, None).await;
        assert_eq!((status, error_of(status, &error)), (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"), "{query}");
        assert_eq!(violations(&error), [field], "{query}: {error}");
    }

    // A path variable the service cannot take: the field is named, as over gRPC.
    let (status, _, error) = http.call(Method::GET, "/v1/workflows/not-a-uuid", &tenant, None).await;
    assert_eq!((status, error_of(status, &error)), (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"));
    assert_eq!(violations(&error), ["id"], "{error}");

    // A known path with a wrong method: 405 with Allow.
    let (status, headers, error) = http.call(Method::PUT, "/v1/workflows", &tenant, Some("{}")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    error_of(status, &error);
    let allow = headers.get("allow").expect("Allow").to_str().unwrap();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");

    // An unknown path.
    let (status, _, error) = http.call(Method::GET, "/v1/nothing/here", &tenant, None).await;
    assert_eq!((status, error_of(status, &error)), (StatusCode::NOT_FOUND, "NOT_FOUND"));

    // A body above HTTP_MAX_BODY_BYTES.
    let mut big = new_workflow("Posts");
    big["description"] = json!("x".repeat(10_000));
    let (status, _, error) = http.call(Method::POST, "/v1/workflows", &tenant, Some(&big.to_string())).await;
    assert_eq!((status, error_of(status, &error)), (StatusCode::PAYLOAD_TOO_LARGE, "RESOURCE_EXHAUSTED"));

    // A body that trickles in slower than RPC_TIMEOUT_SECS: 408, the connection freed.
    {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let head = "POST /v1/workflows HTTP/1.1\r\nhost: x\r\nx-tenant-id: t\r\ncontent-length: 100\r\n\r\n{\"na";
        slow.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), slow.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "the slow body was not cut off");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("DEADLINE_EXCEEDED"), "{answer}");
    }

    // A call that takes no body.
    let (status, _, error) = http.call(Method::GET, "/v1/workflows", &tenant, Some("{}")).await;
    assert_eq!((status, error_of(status, &error)), (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_callers_authenticate_as_grpc_callers_do() {
    let db = TestDb::new(Backend::Sqlite).await;
    let port = free_port();
    let _service = spawn_workflow_service(
        &db,
        &[
            ("AUTH_MODE", "jwt".into()),
            ("JWT_HS256_SECRET", SECRET.into()),
            ("HTTP_LISTEN_ADDR", format!("127.0.0.1:{port}")),
        ],
    )
    .await;
    let http = Http::new(port);

    // No token, or only the development header: 401.
    let (status, _, error) = http.call(Method::GET, "/v1/workflows", &[], None).await;
    assert_eq!((status, error_of(status, &error)), (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"));
    let (status, _, error) = http.call(Method::GET, "/v1/workflows", &[("x-tenant-id", "tenant-a")], None).await;
    assert_eq!((status, error_of(status, &error)), (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"));

    let bearer = |tenant: &str| format!("Bearer {}", token(tenant));
    let (a, b) = (bearer("tenant-a"), bearer("tenant-b"));
    let body = new_workflow("Mine").to_string();
    let (status, _, created) = http.call(Method::POST, "/v1/workflows", &[("authorization", &a)], Some(&body)).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    assert_eq!(created["tenantId"], "tenant-a");
    let path = format!("/v1/workflows/{}", created["id"].as_str().unwrap());
    let (status, _, _) = http.call(Method::GET, &path, &[("authorization", &a)], None).await;
    assert_eq!(status, StatusCode::OK);
    // Another tenant's token: NOT_FOUND, whatever x-tenant-id says.
    let (status, _, error) =
        http.call(Method::GET, &path, &[("authorization", &b), ("x-tenant-id", "tenant-a")], None).await;
    assert_eq!((status, error_of(status, &error)), (StatusCode::NOT_FOUND, "NOT_FOUND"));
    // Only agent-service's identity may record executions: a tenant is refused over HTTP too.
    let record = format!("{path}:recordExecution");
    let (status, _, error) = http
        .call(Method::POST, &record, &[("authorization", &a)], Some(r#"{"executionId": "e1", "succeeded": true}"#))
        .await;
    assert_eq!((status, error_of(status, &error)), (StatusCode::FORBIDDEN, "PERMISSION_DENIED"));
}

fn token(tenant: &str) -> String {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        tenant_id: &'a str,
        exp: i64,
    }
    let claims = Claims { tenant_id: tenant, exp: chrono::Utc::now().timestamp() + 600 };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

both_backends!(
    async fn the_platform_lists_installed_agents_and_configures_one_over_http(backend) {
        let workflow_db = TestDb::new(backend).await;
        let agent_db = TestDb::new(backend).await;
        let workflow = spawn_workflow_service(&workflow_db, &[]).await;
        let port = free_port();
        let _agent =
            spawn_agent_service(&agent_db, &workflow.url(), &[("HTTP_LISTEN_ADDR", format!("127.0.0.1:{port}"))]).await;
        let http = Http::new(port);

        let (status, provisioned) = http.as_tenant(TENANT, Method::POST, "/v1/agents:provision", Some(json!({}))).await;
        assert_eq!(status, StatusCode::OK, "{provisioned}");
        let made = provisioned["created"].as_array().map(Vec::len).unwrap_or_default();
        assert!(made >= 11, "{provisioned}");

        // The platform's own path.
        let (status, installed) = http.as_tenant(TENANT, Method::GET, "/api/agents/installed?pageSize=200", None).await;
        assert_eq!(status, StatusCode::OK, "{installed}");
        let agents = installed["installedAgents"].as_array().expect("installedAgents");
        assert_eq!(agents.len(), made);
        let agent_id = agents[0]["agent"]["id"].as_str().unwrap().to_owned();

        // One agent's config, by id in the query.
        let config_path = format!("/api/agents/config?agent_id={agent_id}");
        let (status, config) = http.as_tenant(TENANT, Method::GET, &config_path, None).await;
        assert_eq!(status, StatusCode::OK, "{config}");
        assert_eq!(config["agentId"], agent_id.as_str());
        let etag = config["etag"].as_str().expect("etag").to_owned();

        // PUT with the etag read: applied, a new etag.
        let update = |etag: &str| {
            json!({"agentId": agent_id, "configuration": {"brandVoice": "bold", "tone": "warm"}, "etag": etag})
        };
        let (status, updated) = http.as_tenant(TENANT, Method::PUT, "/api/agents/config", Some(update(&etag))).await;
        assert_eq!(status, StatusCode::OK, "{updated}");
        assert_eq!(updated["configuration"]["brandVoice"], "bold");
        assert_ne!(updated["etag"], etag.as_str());
        let (_, reread) = http.as_tenant(TENANT, Method::GET, &config_path, None).await;
        assert_eq!(reread["configuration"]["tone"], "warm");

        // The same etag again is stale: 409 ABORTED.
        let (status, error) = http.as_tenant(TENANT, Method::PUT, "/api/agents/config", Some(update(&etag))).await;
        assert_eq!((status, error_of(status, &error)), (StatusCode::CONFLICT, "ABORTED"));

        // The resource-style path answers the same config.
        let (status, same) = http.as_tenant(TENANT, Method::GET, &format!("/v1/agents/{agent_id}/config"), None).await;
        assert_eq!((status, &same["etag"]), (StatusCode::OK, &updated["etag"]));

        // No id, or another tenant's agent.
        let (status, error) = http.as_tenant(TENANT, Method::GET, "/api/agents/config", None).await;
        assert_eq!((status, error_of(status, &error)), (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"));
        let (status, error) = http.as_tenant("tenant-other", Method::GET, &config_path, None).await;
        assert_eq!((status, error_of(status, &error)), (StatusCode::NOT_FOUND, "NOT_FOUND"));
        let (status, _) = http.as_tenant("tenant-other", Method::GET, "/api/agents/installed", None).await;
        assert_eq!(status, StatusCode::OK);

        // A streaming RPC that fails before its first message answers an ordinary error
        // (a draft agent does not execute).
        let (status, error) = http
            .as_tenant(TENANT, Method::POST, &format!("/v1/agents/{agent_id}:streamExecute"), Some(json!({"input": "hi"})))
            .await;
        assert_eq!((status, error_of(status, &error)), (StatusCode::BAD_REQUEST, "FAILED_PRECONDITION"));
    }
);

/// Every (method, path) of every google.api.http annotation of `services`, read from the
/// descriptors independently of the service's own code.
fn annotated(services: &[&str]) -> Vec<(String, String, String)> {
    let pool = DescriptorPool::decode(engarde::proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    let http = pool.get_extension_by_name("google.api.http").expect("google.api.http in the descriptors");
    let mut out = Vec::new();
    for name in services {
        let service = pool.get_service_by_name(name).expect("service");
        for method in service.methods() {
            let options = method.options();
            assert!(options.has_extension(&http), "{} has no google.api.http", method.full_name());
            let Value::Message(rule) = options.get_extension(&http).into_owned() else { panic!("rule") };
            let mut rules = vec![rule.clone()];
            if let Some(Value::List(more)) = rule.get_field_by_name("additional_bindings").map(|v| v.into_owned()) {
                rules.extend(more.into_iter().filter_map(|v| v.as_message().cloned()));
            }
            for rule in rules {
                for verb in ["get", "put", "post", "delete", "patch"] {
                    let path =
                        rule.get_field_by_name(verb).and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
                    if !path.is_empty() {
                        out.push((verb.to_owned(), path, method.name().to_owned()));
                    }
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_annotated_rpc() {
    let workflow_db = TestDb::new(Backend::Sqlite).await;
    let agent_db = TestDb::new(Backend::Sqlite).await;
    let (workflow_port, agent_port) = (free_port(), free_port());
    let workflow =
        spawn_workflow_service(&workflow_db, &[("HTTP_LISTEN_ADDR", format!("127.0.0.1:{workflow_port}"))]).await;
    let _agent =
        spawn_agent_service(&agent_db, &workflow.url(), &[("HTTP_LISTEN_ADDR", format!("127.0.0.1:{agent_port}"))])
            .await;
    let cases = [
        (workflow_port, vec!["engarde.workflow.v1.WorkflowService"]),
        (
            agent_port,
            vec!["engarde.agent.v1.AgentService", "engarde.agent.v1.ExecutionService", "engarde.agent.v1.RunService"],
        ),
    ];
    for (port, services) in cases {
        let http = Http::new(port);
        let (status, _, document) = http.call(Method::GET, "/openapi.json", &[], None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(document["openapi"].as_str().unwrap().starts_with("3."), "{}", document["openapi"]);
        let expected = annotated(&services);
        assert!(!expected.is_empty());
        let mut operation_ids = std::collections::HashSet::new();
        for (verb, path, rpc) in &expected {
            let operation = &document["paths"][path][verb];
            assert!(operation.is_object(), "{verb} {path} ({rpc}) missing from the OpenAPI document");
            let operation_id = operation["operationId"].as_str().unwrap();
            assert!(operation_id.contains(&format!("_{rpc}")), "{operation_id}");
            assert!(operation_ids.insert(operation_id.to_owned()), "{operation_id} is not unique");
            // Referenced schemas exist.
            let answer = &operation["responses"]["200"]["content"];
            let reference = answer["application/json"]["schema"]["$ref"]
                .as_str()
                .or_else(|| answer["application/x-ndjson"]["schema"]["$ref"].as_str())
                .unwrap_or_else(|| panic!("{verb} {path}: no answer schema"));
            let schema = reference.trim_start_matches("#/components/schemas/");
            assert!(document["components"]["schemas"][schema].is_object(), "{schema} not in components");
        }
        // Valid OpenAPI 3, as a generator of clients reads it (scripts/install-test-deps
        // installs the validator).
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), serde_json::to_vec(&document).unwrap()).unwrap();
        let validator = std::env::var("OPENAPI_SPEC_VALIDATOR").unwrap_or_else(|_| "openapi-spec-validator".to_owned());
        let checked = std::process::Command::new(&validator)
            .arg(file.path())
            .output()
            .unwrap_or_else(|e| panic!("{validator} ({e}): run scripts/install-test-deps and put its bin on PATH"));
        assert!(
            checked.status.success(),
            "the OpenAPI document of port {port} is not valid: {}{}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );
        // Only this server's RPCs: the workflow port documents no agent paths.
        let documented: usize =
            document["paths"].as_object().unwrap().values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(documented, expected.len());
    }
    // The proto comments are the descriptions.
    let (_, _, document) = Http::new(workflow_port).call(Method::GET, "/openapi.json", &[], None).await;
    let get = &document["paths"]["/v1/workflows/{id}"]["get"];
    assert!(get["description"].as_str().unwrap().contains("Reads one workflow"), "{get}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_execution_answers_one_json_message_a_line() {
    let fake = crate::langflow_support::FakeLangflow::start().await;
    let port = free_port();
    let app = crate::agents_execution::spawn_with_langflow(
        Backend::Sqlite,
        &fake.url(),
        &[("HTTP_LISTEN_ADDR", format!("127.0.0.1:{port}"))],
    )
    .await;
    let (_, agent) = crate::agents_execution::active_agent(&app, TENANT).await;
    let http = Http::new(port);

    let response = http
        .client
        .post(format!("{}/v1/agents/{}:streamExecute", http.base, agent.id))
        .header("x-tenant-id", TENANT)
        .body(json!({"input": "coral reefs", "sessionId": "reef"}).to_string())
        .send()
        .await
        .expect("HTTP call");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let text = response.text().await.unwrap();
    let events: Vec<Json> =
        text.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))).collect();
    assert!(events.len() >= 2, "{text}");
    assert_eq!(events[0]["started"]["status"], "EXECUTION_STATUS_RUNNING", "{text}");
    let finished = &events.last().unwrap()["finished"];
    assert_eq!(finished["status"], "EXECUTION_STATUS_SUCCEEDED", "{text}");
    assert_eq!(finished["id"], events[0]["started"]["id"]);
    assert!(events.iter().all(|e| e.get("error").is_none()), "{text}");

    // The unary execution over HTTP, in the same session.
    let (status, executed) = http
        .as_tenant(
            TENANT,
            Method::POST,
            &format!("/v1/agents/{}:execute", agent.id),
            Some(json!({"input": "waves", "sessionId": "reef"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{executed}");
    assert_eq!(executed["execution"]["status"], "EXECUTION_STATUS_SUCCEEDED");
    // The session's memory, through a nested resource path.
    let (status, messages) =
        http.as_tenant(TENANT, Method::GET, &format!("/v1/agents/{}/sessions/reef/messages", agent.id), None).await;
    assert_eq!(status, StatusCode::OK, "{messages}");
    assert_eq!(messages["messages"].as_array().map(Vec::len), Some(4), "{messages}");

    // A client's deadline (X-Request-Timeout) shorter than Langflow's answer: 504.
    fake.set_delay(std::time::Duration::from_millis(2000));
    let body = json!({"input": "late"}).to_string();
    let (status, _, error) = http
        .call(
            Method::POST,
            &format!("/v1/agents/{}:execute", agent.id),
            &[("x-tenant-id", TENANT), ("x-request-timeout", "0.5")],
            Some(&body),
        )
        .await;
    assert_eq!((status, error_of(status, &error)), (StatusCode::GATEWAY_TIMEOUT, "DEADLINE_EXCEEDED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_port_speaks_tls_with_the_grpc_ports_certificate() {
    let pki = crate::tls::Pki::new();
    let db = TestDb::new(Backend::Sqlite).await;
    let port = free_port();
    let mut env = pki.server_env(false);
    env.push(("HTTP_LISTEN_ADDR", format!("127.0.0.1:{port}")));
    let _service = spawn_workflow_service(&db, &env).await;

    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.cert("ca")).unwrap()).expect("CA");
    let client = http_client().add_root_certificate(ca).build().expect("HTTPS client");
    let response = client
        .get(format!("https://127.0.0.1:{port}/v1/workflows?pageSize=1"))
        .header("x-tenant-id", TENANT)
        .send()
        .await
        .expect("HTTPS call");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.json::<Json>().await.unwrap()["workflows"].is_array());
    // Plaintext gets no answer from a TLS port.
    let plain = http_client().build().unwrap();
    assert!(plain.get(format!("http://127.0.0.1:{port}/v1/workflows")).send().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_http_max_connections_are_refused_and_silent_ones_closed() {
    use tokio::io::AsyncReadExt as _;
    let db = TestDb::new(Backend::Sqlite).await;
    let port = free_port();
    let _service = spawn_workflow_service(
        &db,
        &[
            ("HTTP_LISTEN_ADDR", format!("127.0.0.1:{port}")),
            ("HTTP_MAX_CONNECTIONS", "1".into()),
            ("HTTP2_HANDSHAKE_TIMEOUT_SECS", "2".into()),
        ],
    )
    .await;
    let url = format!("http://127.0.0.1:{port}/openapi.json");
    // A connection that never speaks takes the only slot...
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let client = || http_client().pool_max_idle_per_host(0).build().unwrap();
    assert!(client().get(&url).send().await.is_err(), "a second connection was served");
    // ...until the header timeout closes it, and the slot serves again.
    let mut buffer = [0u8; 16];
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), silent.read(&mut buffer)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "the silent connection was closed: {closed:?}");
    eventually(std::time::Duration::from_secs(5), "the slot is free again", || async {
        client().get(&url).send().await.is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_http_call_in_flight_finish() {
    let fake = crate::langflow_support::FakeLangflow::start().await;
    let port = free_port();
    let mut app = crate::agents_execution::spawn_with_langflow(
        Backend::Sqlite,
        &fake.url(),
        &[("HTTP_LISTEN_ADDR", format!("127.0.0.1:{port}"))],
    )
    .await;
    let (_, agent) = crate::agents_execution::active_agent(&app, TENANT).await;
    fake.set_delay(std::time::Duration::from_millis(1500));
    let http = Http::new(port);
    let path = format!("/v1/agents/{}:execute", agent.id);
    let call =
        tokio::spawn(async move { http.as_tenant(TENANT, Method::POST, &path, Some(json!({"input": "slow"}))).await });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    app.agent.sigterm();
    let (status, executed) = call.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{executed}");
    assert_eq!(executed["execution"]["status"], "EXECUTION_STATUS_SUCCEEDED");
    let exit = app.agent.wait_exit(std::time::Duration::from_secs(30)).await.expect("exited");
    assert!(exit.success(), "{exit:?}");
}

/// The README's HTTP/JSON session, as written, run with curl against the services.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_http_session_runs_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let marker = readme.find("<!-- http-session").expect("the README marks its HTTP session");
    let block = &readme[marker..];
    let start = block.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let script = block[start..start + block[start..].find("```").expect("the block ends")].to_owned();

    let workflow_db = TestDb::new(Backend::Sqlite).await;
    let agent_db = TestDb::new(Backend::Sqlite).await;
    let (workflow_port, agent_port) = (free_port(), free_port());
    let workflow =
        spawn_workflow_service(&workflow_db, &[("HTTP_LISTEN_ADDR", format!("127.0.0.1:{workflow_port}"))]).await;
    let _agent =
        spawn_agent_service(&agent_db, &workflow.url(), &[("HTTP_LISTEN_ADDR", format!("127.0.0.1:{agent_port}"))])
            .await;
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(cwd)
            .env("W", format!("http://127.0.0.1:{workflow_port}"))
            .env("A", format!("http://127.0.0.1:{agent_port}"))
            .output()
            .expect("bash runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the session failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("WORKFLOW_CATEGORY_AB_TESTING"), "{stdout}");
    assert!(stdout.contains("\"installedAgents\""), "{stdout}");
    assert!(stdout.contains("\"tone\":\"playful\""), "the PUT with the etag read applied: {stdout}");
    assert!(stdout.contains("\"status\":\"ABORTED\""), "the stale etag was refused: {stdout}");
    assert!(stdout.contains("\"/api/agents/installed\"") && stdout.contains("\"/api/agents/config\""), "{stdout}");
    let document = std::fs::read(dir.path().join("workflow-service.openapi.json")).expect("the document was saved");
    assert!(serde_json::from_slice::<Json>(&document).unwrap()["paths"]["/v1/workflows"].is_object());
}
