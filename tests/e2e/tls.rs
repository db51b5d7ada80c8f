//! TLS on every hop, with certificates the tests make (the openssl CLI): a CA, a server
//! certificate for 127.0.0.1/localhost, a client certificate for agent-service, and a second,
//! untrusted CA with certificates of its own.
//!
//! - the gRPC servers answer over TLS only the clients that trust their CA; with mTLS, only
//!   those with a client certificate of the client CA; the handshake timeout bounds the TLS
//!   handshake; the plaintext health port answers the probes;
//! - agent-service calls workflow-service over TLS and mTLS (CreateAgentFromWorkflow);
//! - agent-service calls Langflow over HTTPS (a TLS-terminating proxy in front of the fake
//!   Langflow) with LANGFLOW_CA_FILE, and gets UNAVAILABLE without it;
//! - a bad TLS setting stops the service at start, saying why.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use engarde::proto::agent::v1 as apb;
use engarde::proto::agent::v1::agent_service_client::AgentServiceClient;
use engarde::proto::workflow::v1 as wpb;
use engarde::proto::workflow::v1::workflow_service_client::WorkflowServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::agents_execution::{active_agent, run_agent, spawn_with_langflow};
use crate::both_backends;
use crate::helpers::*;
use crate::langflow_support::FakeLangflow;
use crate::workflows_crud::create_request;

/// The certificates of one test, in a temporary directory.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA ("ca") with a server certificate for 127.0.0.1 and localhost ("server") and a client
    /// certificate for agent-service ("client"); a second CA ("rogue-ca") with a server and a
    /// client certificate of its own ("rogue-server", "rogue-client").
    pub fn new() -> Self {
        let pki = Self { dir: tempfile::tempdir().expect("temp dir") };
        for ca in ["ca", "rogue-ca"] {
            pki.openssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-keyout",
                &pki.key(ca),
                "-out",
                &pki.cert(ca),
                "-subj",
                &format!("/CN=EnGarde test {ca}"),
            ]);
        }
        let server = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n";
        let client = "subjectAltName=DNS:agent-service\nextendedKeyUsage=clientAuth\n";
        pki.issue("server", "ca", "/CN=localhost", server);
        pki.issue("client", "ca", "/CN=agent-service", client);
        pki.issue("rogue-server", "rogue-ca", "/CN=localhost", server);
        pki.issue("rogue-client", "rogue-ca", "/CN=agent-service", client);
        pki
    }

    /// The certificate file of `name`.
    pub fn cert(&self, name: &str) -> String {
        self.path(&format!("{name}.pem"))
    }

    /// The private key file of `name`.
    pub fn key(&self, name: &str) -> String {
        self.path(&format!("{name}.key"))
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }

    fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(file).expect("pki file")
    }

    /// A key and a certificate for `name`, signed by `ca`, with the extensions `ext`.
    fn issue(&self, name: &str, ca: &str, subject: &str, ext: &str) {
        let csr = self.path(&format!("{name}.csr"));
        let ext_file = self.path(&format!("{name}.ext"));
        std::fs::write(&ext_file, format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n{ext}"))
            .expect("ext file");
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &self.key(name),
            "-out",
            &csr,
            "-subj",
            subject,
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &self.cert(ca),
            "-CAkey",
            &self.key(ca),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &self.cert(name),
            "-extfile",
            &ext_file,
        ]);
    }

    fn openssl(&self, args: &[&str]) {
        let output = std::process::Command::new("openssl").args(args).output().expect("openssl runs");
        assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// The settings of a gRPC server with the "server" certificate (and mTLS with "ca").
    pub fn server_env(&self, mtls: bool) -> Vec<(&'static str, String)> {
        let mut env = vec![("TLS_CERT_FILE", self.cert("server")), ("TLS_KEY_FILE", self.key("server"))];
        if mtls {
            env.push(("TLS_CLIENT_CA_FILE", self.cert("ca")));
        }
        env
    }

    /// A client's TLS trusting the CA `ca`, with the client certificate `identity` when given.
    pub fn client_tls(&self, ca: &str, identity: Option<&str>) -> ClientTlsConfig {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.read(&self.cert(ca))));
        match identity {
            Some(name) => tls.identity(Identity::from_pem(self.read(&self.cert(name)), self.read(&self.key(name)))),
            None => tls,
        }
    }
}

/// The https:// URL of a service serving TLS.
fn https(service: &ServiceProcess) -> String {
    format!("https://{}", service.addr)
}

/// A channel to `url`, with `tls` when given; the error as text when it cannot be made.
async fn channel(url: &str, tls: Option<ClientTlsConfig>) -> Result<Channel, String> {
    let mut endpoint = Channel::from_shared(url.to_owned()).expect("url").connect_timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| format!("{e:?}"))?;
    }
    endpoint.connect().await.map_err(|e| format!("{e:?}"))
}

/// Lists the tenant's workflows through `url`: the error as text when the call fails.
async fn list_workflows(url: &str, tls: Option<ClientTlsConfig>) -> Result<usize, String> {
    let channel = channel(url, tls).await?;
    let mut client = WorkflowServiceClient::with_interceptor(channel, as_tenant("tenant-a"));
    let mut request = tonic::Request::new(wpb::ListWorkflowsRequest::default());
    request.set_timeout(Duration::from_secs(5));
    client.list_workflows(request).await.map(|r| r.into_inner().workflows.len()).map_err(|s| format!("{s:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_service_over_tls_answers_only_clients_that_trust_its_ca() {
    let pki = Pki::new();
    let db = TestDb::new(Backend::Sqlite).await;
    let health_port = free_port();
    let mut env = pki.server_env(false);
    env.push(("HEALTH_LISTEN_ADDR", format!("127.0.0.1:{health_port}")));
    env.push(("SHUTDOWN_DELAY_MS", "5000".into()));
    let workflow = spawn_workflow_service(&db, &env).await;
    let url = https(&workflow);

    let templates = list_workflows(&url, Some(pki.client_tls("ca", None))).await.expect("a client trusting the CA");
    assert!(templates > 0, "the template library is listed");
    // The same call in plaintext, or trusting another CA, or only the public roots, fails.
    let plaintext = list_workflows(&workflow.url(), None).await;
    assert!(plaintext.is_err(), "a plaintext client: {plaintext:?}");
    let rogue = list_workflows(&url, Some(pki.client_tls("rogue-ca", None))).await;
    assert!(rogue.is_err(), "a client trusting another CA: {rogue:?}");
    let public_roots = list_workflows(&url, Some(ClientTlsConfig::new().with_webpki_roots())).await;
    assert!(public_roots.is_err(), "a client trusting only the public roots: {public_roots:?}");

    // Kubernetes' gRPC probes speak no TLS: the health port answers them in plaintext, and the
    // TLS port answers health as before.
    let plain_health = channel(&format!("http://127.0.0.1:{health_port}"), None).await.expect("health port");
    let status = HealthClient::new(plain_health)
        .check(HealthCheckRequest { service: "engarde.workflow.v1.WorkflowService".into() })
        .await
        .expect("health over the plaintext health port")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    let tls_health = channel(&url, Some(pki.client_tls("ca", None))).await.expect("TLS channel");
    let status = HealthClient::new(tls_health).check(HealthCheckRequest::default()).await.unwrap().into_inner().status;
    assert_eq!(status, ServingStatus::Serving as i32);
    // The health port serves health alone.
    let business = list_workflows(&format!("http://127.0.0.1:{health_port}"), None).await;
    assert!(business.unwrap_err().contains("Unimplemented"), "only health on the health port");

    // Draining after SIGTERM, the probes hear NOT_SERVING there, as on the TLS port.
    let probe = HealthClient::new(channel(&format!("http://127.0.0.1:{health_port}"), None).await.unwrap());
    workflow.sigterm();
    eventually(Duration::from_secs(4), "NOT_SERVING on the health port while draining", || {
        let mut probe = probe.clone();
        async move {
            probe
                .check(HealthCheckRequest::default())
                .await
                .is_ok_and(|r| r.into_inner().status == ServingStatus::NotServing as i32)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_timeout_bounds_the_tls_handshake_and_the_preface_after_it() {
    let pki = Pki::new();
    let db = TestDb::new(Backend::Sqlite).await;
    let mut env = pki.server_env(false);
    env.push(("HTTP2_HANDSHAKE_TIMEOUT_SECS", "1".into()));
    let workflow = spawn_workflow_service(&db, &env).await;

    // A socket that never starts its TLS handshake is closed.
    let mut silent = TcpStream::connect(workflow.addr).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(4), silent.read(&mut [0; 64])).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "closed after the handshake timeout: {closed:?}");

    // Nor does a TLS handshake buy more time: a client that completes it and then never sends
    // the HTTP/2 preface is closed too, within the same timeout.
    let mut roots = rustls::RootCertStore::empty();
    for cert in engarde::kit::tls::read_certificates("CA", Path::new(&pki.cert("ca"))).unwrap() {
        roots.add(cert).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(engarde::kit::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let started = std::time::Instant::now();
    let tcp = TcpStream::connect(workflow.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("the TLS handshake itself succeeds");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "the server speaks h2 by ALPN");
    let closed = tokio::time::timeout(Duration::from_secs(4), tls.read(&mut [0; 64])).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "closed without a preface: {closed:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "within the timeout: {:?}", started.elapsed());

    // Meanwhile, a real client is served.
    assert!(list_workflows(&https(&workflow), Some(pki.client_tls("ca", None))).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_client_certificate_of_the_client_ca() {
    let pki = Pki::new();
    let db = TestDb::new(Backend::Sqlite).await;
    let workflow = spawn_workflow_service(&db, &pki.server_env(true)).await;
    let url = https(&workflow);

    let without = list_workflows(&url, Some(pki.client_tls("ca", None))).await;
    assert!(without.is_err(), "no client certificate: {without:?}");
    let rogue = list_workflows(&url, Some(pki.client_tls("ca", Some("rogue-client")))).await;
    assert!(rogue.is_err(), "a client certificate of another CA: {rogue:?}");
    let with = list_workflows(&url, Some(pki.client_tls("ca", Some("client")))).await;
    assert!(with.expect("a client certificate of the client CA") > 0);
}

both_backends!(
    async fn agent_service_creates_agents_from_workflows_over_mtls(backend) {
        let pki = Pki::new();
        let workflow_db = TestDb::new(backend).await;
        let agent_db = TestDb::new(backend).await;
        let workflow = spawn_workflow_service(&workflow_db, &pki.server_env(true)).await;
        // agent-service serves TLS too, and calls workflow-service with its client certificate.
        let mut env = pki.server_env(false);
        env.extend([
            ("WORKFLOW_SERVICE_CA_FILE", pki.cert("ca")),
            ("WORKFLOW_SERVICE_CLIENT_CERT_FILE", pki.cert("client")),
            ("WORKFLOW_SERVICE_CLIENT_KEY_FILE", pki.key("client")),
        ]);
        let agent = spawn_agent_service(&agent_db, &https(&workflow), &env).await;

        let workflows_channel = channel(&https(&workflow), Some(pki.client_tls("ca", Some("client")))).await.unwrap();
        let mut workflows = WorkflowServiceClient::with_interceptor(workflows_channel, as_tenant("tenant-a"));
        let source = workflows.create_workflow(create_request("Posts over mTLS")).await.unwrap().into_inner();
        let agents_channel = channel(&https(&agent), Some(pki.client_tls("ca", None))).await.unwrap();
        let mut agents = AgentServiceClient::with_interceptor(agents_channel, as_tenant("tenant-a"));
        let made = agents
            .create_agent_from_workflow(apb::CreateAgentFromWorkflowRequest {
                workflow_id: source.id.clone(),
                ..Default::default()
            })
            .await
            .expect("CreateAgentFromWorkflow over mTLS")
            .into_inner();
        let snapshot = made.workflow_snapshot.expect("the workflow's snapshot");
        assert_eq!(snapshot.workflow_id, source.id);

        // Without its client certificate, agent-service cannot read the workflow: UNAVAILABLE.
        let lone_db = TestDb::new(backend).await;
        let lone = spawn_agent_service(
            &lone_db,
            &https(&workflow),
            &[("WORKFLOW_SERVICE_CA_FILE", pki.cert("ca")), ("WORKFLOW_CALL_TIMEOUT_MS", "2000".into())],
        )
        .await;
        let mut lone_agents = AgentServiceClient::with_interceptor(lone.channel().await, as_tenant("tenant-a"));
        expect_code(
            lone_agents
                .create_agent_from_workflow(apb::CreateAgentFromWorkflowRequest {
                    workflow_id: source.id.clone(),
                    ..Default::default()
                })
                .await,
            Code::Unavailable,
        );
    }
);

/// A TLS-terminating proxy on 127.0.0.1 in front of `upstream` (`host:port`), with the
/// certificate `name` of `pki`: what an HTTPS Langflow looks like to agent-service.
pub async fn https_proxy(pki: &Pki, name: &str, upstream: String) -> (String, tokio::task::JoinHandle<()>) {
    let certs = engarde::kit::tls::read_certificates("cert", Path::new(&pki.cert(name))).unwrap();
    let key = engarde::kit::tls::read_private_key("key", Path::new(&pki.key(name))).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(engarde::kit::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let task = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends here, as it should.
                let Ok(mut client) = acceptor.accept(client).await else { return };
                let Ok(mut server) = TcpStream::connect(&upstream).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                let _ = client.shutdown().await;
            });
        }
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_service_calls_langflow_over_https_trusting_langflow_ca_file() {
    let pki = Pki::new();
    let fake = FakeLangflow::start().await;
    let upstream = fake.url().trim_start_matches("http://").trim_end_matches('/').to_owned();
    let (langflow_url, proxy) = https_proxy(&pki, "server", upstream).await;

    // With the CA: the agent's flow is made, and it runs, through HTTPS.
    let app = spawn_with_langflow(Backend::Sqlite, &langflow_url, &[("LANGFLOW_CA_FILE", pki.cert("ca"))]).await;
    let (_, agent) = active_agent(&app, "tenant-a").await;
    let mut executions = app.executions("tenant-a").await;
    let ran = run_agent(&mut executions, &agent.id, "TLS", "s1").await;
    assert!(ran.output.contains("Write a post about TLS"), "{ran:?}");
    assert!(fake.runs() > 0, "the run reached Langflow");

    // Without it, Langflow's certificate is not trusted: UNAVAILABLE, naming the certificate.
    let untrusting = spawn_with_langflow(Backend::Sqlite, &langflow_url, &[]).await;
    let mut workflows = untrusting.workflows("tenant-a").await;
    let mut agents = untrusting.agents("tenant-a").await;
    let source = workflows.create_workflow(create_request("Posts")).await.unwrap().into_inner();
    let status = expect_code(
        agents
            .create_agent_from_workflow(apb::CreateAgentFromWorkflowRequest {
                workflow_id: source.id,
                ..Default::default()
            })
            .await,
        Code::Unavailable,
    );
    assert!(status.message().to_lowercase().contains("certificate"), "{status:?}");
    proxy.abort();
}

/// Starts `name` with `env` (SQLite, dev auth) and answers its stderr once it exited; panics
/// if it started serving.
async fn refused_start(name: &str, env: &[(&str, String)]) -> String {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut command = tokio::process::Command::new(binary(name));
    command
        .env_clear()
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("DATABASE_URL", db.url())
        .env("AUTH_MODE", "dev")
        .env("DB_STARTUP_TIMEOUT_SECS", "5");
    for (k, v) in env {
        command.env(k, v);
    }
    let output =
        tokio::time::timeout(Duration::from_secs(30), command.output()).await.expect("exits promptly").expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{name} with {env:?} refused to start: {stderr}");
    assert!(output.stdout.is_empty(), "{name} never announced itself as listening");
    stderr
}

/// A service, settings it must refuse, and what its message must say.
type BadSetting = (&'static str, Vec<(&'static str, String)>, &'static [&'static str]);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_tls_setting_stops_the_service_at_start_saying_why() {
    let pki = Pki::new();
    let missing = pki.path("missing.pem");
    let not_pem = pki.path("not.pem");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    let s = |v: &str| v.to_owned();
    let cases: Vec<BadSetting> = vec![
        ("workflow-service", vec![("TLS_KEY_FILE", pki.key("server"))], &["TLS_KEY_FILE", "without TLS_CERT_FILE"]),
        ("workflow-service", vec![("TLS_CERT_FILE", pki.cert("server"))], &["TLS_CERT_FILE", "without TLS_KEY_FILE"]),
        (
            "workflow-service",
            vec![("TLS_CERT_FILE", missing.clone()), ("TLS_KEY_FILE", pki.key("server"))],
            &["TLS_CERT_FILE", "missing.pem"],
        ),
        (
            "workflow-service",
            vec![("TLS_CERT_FILE", not_pem.clone()), ("TLS_KEY_FILE", pki.key("server"))],
            &["TLS_CERT_FILE", "no PEM certificate"],
        ),
        (
            "workflow-service",
            vec![("TLS_CERT_FILE", pki.cert("server")), ("TLS_KEY_FILE", pki.cert("server"))],
            &["TLS_KEY_FILE", "no PEM private key"],
        ),
        (
            "workflow-service",
            vec![("TLS_CERT_FILE", pki.cert("server")), ("TLS_KEY_FILE", pki.key("client"))],
            &["TLS_CERT_FILE", "TLS_KEY_FILE", "usable pair"],
        ),
        ("workflow-service", vec![("TLS_CLIENT_CA_FILE", pki.cert("ca"))], &["TLS_CLIENT_CA_FILE", "needs"]),
        (
            "agent-service",
            vec![
                ("TLS_CERT_FILE", pki.cert("server")),
                ("TLS_KEY_FILE", pki.key("server")),
                ("TLS_CLIENT_CA_FILE", not_pem.clone()),
            ],
            &["TLS_CLIENT_CA_FILE", "no PEM certificate"],
        ),
        (
            "agent-service",
            vec![("WORKFLOW_SERVICE_URL", s("http://127.0.0.1:1")), ("WORKFLOW_SERVICE_CA_FILE", pki.cert("ca"))],
            &["WORKFLOW_SERVICE_URL", "must then be https://"],
        ),
        (
            "agent-service",
            vec![
                ("WORKFLOW_SERVICE_URL", s("https://127.0.0.1:1")),
                ("WORKFLOW_SERVICE_CLIENT_CERT_FILE", pki.cert("client")),
            ],
            &["WORKFLOW_SERVICE_CLIENT_CERT_FILE", "without WORKFLOW_SERVICE_CLIENT_KEY_FILE"],
        ),
        (
            "agent-service",
            vec![("WORKFLOW_SERVICE_URL", s("https://127.0.0.1:1")), ("WORKFLOW_SERVICE_CA_FILE", missing.clone())],
            &["WORKFLOW_SERVICE_CA_FILE", "missing.pem"],
        ),
        (
            "agent-service",
            vec![("LANGFLOW_URL", s("https://127.0.0.1:1")), ("LANGFLOW_CA_FILE", not_pem.clone())],
            &["LANGFLOW_CA_FILE", "no PEM certificate"],
        ),
    ];
    for (name, env, expected) in cases {
        let stderr = refused_start(name, &env).await;
        for part in expected {
            assert!(stderr.contains(part), "{name} with {env:?}: {part:?} not in {stderr}");
        }
    }
}

/// mTLS as the service identity: a verified client certificate named in SERVICE_CLIENT_NAMES
/// stands for agent-service on a call that carries no bearer token, without any shared secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_named_as_a_service_is_the_service_identity() {
    const TENANT_SECRET: &str = "the-tenants-hs256-secret-for-mtls-012345";
    let pki = Pki::new();
    pki.issue("job", "ca", "/CN=reporting-job", "subjectAltName=DNS:reporting-job\nextendedKeyUsage=clientAuth\n");
    let db = TestDb::new(Backend::Sqlite).await;
    let mut env = pki.server_env(true);
    env.extend([
        ("AUTH_MODE", "jwt".to_owned()),
        ("JWT_HS256_SECRET", TENANT_SECRET.to_owned()),
        // No shared secret at all: the certificate is the identity.
        ("SERVICE_TOKEN_SECRET", String::new()),
        ("SERVICE_CLIENT_NAMES", "agent-service".to_owned()),
    ]);
    let workflow = spawn_workflow_service(&db, &env).await;
    let claims = serde_json::json!({"tenant_id": "tenant-a", "exp": chrono::Utc::now().timestamp() + 600});
    let key = jsonwebtoken::EncodingKey::from_secret(TENANT_SECRET.as_bytes());
    let tenant_token =
        format!("Bearer {}", jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap());
    /// A call for tenant-a, with `authorization` when given.
    fn call<T>(message: T, authorization: Option<&str>) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert("x-tenant-id", "tenant-a".parse().unwrap());
        if let Some(authorization) = authorization {
            request.metadata_mut().insert("authorization", authorization.parse().unwrap());
        }
        request
    }

    let as_agent_service = channel(&https(&workflow), Some(pki.client_tls("ca", Some("client")))).await.unwrap();
    let mut client = WorkflowServiceClient::new(as_agent_service);
    let own = client
        .create_workflow(call(create_request("Counted by certificate"), Some(&tenant_token)))
        .await
        .expect("a tenant's token over the service's connection is the tenant's")
        .into_inner();
    let record = |n: u32| wpb::RecordExecutionRequest {
        workflow_id: own.id.clone(),
        execution_id: format!("exec-{n}"),
        succeeded: true,
    };
    let counted = client.record_execution(call(record(1), None)).await.expect("the certificate's call").into_inner();
    assert!(counted.counted);
    // The same connection with a tenant's token: the tenant's call, refused.
    expect_code(client.record_execution(call(record(2), Some(&tenant_token))).await, Code::PermissionDenied);
    // and the certificate opens no tenant RPC.
    expect_code(client.list_workflows(call(wpb::ListWorkflowsRequest::default(), None)).await, Code::PermissionDenied);

    // A certificate of the CA that names no service is nobody without a token.
    let as_job = channel(&https(&workflow), Some(pki.client_tls("ca", Some("job")))).await.unwrap();
    let mut job = WorkflowServiceClient::new(as_job);
    expect_code(job.record_execution(call(record(3), None)).await, Code::Unauthenticated);
    let read = client
        .get_workflow(call(wpb::GetWorkflowRequest { id: own.id.clone() }, Some(&tenant_token)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.execution_count, 1, "only the certificate's report was counted");

    // A name proves nothing without mTLS, and production mode needs some service identity.
    let stderr = refused_start("workflow-service", &[("SERVICE_CLIENT_NAMES", "agent-service".into())]).await;
    assert!(stderr.contains("SERVICE_CLIENT_NAMES needs TLS_CLIENT_CA_FILE"), "{stderr}");
    let stderr =
        refused_start("workflow-service", &[("AUTH_MODE", "jwt".into()), ("JWT_HS256_SECRET", TENANT_SECRET.into())])
            .await;
    assert!(stderr.contains("SERVICE_TOKEN_SECRET"), "{stderr}");
}
