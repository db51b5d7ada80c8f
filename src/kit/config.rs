//! Settings every service takes, from flags or environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use super::auth::{Authenticator, Tenant, TokenRules};
use super::calls::Callers;
use super::connections::ConnectionLimits;
use super::db::DbSettings;
use super::otlp::TraceExportConfig;
use super::page_budget::PageBudget;
use super::service_identity::{self, ServiceAccess, ServiceTokens, ServiceVerifier};
use super::telemetry::LogFormat;
use super::tls::ServerTls;

/// How callers authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Bearer JWTs with a `tenant_id` claim (production).
    Jwt,
    /// No authentication; the tenant comes from `x-tenant-id` (local development only).
    Dev,
}

/// The settings shared by both services. Each service flattens this into its own `Config` and
/// sets the defaults of `LISTEN_ADDR` and `DATABASE_URL`.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonConfig {
    /// PostgreSQL only: the schema for this service's tables (created when missing).
    #[arg(long, env = "DATABASE_SCHEMA")]
    pub database_schema: Option<String>,
    /// Most database connections this process opens.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// How long to wait for the database at start before giving up.
    #[arg(long, env = "DB_STARTUP_TIMEOUT_SECS", default_value_t = 60)]
    pub db_startup_timeout_secs: u64,
    /// `jwt` (production) or `dev` (no authentication; `x-tenant-id` header).
    #[arg(long, env = "AUTH_MODE", value_enum, default_value_t = AuthMode::Jwt)]
    pub auth_mode: AuthMode,
    /// HS256 shared secret for verifying JWTs: at least 32 bytes (start-up refuses a shorter one).
    #[arg(long, env = "JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<String>,
    /// File holding the PEM public key for verifying RS256 JWTs.
    #[arg(long, env = "JWT_RS256_PUBLIC_KEY_FILE")]
    pub jwt_rs256_public_key_file: Option<std::path::PathBuf>,
    /// URL of an identity provider's JWK set (e.g. `https://idp.example/.well-known/jwks.json`),
    /// instead of a secret or key file: a token is verified with the key its `kid` names.
    #[arg(long, env = "JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
    /// A CA certificate file (PEM) to trust for an `https://` JWT_JWKS_URL, besides the public
    /// roots compiled in.
    #[arg(long, env = "JWT_JWKS_CA_FILE")]
    pub jwt_jwks_ca_file: Option<std::path::PathBuf>,
    /// How often the JWK set is fetched again, in seconds, so that a key rotation is taken.
    #[arg(long, env = "JWT_JWKS_REFRESH_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub jwt_jwks_refresh_secs: u64,
    /// Least time between fetches of the JWK set, in seconds: a token with an unknown `kid`
    /// refetches it at most this often; a set never fetched is retried this often.
    #[arg(long, env = "JWT_JWKS_MIN_REFRESH_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub jwt_jwks_min_refresh_secs: u64,
    /// The signing algorithms taken, comma-separated (e.g. `RS256,ES256`). Unset: RS256 with
    /// JWT_JWKS_URL or JWT_RS256_PUBLIC_KEY_FILE, HS256 with JWT_HS256_SECRET.
    #[arg(long, env = "JWT_ALGORITHMS")]
    pub jwt_algorithms: Option<String>,
    /// When set, every token must carry this `iss` claim (a token without one is refused).
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// When set, every token must carry this `aud` claim (a token without one is refused).
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Clock skew allowed on a token's `exp` and `nbf`, in seconds: a token is taken this long
    /// after it expired and this long before its `nbf`.
    #[arg(long, env = "JWT_LEEWAY_SECS", default_value_t = super::auth::DEFAULT_LEEWAY.as_secs())]
    pub jwt_leeway_secs: u64,
    /// The services' own secret (at least 32 bytes, not JWT_HS256_SECRET): agent-service signs
    /// its calls to workflow-service with it, and workflow-service takes only such calls for
    /// RecordExecution. Required with AUTH_MODE=jwt unless a client certificate is the
    /// service identity instead (SERVICE_CLIENT_NAMES; in agent-service, its
    /// WORKFLOW_SERVICE_CLIENT_CERT_FILE); optional in dev mode.
    #[arg(long, env = "SERVICE_TOKEN_SECRET", hide_env_values = true)]
    pub service_token_secret: Option<String>,
    /// Names of client certificates (as mTLS verified them: the first DNS name, else the common
    /// name) that are our own services: a call over such a connection that carries no bearer
    /// token is that service's, as with a service token. Comma-separated; needs
    /// TLS_CLIENT_CA_FILE.
    #[arg(long, env = "SERVICE_CLIENT_NAMES", value_delimiter = ',')]
    pub service_client_names: Vec<String>,
    /// Dev mode: the tenant of calls without an `x-tenant-id` header.
    #[arg(long, env = "DEV_TENANT_ID", default_value = super::auth::DEFAULT_DEV_TENANT)]
    pub dev_tenant_id: String,
    /// Serve Prometheus metrics on this address (`host:port`, path /metrics); unset: no metrics.
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log lines held for the thread that writes them to stderr. A call never waits for stderr;
    /// when this many lines wait already, further lines are dropped and counted
    /// (`log_lines_dropped_total`).
    #[arg(long, env = "LOG_BUFFER_LINES", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub log_buffer_lines: u32,
    /// How long in-flight RPCs may take to finish after SIGTERM.
    #[arg(long, env = "DRAIN_TIMEOUT_SECS", default_value_t = 20)]
    pub drain_timeout_secs: u64,
    /// After SIGTERM, how long health reports NOT_SERVING before the server stops accepting new
    /// calls, so that load balancers and health watchers see it first.
    #[arg(long, env = "SHUTDOWN_DELAY_MS", default_value_t = 500)]
    pub shutdown_delay_ms: u64,
    /// Deadline of an RPC whose caller sets none (a shorter `grpc-timeout` wins).
    #[arg(long, env = "RPC_TIMEOUT_SECS", default_value_t = 30)]
    pub rpc_timeout_secs: u64,
    /// Most RPCs served at once by this process; more wait their turn. Health checks and
    /// reflection are not counted and never wait.
    #[arg(long, env = "MAX_CONCURRENT_RPCS", default_value_t = 512)]
    pub max_concurrent_rpcs: usize,
    /// Largest request or response message, in bytes.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// Most bytes of items in one page of a List answer: a page stops before it (with a
    /// next_page_token) even when page_size would allow more. Unset: MAX_MESSAGE_BYTES less
    /// 64 KiB (at most half of it) for the rest of the answer, which is also the most it may be.
    #[arg(long, env = "MAX_PAGE_BYTES")]
    pub max_page_bytes: Option<usize>,
    /// Most TCP connections open at once; beyond it new connections are refused (closed at
    /// once) so that the open ones keep their file descriptors and memory. Lowered at start to
    /// the process's open-file limit (`ulimit -n`) less 128 descriptors kept for the database,
    /// Langflow and the rest.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,
    /// How long a new connection may take to send its first bytes (the HTTP/2 client
    /// preface) before it is closed: sockets that never speak are not held open.
    #[arg(long, env = "HTTP2_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub http2_handshake_timeout_secs: u64,
    /// How often an HTTP/2 PING is sent on each connection, to find peers that are gone.
    #[arg(long, env = "HTTP2_KEEPALIVE_INTERVAL_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub http2_keepalive_interval_secs: u64,
    /// How long a PING may wait for its answer before the connection is closed.
    #[arg(long, env = "HTTP2_KEEPALIVE_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub http2_keepalive_timeout_secs: u64,
    /// Most concurrent streams (calls, watches) on one connection (HTTP/2
    /// SETTINGS_MAX_CONCURRENT_STREAMS); a client that opens more has them refused.
    #[arg(long, env = "MAX_STREAMS_PER_CONNECTION", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_connection: u32,
    /// PEM certificate chain the gRPC server presents (with TLS_KEY_FILE): the server then
    /// speaks TLS only. Unset: plaintext (inside a mesh, or for local development).
    #[arg(long, env = "TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of TLS_CERT_FILE.
    #[arg(long, env = "TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificate(s): when set (with TLS), every client must present a certificate
    /// signed by one of them (mTLS); its identity (first DNS name, or common name) is then
    /// known to the server.
    #[arg(long, env = "TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// Serve grpc.health.v1 alone, in plaintext, on this address too (`host:port`): for
    /// Kubernetes' gRPC probes, which cannot speak TLS. Unset: no such port.
    #[arg(long, env = "HEALTH_LISTEN_ADDR")]
    pub health_listen_addr: Option<String>,
    /// Trace export over OTLP (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, ...).
    #[command(flatten)]
    pub traces: TraceExportConfig,
    /// The retention janitor (RETENTION_*, IDEMPOTENCY_RETENTION).
    #[command(flatten)]
    pub janitor: super::retention::JanitorSettings,
    /// The HTTP/JSON port (HTTP_LISTEN_ADDR, ...).
    #[command(flatten)]
    pub http_json: super::http_json::config::HttpJsonConfig,
}

impl CommonConfig {
    /// The authenticator the settings describe; refuses a production mode without a key.
    pub fn authenticator(&self) -> anyhow::Result<Authenticator> {
        let rules = TokenRules {
            issuer: self.jwt_issuer.clone().filter(|iss| !iss.is_empty()),
            audience: self.jwt_audience.clone().filter(|aud| !aud.is_empty()),
            leeway: Duration::from_secs(self.jwt_leeway_secs),
        };
        match self.auth_mode {
            AuthMode::Dev => {
                let tenant = Tenant::parse(&self.dev_tenant_id).map_err(|e| anyhow::anyhow!("DEV_TENANT_ID: {e}"))?;
                Ok(Authenticator::development(tenant))
            }
            AuthMode::Jwt => {
                let secret = self.jwt_hs256_secret.as_ref().filter(|s| !s.is_empty());
                let jwks_url = self.jwt_jwks_url.as_ref().filter(|url| !url.is_empty());
                let authenticator = match (secret, &self.jwt_rs256_public_key_file, jwks_url) {
                    (Some(secret), None, None) => {
                        Authenticator::hs256(secret.as_bytes(), &rules).context("JWT_HS256_SECRET")?
                    }
                    (None, Some(path), None) => {
                        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                        Authenticator::rs256(&pem, &rules)?
                    }
                    (None, None, Some(url)) => {
                        let jwks = super::jwks::Jwks::new(super::jwks::JwksSettings {
                            url: url.clone(),
                            refresh: Duration::from_secs(self.jwt_jwks_refresh_secs),
                            min_refresh: Duration::from_secs(self.jwt_jwks_min_refresh_secs),
                            timeout: super::jwks::FETCH_TIMEOUT,
                            ca_file: self.jwt_jwks_ca_file.clone(),
                        })?;
                        Authenticator::jwks(jwks, &rules)
                    }
                    (None, None, None) => anyhow::bail!(
                        "AUTH_MODE=jwt needs a key: set JWT_HS256_SECRET, JWT_RS256_PUBLIC_KEY_FILE or JWT_JWKS_URL \
                         (or AUTH_MODE=dev for local development without authentication)"
                    ),
                    _ => anyhow::bail!("set only one of JWT_HS256_SECRET, JWT_RS256_PUBLIC_KEY_FILE and JWT_JWKS_URL"),
                };
                match self.jwt_algorithms.as_deref().filter(|algs| !algs.trim().is_empty()) {
                    Some(algorithms) => authenticator.allowing(&parse_algorithms(algorithms)?),
                    None => Ok(authenticator),
                }
            }
        }
    }

    /// The services' secret, checked; `None` when unset.
    fn service_secret(&self) -> anyhow::Result<Option<&[u8]>> {
        match self.service_token_secret.as_deref().filter(|s| !s.is_empty()) {
            Some(secret) => {
                let tenant_secret = self.jwt_hs256_secret.as_deref().map(str::as_bytes);
                service_identity::check_secret(secret.as_bytes(), tenant_secret)?;
                Ok(Some(secret.as_bytes()))
            }
            None => Ok(None),
        }
    }

    /// The client certificate names that are our services (SERVICE_CLIENT_NAMES), checked: a
    /// name proves something only over mTLS.
    fn certified_services(&self) -> anyhow::Result<Vec<String>> {
        let names: Vec<String> =
            self.service_client_names.iter().map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect();
        if !names.is_empty() && self.tls_client_ca_file.as_ref().is_none_or(|f| f.as_os_str().is_empty()) {
            anyhow::bail!(
                "SERVICE_CLIENT_NAMES needs TLS_CLIENT_CA_FILE: without a verified client certificate a name \
                 proves nothing"
            );
        }
        Ok(names)
    }

    /// Checks that, in production mode, the services know each other: by the shared secret, by
    /// client certificates this server takes as services (SERVICE_CLIENT_NAMES), or
    /// (`presents_certificate`) by the client certificate this service presents to the other.
    pub fn check_service_identity(&self, presents_certificate: bool) -> anyhow::Result<()> {
        let by_certificate = presents_certificate || !self.certified_services()?.is_empty();
        if self.auth_mode == AuthMode::Jwt && self.service_secret()?.is_none() && !by_certificate {
            anyhow::bail!(
                "AUTH_MODE=jwt needs SERVICE_TOKEN_SECRET: the secret both services share for their calls \
                 to each other (at least 32 bytes, e.g. `openssl rand -base64 48`), or else mTLS with the \
                 client certificate as the service identity (SERVICE_CLIENT_NAMES on workflow-service, \
                 WORKFLOW_SERVICE_CLIENT_CERT_FILE on agent-service)"
            );
        }
        Ok(())
    }

    /// Who may call a server whose service-to-service RPCs are `access`.
    pub fn callers(&self, access: ServiceAccess) -> anyhow::Result<Callers> {
        Ok(Callers {
            authenticator: self.authenticator()?,
            services: self.service_secret()?.map(ServiceVerifier::new),
            certified_services: self.certified_services()?,
            access,
        })
    }

    /// What signs this service's calls to the other as `service`; `None` in dev mode without
    /// SERVICE_TOKEN_SECRET (the other service then authenticates nobody either).
    pub fn service_tokens(&self, service: &str) -> anyhow::Result<Option<ServiceTokens>> {
        Ok(self.service_secret()?.map(|secret| ServiceTokens::new(service, secret)))
    }

    /// Checks the authentication settings before anything else starts, and says loudly when
    /// there is no authentication at all.
    pub fn check_auth(&self) -> anyhow::Result<()> {
        self.authenticator()?;
        self.service_secret()?;
        self.certified_services()?;
        if self.auth_mode == AuthMode::Dev {
            tracing::warn!(
                dev_tenant = %self.dev_tenant_id,
                "AUTH_MODE=dev: NO AUTHENTICATION. Any caller may act as any tenant via x-tenant-id. Never use this in production."
            );
        }
        Ok(())
    }

    /// Starts the metrics endpoint when METRICS_ADDR is set.
    pub fn start_metrics(&self) -> anyhow::Result<()> {
        match self.metrics_addr.as_deref().filter(|a| !a.is_empty()) {
            Some(addr) => super::metrics::install(parse_listen_addr(addr)?),
            None => Ok(()),
        }
    }

    /// Connects to `url` and applies the service's migrations (waiting for the database up to
    /// DB_STARTUP_TIMEOUT_SECS).
    pub async fn open_database(
        &self,
        url: &str,
        postgres: &sqlx::migrate::Migrator,
        sqlite: &sqlx::migrate::Migrator,
    ) -> anyhow::Result<super::db::DbPool> {
        let db = super::db::DbPool::connect(&self.db_settings(url)).await?;
        tracing::info!(database = %super::db::redact(url), backend = db.backend(), "connecting to the database");
        db.migrate(self.database_schema.as_deref(), postgres, sqlite, self.db_startup_timeout()).await?;
        Ok(db)
    }

    pub fn db_settings(&self, url: &str) -> DbSettings {
        DbSettings {
            url: url.to_owned(),
            schema: self.database_schema.clone(),
            max_connections: self.db_max_connections,
        }
    }

    /// How many bytes of items one page of a List answer may carry; refuses a MAX_PAGE_BYTES
    /// that would not leave room for the answer's envelope within MAX_MESSAGE_BYTES.
    pub fn page_budget(&self) -> anyhow::Result<PageBudget> {
        PageBudget::new(self.max_message_bytes, self.max_page_bytes).map_err(|e| anyhow::anyhow!(e))
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }

    pub fn shutdown_delay(&self) -> Duration {
        Duration::from_millis(self.shutdown_delay_ms)
    }

    pub fn rpc_timeout(&self) -> Duration {
        Duration::from_secs(self.rpc_timeout_secs)
    }

    /// The bounds on the connections the server holds.
    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.max_connections,
            handshake_timeout: Duration::from_secs(self.http2_handshake_timeout_secs),
        }
    }

    pub fn http2_keepalive_interval(&self) -> Duration {
        Duration::from_secs(self.http2_keepalive_interval_secs)
    }

    pub fn http2_keepalive_timeout(&self) -> Duration {
        Duration::from_secs(self.http2_keepalive_timeout_secs)
    }

    pub fn db_startup_timeout(&self) -> Duration {
        Duration::from_secs(self.db_startup_timeout_secs)
    }

    /// The gRPC server's TLS, when TLS_CERT_FILE and TLS_KEY_FILE are set; refuses one without
    /// the other, a client CA without them, and files that cannot be read or used.
    pub fn server_tls(&self) -> anyhow::Result<Option<ServerTls>> {
        let set = |path: &Option<PathBuf>| path.clone().filter(|p| !p.as_os_str().is_empty());
        match (set(&self.tls_cert_file), set(&self.tls_key_file), set(&self.tls_client_ca_file)) {
            (Some(cert), Some(key), client_ca) => ServerTls::from_files(&cert, &key, client_ca.as_deref()).map(Some),
            (None, None, None) => Ok(None),
            (Some(_), None, _) => anyhow::bail!("TLS_CERT_FILE is set without TLS_KEY_FILE: set both, or neither"),
            (None, Some(_), _) => anyhow::bail!("TLS_KEY_FILE is set without TLS_CERT_FILE: set both, or neither"),
            (None, None, Some(_)) => {
                anyhow::bail!("TLS_CLIENT_CA_FILE (mTLS) needs the server's own TLS_CERT_FILE and TLS_KEY_FILE")
            }
        }
    }

    /// Checks the TLS settings before anything else starts, and says which is in force.
    pub fn check_tls(&self) -> anyhow::Result<()> {
        match self.server_tls()? {
            Some(tls) => tracing::info!(
                cert = ?self.tls_cert_file,
                mtls = tls.requires_client_certificate(),
                "gRPC over TLS"
            ),
            None => tracing::info!("gRPC in plaintext (no TLS_CERT_FILE)"),
        }
        if let Some(addr) = self.health_listen_addr.as_deref().filter(|a| !a.is_empty()) {
            parse_listen_addr(addr).context("HEALTH_LISTEN_ADDR")?;
        }
        self.http_json.listen_addr()?;
        Ok(())
    }
}

/// Parses JWT_ALGORITHMS: names as JWS spells them (`RS256`, `ES256`, ...), comma-separated.
fn parse_algorithms(text: &str) -> anyhow::Result<Vec<jsonwebtoken::Algorithm>> {
    text.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| {
            name.parse().map_err(|_| {
                anyhow::anyhow!(
                    "JWT_ALGORITHMS: {name:?} is not a signing algorithm \
                     (HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"
                )
            })
        })
        .collect()
}

/// Parses a listen address, accepting `host:port` and `:port`.
pub fn parse_listen_addr(value: &str) -> anyhow::Result<SocketAddr> {
    let value = if value.starts_with(':') { format!("0.0.0.0{value}") } else { value.to_owned() };
    value.parse().with_context(|| format!("invalid listen address {value:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Settings {
        #[command(flatten)]
        common: CommonConfig,
    }

    fn authenticator(flags: &[&str]) -> anyhow::Result<Authenticator> {
        let settings =
            <Settings as clap::Parser>::try_parse_from(std::iter::once("service").chain(flags.iter().copied()))?;
        settings.common.authenticator()
    }

    const SECRET: &str = "--jwt-hs256-secret=a-secret-of-enough-length-0123456789";
    const JWKS: &str = "--jwt-jwks-url=http://127.0.0.1:9/jwks";

    #[test]
    fn exactly_one_key_source_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("pub.pem");
        std::fs::write(&pem, &super::super::jwks::testing::rsa_key(0).public_pem).unwrap();
        let pem_flag = format!("--jwt-rs256-public-key-file={}", pem.display());
        for flags in [vec![SECRET], vec![pem_flag.as_str()], vec![JWKS]] {
            authenticator(&flags).unwrap();
        }
        for flags in [vec![SECRET, JWKS], vec![pem_flag.as_str(), JWKS], vec![SECRET, pem_flag.as_str()]] {
            let error = authenticator(&flags).err().expect("refused").to_string();
            assert!(error.contains("set only one of"), "{flags:?}: {error}");
        }
        let error = authenticator(&[]).err().expect("refused").to_string();
        assert!(error.contains("JWT_JWKS_URL"), "{error}");
        let error = authenticator(&["--jwt-jwks-url=ftp://idp/jwks"]).err().expect("refused").to_string();
        assert!(error.contains("must be an http:// or https:// URL"), "{error}");
        let error =
            authenticator(&[JWKS, "--jwt-jwks-ca-file=/nonexistent/ca.pem"]).err().expect("refused").to_string();
        assert!(error.contains("JWT_JWKS_CA_FILE"), "{error}");
        for zero in ["--jwt-jwks-refresh-secs=0", "--jwt-jwks-min-refresh-secs=0"] {
            assert!(authenticator(&[JWKS, zero]).is_err(), "{zero}");
        }
    }

    #[test]
    fn jwt_algorithms_are_parsed_and_must_fit_the_key() {
        authenticator(&[JWKS, "--jwt-algorithms=RS256, PS256,ES256"]).unwrap();
        authenticator(&[SECRET, "--jwt-algorithms=HS256,HS512"]).unwrap();
        for (flags, reason) in [
            ([JWKS, "--jwt-algorithms=RS256,none"], "\"none\" is not a signing algorithm"),
            ([JWKS, "--jwt-algorithms=rs256"], "\"rs256\" is not a signing algorithm"),
            ([JWKS, "--jwt-algorithms=RS256,HS256"], "HS256 cannot be used with an identity provider"),
            ([SECRET, "--jwt-algorithms=RS256"], "RS256 cannot be used with the HS256 secret"),
        ] {
            let error = authenticator(&flags).err().expect("refused").to_string();
            assert!(error.contains(reason), "{flags:?}: {error}");
        }
    }
}
