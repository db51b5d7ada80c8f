//! Identity providers: tokens verified with the keys of a JWK set (JWT_JWKS_URL) that a local
//! provider on loopback serves, rotates and takes down while the services run.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engarde::proto::agent::v1 as apb;
use engarde::proto::agent::v1::agent_service_client::AgentServiceClient;
use engarde::proto::workflow::v1 as pb;
use engarde::proto::workflow::v1::workflow_service_client::WorkflowServiceClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::helpers::*;
use crate::workflows_auth::rsa_key_pair;

const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "engarde";

/// An RSA signing key of the provider: its `kid`, private key and public JWK.
struct ProviderKey {
    kid: &'static str,
    key: jsonwebtoken::EncodingKey,
    public_pem: Vec<u8>,
    jwk: serde_json::Value,
}

impl ProviderKey {
    fn new(kid: &'static str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = rsa_key_pair(dir.path());
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(private).unwrap()).unwrap();
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::RS256).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        Self { kid, key, public_pem: std::fs::read(public).unwrap(), jwk: serde_json::to_value(jwk).unwrap() }
    }

    /// `Bearer <token>` for `tenant`, signed by this key under `kid`.
    fn bearer_as(&self, kid: &str, tenant: &str) -> String {
        self.bearer_with(kid, serde_json::json!({"tenant_id": tenant}))
    }

    /// `Bearer <token>` signed by this key under `kid`, of good claims (tenant `tA`) with
    /// `changes` applied.
    fn bearer_with(&self, kid: &str, changes: serde_json::Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(kid.to_owned());
        format!("Bearer {}", jsonwebtoken::encode(&header, &claims(changes), &self.key).unwrap())
    }

    fn bearer(&self, tenant: &str) -> String {
        self.bearer_as(self.kid, tenant)
    }
}

/// Good claims (tenant `tA`, the configured issuer and audience) with `changes` applied.
fn claims(changes: serde_json::Value) -> serde_json::Value {
    let mut claims = serde_json::json!({"tenant_id": "tA", "exp": chrono::Utc::now().timestamp() + 600,
        "iss": ISSUER, "aud": AUDIENCE});
    for (name, value) in changes.as_object().unwrap() {
        claims[name] = value.clone();
    }
    claims
}

/// `Bearer <token>` of an unsigned token (`alg: none`): the claims of a good token of `key`,
/// under the header `{"alg":"none","typ":"JWT"}` (base64url), with no signature.
fn unsigned_bearer(key: &ProviderKey) -> String {
    const NONE_HEADER: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
    let signed = key.bearer("tA");
    let payload = signed.split('.').nth(1).unwrap();
    format!("Bearer {NONE_HEADER}.{payload}.")
}

/// `Bearer <token>` signed HS256 with `secret` under `kid`: with the RSA public key as the
/// secret, the HS/RS confusion.
fn hs256_bearer(secret: &[u8], kid: &str) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    let key = jsonwebtoken::EncodingKey::from_secret(secret);
    format!("Bearer {}", jsonwebtoken::encode(&header, &claims(serde_json::json!({})), &key).unwrap())
}

/// The identity provider: serves `{"keys": [...]}` at /jwks, counts its hits, can be down.
#[derive(Clone)]
struct Provider {
    url: String,
    keys: Arc<Mutex<Vec<serde_json::Value>>>,
    hits: Arc<AtomicUsize>,
    up: Arc<AtomicBool>,
}

impl Provider {
    async fn start(keys: &[&ProviderKey], up: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let provider = Self {
            url: format!("http://{}/jwks", listener.local_addr().unwrap()),
            keys: Arc::default(),
            hits: Arc::default(),
            up: Arc::new(AtomicBool::new(up)),
        };
        provider.publish(keys);
        let state = provider.clone();
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let state = state.clone();
                async move {
                    state.hits.fetch_add(1, Ordering::SeqCst);
                    if !state.up.load(Ordering::SeqCst) {
                        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, String::new());
                    }
                    let keys = state.keys.lock().unwrap().clone();
                    (axum::http::StatusCode::OK, serde_json::json!({ "keys": keys }).to_string())
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        provider
    }

    /// Publishes these keys from now on (a rotation).
    fn publish(&self, keys: &[&ProviderKey]) {
        *self.keys.lock().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    fn set_up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The settings of a service that trusts this provider.
    fn env(&self, refresh_secs: u64) -> Vec<(&'static str, String)> {
        vec![
            ("AUTH_MODE", "jwt".into()),
            ("JWT_JWKS_URL", self.url.clone()),
            ("JWT_JWKS_REFRESH_SECS", refresh_secs.to_string()),
            ("JWT_JWKS_MIN_REFRESH_SECS", "1".into()),
            ("JWT_ISSUER", ISSUER.into()),
            ("JWT_AUDIENCE", AUDIENCE.into()),
        ]
    }
}

fn with_auth<T>(message: T, authorization: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", authorization.parse().unwrap());
    request
}

async fn list(client: &mut WorkflowServiceClient<Channel>, bearer: &str) -> Result<(), tonic::Status> {
    client.list_workflows(with_auth(pb::ListWorkflowsRequest::default(), bearer)).await.map(drop)
}

/// Calls until `bearer` gets `code` (Ok as None), for at most `within`; how long it took.
async fn until(
    client: &mut WorkflowServiceClient<Channel>,
    bearer: &str,
    code: Option<Code>,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let got = list(client, bearer).await.err().map(|s| s.code());
        if got == code {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "still {got:?} after {within:?}, waiting for {code:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_is_taken_without_a_restart_and_unknown_kids_refetch_at_most_once_a_second() {
    let (old, new) = (ProviderKey::new("2026-old"), ProviderKey::new("2026-new"));
    let provider = Provider::start(&[&old], true).await;
    let db = TestDb::new(Backend::Sqlite).await;
    // The background refresh (every 300 s) only fetches at start here: every later fetch is a
    // refetch asked by a call with an unknown kid, at most once a second.
    let service = spawn_workflow_service(&db, &provider.env(300)).await;
    let mut client = WorkflowServiceClient::new(service.channel().await);

    let created = client.create_workflow(with_auth(crate::workflows_crud::create_request("JWKS"), &old.bearer("tA")));
    assert_eq!(created.await.unwrap().into_inner().tenant_id, "tA");
    assert_eq!(provider.hits(), 1, "one fetch at start");

    // Every bad token is UNAUTHENTICATED, and none of them asks the provider for keys.
    let now = chrono::Utc::now().timestamp();
    for (what, bearer) in [
        ("malformed", "Bearer not.a.jwt".to_owned()),
        ("alg none", unsigned_bearer(&old)),
        ("HS256 signed with the RSA public key (HS/RS confusion)", hs256_bearer(&old.public_pem, old.kid)),
        ("expired", old.bearer_with(old.kid, serde_json::json!({"exp": now - 3600}))),
        ("wrong iss", old.bearer_with(old.kid, serde_json::json!({"iss": "https://evil.example"}))),
        ("wrong aud", old.bearer_with(old.kid, serde_json::json!({"aud": "someone-else"}))),
    ] {
        let status = expect_code(list(&mut client, &bearer).await, Code::Unauthenticated);
        assert!(status.message().starts_with("invalid token"), "{what}: {}", status.message());
    }
    let none = client.list_workflows(pb::ListWorkflowsRequest::default()).await;
    assert!(expect_code(none, Code::Unauthenticated).message().contains("missing credentials"));
    assert_eq!(provider.hits(), 1, "bad tokens fetch nothing");

    // A kid the provider never published: one refetch, then UNAUTHENTICATED.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let status = expect_code(list(&mut client, &new.bearer("tA")).await, Code::Unauthenticated);
    assert!(status.message().contains("no key with kid \"2026-new\""), "{}", status.message());
    assert_eq!(provider.hits(), 2);
    // Again at once: refused without asking the provider.
    expect_code(list(&mut client, &new.bearer("tA")).await, Code::Unauthenticated);
    assert_eq!(provider.hits(), 2);

    // A burst of made-up kids, concurrently: each UNAUTHENTICATED, and the provider is asked
    // at most once per second of the burst.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (hits, start) = (provider.hits(), Instant::now());
    let burst = (0..40).map(|i| {
        let mut client = client.clone();
        let bearer = old.bearer_as(&format!("made-up-{i}"), "tA");
        async move { list(&mut client, &bearer).await }
    });
    for result in futures::future::join_all(burst).await {
        expect_code(result, Code::Unauthenticated);
    }
    let elapsed = start.elapsed().as_secs();
    let fetched = provider.hits() - hits;
    assert!(fetched >= 1 && fetched as u64 <= 1 + elapsed, "{fetched} fetches in {elapsed} s for 40 unknown kids");

    // The provider rotates: the new key is published beside the old one. The new key's tokens
    // work at once (their kid, unknown to the service, refetches the set), the old key's too.
    provider.publish(&[&old, &new]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let hits = provider.hits();
    list(&mut client, &new.bearer("tA")).await.unwrap();
    assert_eq!(provider.hits(), hits + 1);
    list(&mut client, &old.bearer("tA")).await.unwrap();

    // The old key is retired. Its tokens are taken as long as the service's set has it; once the
    // set is fetched again (here asked by one more unknown kid), they fail.
    provider.publish(&[&new]);
    list(&mut client, &old.bearer("tA")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    expect_code(list(&mut client, &new.bearer_as("2027", "tA")).await, Code::Unauthenticated);
    let status = expect_code(list(&mut client, &old.bearer("tA")).await, Code::Unauthenticated);
    assert!(status.message().contains("no key with kid \"2026-old\""), "{}", status.message());
    let mine = client.list_workflows(with_auth(pb::ListWorkflowsRequest::default(), &new.bearer("tA"))).await;
    assert!(mine.unwrap().into_inner().workflows.iter().any(|w| w.tenant_id == "tA"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_refresh_takes_a_retired_key_away_without_any_call() {
    let (old, new) = (ProviderKey::new("old"), ProviderKey::new("new"));
    let provider = Provider::start(&[&old, &new], true).await;
    let db = TestDb::new(Backend::Sqlite).await;
    let service = spawn_workflow_service(&db, &provider.env(2)).await;
    let mut client = WorkflowServiceClient::new(service.channel().await);
    list(&mut client, &old.bearer("tA")).await.unwrap();
    provider.publish(&[&new]);
    let hits = provider.hits();
    // Within two refresh periods the old kid is gone, though no call asked for a refetch.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert!(provider.hits() > hits, "the background refresh fetched the set");
    let status = expect_code(list(&mut client, &old.bearer("tA")).await, Code::Unauthenticated);
    assert!(status.message().contains("no key with kid \"old\""), "{}", status.message());
    list(&mut client, &new.bearer("tA")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_identity_provider_down_at_start_calls_are_unavailable_until_it_recovers() {
    let key = ProviderKey::new("k1");
    let provider = Provider::start(&[&key], false).await;
    let workflow_db = TestDb::new(Backend::Sqlite).await;
    // The service starts without any key.
    let metrics = free_port();
    let mut env = provider.env(300);
    env.push(("METRICS_ADDR", format!("127.0.0.1:{metrics}")));
    let workflow = spawn_workflow_service(&workflow_db, &env).await;
    let mut workflows = WorkflowServiceClient::new(workflow.channel().await);
    let status = expect_code(list(&mut workflows, &key.bearer("tA")).await, Code::Unavailable);
    assert!(status.message().contains("identity provider keys unavailable"), "{}", status.message());
    // A bad token is still UNAUTHENTICATED, not UNAVAILABLE.
    expect_code(list(&mut workflows, "Bearer not.a.jwt").await, Code::Unauthenticated);
    // A service token is judged by the services' own secret, not the provider's keys: not
    // UNAVAILABLE, but what the service identity gets on a tenant RPC.
    let mut as_service =
        with_auth(pb::ListWorkflowsRequest::default(), &service_bearer("agent-service", SERVICE_SECRET));
    as_service.metadata_mut().insert("x-tenant-id", "tA".parse().unwrap());
    expect_code(workflows.list_workflows(as_service).await, Code::PermissionDenied);

    // The provider comes back: the service takes its keys by itself (retrying every
    // JWT_JWKS_MIN_REFRESH_SECS), without a restart.
    provider.set_up();
    until(&mut workflows, &key.bearer("tA"), None, Duration::from_secs(10)).await;
    let scraped = scrape(metrics).await;
    assert!(metric_sum(&scraped, "jwks_fetches_total", &[r#"outcome="error""#]) >= 1.0, "{scraped}");
    assert!(metric_sum(&scraped, "jwks_fetches_total", &[r#"outcome="ok""#]) >= 1.0, "{scraped}");
    assert_eq!(metric_sum(&scraped, "jwks_keys", &[]), 1.0, "{scraped}");

    // agent-service trusts the same provider.
    let agent_db = TestDb::new(Backend::Sqlite).await;
    let agent = spawn_agent_service(&agent_db, &workflow.url(), &provider.env(300)).await;
    let mut agents = AgentServiceClient::new(agent.channel().await);
    agents.list_agents(with_auth(apb::ListAgentsRequest::default(), &key.bearer("tA"))).await.unwrap();
    let status = expect_code(
        agents.list_agents(with_auth(apb::ListAgentsRequest::default(), &key.bearer_as("other", "tA"))).await,
        Code::Unauthenticated,
    );
    assert!(status.message().contains("no key with kid \"other\""), "{}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_provider_over_https_is_trusted_through_jwt_jwks_ca_file() {
    let key = ProviderKey::new("tls-key");
    let provider = Provider::start(&[&key], true).await;
    let pki = crate::tls::Pki::new();
    let upstream = provider.url.trim_start_matches("http://").trim_end_matches("/jwks").to_owned();
    let (https, proxy) = crate::tls::https_proxy(&pki, "server", upstream).await;
    let url = format!("{https}/jwks");
    let env = |ca: Option<String>| {
        let mut env = provider.env(300);
        env.retain(|(name, _)| *name != "JWT_JWKS_URL");
        env.push(("JWT_JWKS_URL", url.clone()));
        env.extend(ca.map(|ca| ("JWT_JWKS_CA_FILE", ca)));
        env
    };

    // Trusting the provider's CA: its keys are fetched over HTTPS.
    let db = TestDb::new(Backend::Sqlite).await;
    let trusting = spawn_workflow_service(&db, &env(Some(pki.cert("ca")))).await;
    let mut client = WorkflowServiceClient::new(trusting.channel().await);
    until(&mut client, &key.bearer("tA"), None, Duration::from_secs(10)).await;

    // Without it the provider's certificate is not trusted: no keys, UNAVAILABLE.
    let other_db = TestDb::new(Backend::Sqlite).await;
    let untrusting = spawn_workflow_service(&other_db, &env(None)).await;
    let mut client = WorkflowServiceClient::new(untrusting.channel().await);
    let status = expect_code(list(&mut client, &key.bearer("tA")).await, Code::Unavailable);
    assert!(status.message().contains("identity provider keys unavailable"), "{}", status.message());
    proxy.abort();
}
