//! The harness: fresh databases, the real service binaries on port 0, typed clients.
//!
//! Set `TEST_LOG=1` to see the services' logs on stderr; otherwise each service logs to a file
//! whose tail is printed by [`ServiceProcess::logs`] when a test wants to show it.

#![allow(dead_code)] // a harness: not every test uses every helper
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use engarde::proto::agent::v1::agent_service_client::AgentServiceClient;
use engarde::proto::agent::v1::execution_service_client::ExecutionServiceClient;
use engarde::proto::agent::v1::run_service_client::RunServiceClient;
use engarde::proto::workflow::v1::workflow_service_client::WorkflowServiceClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The server URL tests create their PostgreSQL databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database that exists for one test: a fresh PostgreSQL database (dropped afterwards) or
/// an SQLite file in a temporary directory.
pub struct TestDb {
    url: String,
    pg_name: Option<String>,
    _dir: tempfile::TempDir,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => {
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                Self { url, pg_name: None, _dir: dir }
            }
            Backend::Postgres => {
                let name = format!("engarde_test_{}", uuid::Uuid::new_v4().simple());
                psql(&format!("CREATE DATABASE {name}"));
                let admin = postgres_admin_url();
                let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
                Self { url: format!("{base}/{name}"), pg_name: Some(name), _dir: dir }
            }
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn backend(&self) -> Backend {
        if self.pg_name.is_some() { Backend::Postgres } else { Backend::Sqlite }
    }

    /// Runs one SQL statement on this database (either backend) over a connection of its own,
    /// as an operator would: for reading and changing what the services store behind their back.
    /// Answers the first column of the first row, which must be text on both backends (a string
    /// literal or a `CASE` of them), or "" when there is no row.
    pub async fn sql(&self, sql: &str) -> String {
        use sqlx::Connection as _;
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        let row: Option<(String,)> = match self.backend() {
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url).await.expect("connect to PostgreSQL");
                sqlx::query_as(sql).fetch_optional(&mut conn).await.expect("SQL on PostgreSQL")
            }
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url).await.expect("open the SQLite file");
                sqlx::query_as(sql).fetch_optional(&mut conn).await.expect("SQL on SQLite")
            }
        };
        row.map(|(text,)| text).unwrap_or_default()
    }

    /// Runs SQL on this PostgreSQL database with psql, as an operator would; answers its
    /// unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        assert!(self.pg_name.is_some(), "psql needs a PostgreSQL database");
        psql_on(&self.url, sql)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = &self.pg_name {
            psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

/// Runs one statement on the admin database with psql (synchronous, so `Drop` can use it).
fn psql(sql: &str) {
    psql_on(&postgres_admin_url(), sql);
}

/// Runs SQL on the database at `url` with psql; answers its unaligned output, trimmed.
fn psql_on(url: &str, sql: &str) -> String {
    let output = std::process::Command::new("psql")
        .args([url, "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql runs");
    assert!(output.status.success(), "psql failed: {sql}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Where cargo put the workspace's binaries (next to this test binary's `deps/` folder).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --workspace --bins` first", path.display());
    path
}

/// The secret the services of a test share for their calls to each other
/// (SERVICE_TOKEN_SECRET), unless the test sets another.
pub const SERVICE_SECRET: &str = "the-services-own-test-secret-0123456789";

/// A `Bearer` header value of a service token signed with `secret`, naming `service`.
pub fn service_bearer(service: &str, secret: &str) -> String {
    engarde::kit::service_identity::ServiceTokens::new(service, secret.as_bytes()).bearer()
}

/// A running service binary, killed when dropped.
pub struct ServiceProcess {
    pub name: &'static str,
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl ServiceProcess {
    /// Starts `name` with `env` and waits for its "listening on" line.
    pub async fn start(name: &'static str, env: &[(&str, String)]) -> Self {
        let log_dir = tempfile::tempdir().expect("temp dir");
        let log = log_dir.path().join(format!("{name}.log"));
        let stderr = if std::env::var_os("TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::from(std::fs::File::create(&log).expect("log file"))
        };
        let mut command = Command::new(binary(name));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .env("DB_STARTUP_TIMEOUT_SECS", "20")
            // The services' shared secret (AUTH_MODE=jwt needs one); a test's own env wins.
            .env("SERVICE_TOKEN_SECRET", SERVICE_SECRET)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let prefix = format!("{name} listening on ");
        let addr = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.strip_prefix(&prefix) {
                    return Some(addr.trim().parse::<SocketAddr>().expect("address"));
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        let Some(addr) = addr else {
            let logs = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("{name} did not start; its log:\n{logs}");
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { name, addr, child, log, _log_dir: log_dir }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url()).expect("url").connect().await.expect("connect")
    }

    pub fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety concerns.
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// SIGKILL: the process dies on the spot, mid-request or not.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Waits for the process to exit; `None` if it is still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait()).await.ok().and_then(Result::ok)
    }

    /// The service's log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The environment of a service on `db` in development auth mode.
pub fn dev_env(db: &TestDb) -> Vec<(&'static str, String)> {
    vec![("DATABASE_URL", db.url().to_owned()), ("AUTH_MODE", "dev".into())]
}

pub async fn spawn_workflow_service(db: &TestDb, extra: &[(&str, String)]) -> ServiceProcess {
    let mut env = dev_env(db);
    env.extend(extra.iter().cloned().map(|(k, v)| (leak(k), v)));
    ServiceProcess::start("workflow-service", &env).await
}

pub async fn spawn_agent_service(db: &TestDb, workflow_url: &str, extra: &[(&str, String)]) -> ServiceProcess {
    let mut env = dev_env(db);
    env.push(("WORKFLOW_SERVICE_URL", workflow_url.to_owned()));
    env.extend(extra.iter().cloned().map(|(k, v)| (leak(k), v)));
    ServiceProcess::start("agent-service", &env).await
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

/// Adds the `x-tenant-id` header to every call (the service runs in development auth mode).
#[derive(Clone)]
pub struct AsTenant(pub tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for AsTenant {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("x-tenant-id", self.0.clone());
        Ok(request)
    }
}

pub fn as_tenant(tenant: &str) -> AsTenant {
    AsTenant(tenant.parse().expect("ascii tenant"))
}

pub type WorkflowClient = WorkflowServiceClient<InterceptedService<Channel, AsTenant>>;
pub type AgentClient = AgentServiceClient<InterceptedService<Channel, AsTenant>>;
pub type ExecutionClient = ExecutionServiceClient<InterceptedService<Channel, AsTenant>>;
pub type RunClient = RunServiceClient<InterceptedService<Channel, AsTenant>>;

/// Both services on fresh databases, wired together, in development auth mode.
pub struct TestApp {
    pub workflow: ServiceProcess,
    pub agent: ServiceProcess,
    pub workflow_db: TestDb,
    pub agent_db: TestDb,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    let workflow_db = TestDb::new(backend).await;
    let agent_db = TestDb::new(backend).await;
    let workflow = spawn_workflow_service(&workflow_db, &[]).await;
    let agent = spawn_agent_service(&agent_db, &workflow.url(), &[]).await;
    TestApp { workflow, agent, workflow_db, agent_db }
}

impl TestApp {
    pub async fn workflows(&self, tenant: &str) -> WorkflowClient {
        WorkflowServiceClient::with_interceptor(self.workflow.channel().await, as_tenant(tenant))
    }

    pub async fn agents(&self, tenant: &str) -> AgentClient {
        AgentServiceClient::with_interceptor(self.agent.channel().await, as_tenant(tenant))
    }

    /// ExecutionService: executions, sessions and feedback.
    pub async fn executions(&self, tenant: &str) -> ExecutionClient {
        ExecutionServiceClient::with_interceptor(self.agent.channel().await, as_tenant(tenant))
    }

    /// RunService: walker runs, reviews and schedule previews.
    pub async fn runs(&self, tenant: &str) -> RunClient {
        RunServiceClient::with_interceptor(self.agent.channel().await, as_tenant(tenant))
    }
}

/// A workflow-service alone, for the tests of workflows.
pub struct WorkflowApp {
    pub service: ServiceProcess,
    pub db: TestDb,
}

pub async fn spawn_workflows(backend: Backend) -> WorkflowApp {
    let db = TestDb::new(backend).await;
    let service = spawn_workflow_service(&db, &[]).await;
    WorkflowApp { service, db }
}

impl WorkflowApp {
    pub async fn client(&self, tenant: &str) -> WorkflowClient {
        WorkflowServiceClient::with_interceptor(self.service.channel().await, as_tenant(tenant))
    }
}

/// The field violations of an INVALID_ARGUMENT status, as (field, description) pairs.
pub fn field_violations(status: &tonic::Status) -> Vec<(String, String)> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|br| br.field_violations.into_iter().map(|v| (v.field, v.description)).collect())
        .unwrap_or_default()
}

/// Asserts a call failed with `code`, returning the status for further checks.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: tonic::Code) -> tonic::Status {
    match result {
        Ok(v) => panic!("expected {code:?}, got OK: {v:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "unexpected status: {status:?}");
            status
        }
    }
}

/// A loopback port free right now (for a listener the test configures, such as METRICS_ADDR).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A builder of the tests' own HTTP clients. reqwest is built with `rustls-no-provider` (the
/// kit's JWKS client and agent-service set their ring-only TLS themselves), so a client built
/// without one needs the process's default provider: ring, installed here once.
pub fn http_client() -> reqwest::ClientBuilder {
    static RING: std::sync::Once = std::sync::Once::new();
    RING.call_once(|| {
        // Fails only when a provider is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
}

/// The Prometheus text a service serves on `port`, waiting for it to come up.
pub async fn scrape(port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let http = http_client().build().expect("HTTP client");
    for _ in 0..50 {
        if let Ok(response) = http.get(&url).send().await
            && let Ok(body) = response.text().await
        {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no metrics at {url}");
}

/// The sum of a metric's samples whose labels include every one of `labels` (`k="v"` each).
pub fn metric_sum(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `check` until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Defines one test per backend from one async body taking a [`Backend`].
#[macro_export]
macro_rules! both_backends {
    ($(#[$meta:meta])* async fn $name:ident($backend:ident) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($backend: $crate::helpers::Backend) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run($crate::helpers::Backend::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                run($crate::helpers::Backend::Postgres).await
            }
        }
    };
}
