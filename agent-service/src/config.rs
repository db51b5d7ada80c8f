//! agent-service's settings: its own address and database, where workflow-service is, plus the
//! shared ones.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use engarde::kit::config::CommonConfig;
use engarde::kit::import::{ImportArgs, ImportConfig};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// agent-service: EnGarde's AI agents over gRPC.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "agent-service", version, about)]
pub struct Config {
    /// Address to serve gRPC on (`host:port`; port 0 picks a free one).
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:50052")]
    pub listen_addr: String,
    /// `postgres://user@host/db` in production; an SQLite file for the embedded default.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://data/agent.db", hide_env_values = true)]
    pub database_url: String,
    /// Where workflow-service serves gRPC (`http://host:port`).
    #[arg(long, env = "WORKFLOW_SERVICE_URL", default_value = "http://127.0.0.1:50051")]
    pub workflow_service_url: String,
    /// Deadline of each call to workflow-service, in milliseconds (each of its up to 3 attempts).
    #[arg(long, env = "WORKFLOW_CALL_TIMEOUT_MS", default_value_t = 5000)]
    pub workflow_call_timeout_ms: u64,
    /// Langflow's base URL (e.g. `http://langflow:7860`). Unset: agents work for everything but
    /// their flows and executions, which answer FAILED_PRECONDITION.
    #[arg(long, env = "LANGFLOW_URL")]
    pub langflow_url: Option<String>,
    /// Langflow API key, sent as `x-api-key` (a production Langflow requires one).
    #[arg(long, env = "LANGFLOW_API_KEY", hide_env_values = true)]
    pub langflow_api_key: Option<String>,
    /// Deadline of one flow run, in milliseconds (a shorter caller deadline wins).
    #[arg(long, env = "LANGFLOW_RUN_TIMEOUT_MS", default_value_t = 60_000)]
    pub langflow_run_timeout_ms: u64,
    /// Deadline of every other Langflow call, in milliseconds.
    #[arg(long, env = "LANGFLOW_CALL_TIMEOUT_MS", default_value_t = 10_000)]
    pub langflow_call_timeout_ms: u64,
    /// An execution still RUNNING this many seconds after it started was cut off by a process
    /// that died; the janitor records it FAILED "interrupted". Default: the run timeout plus a
    /// minute (a live run has timed out by then).
    #[arg(long, env = "EXECUTION_STALE_AFTER_SECS")]
    pub execution_stale_after_secs: Option<u64>,
    /// How long an execution without a request id runs before its RUNNING row is written, in
    /// milliseconds. A run that ends sooner is stored once, finished: one write, not two. A
    /// longer one is listed RUNNING from then on (and failed by the janitor if a crash cuts it
    /// off). 0: the row is written at once, while Langflow is called.
    #[arg(long, env = "EXECUTION_RUNNING_ROW_AFTER_MS", default_value_t = 100)]
    pub execution_running_row_after_ms: u64,
    /// How often the outbox of execution reports to workflow-service is looked at when nothing
    /// wakes it, in milliseconds (each finished execution wakes it at once).
    #[arg(long, env = "REPORT_INTERVAL_MS", default_value_t = 5000)]
    pub report_interval_ms: u64,
    /// How long the outbox waits, once an execution has woken it, for more reports to deliver
    /// with that one, in milliseconds: a batch keeps delivery off the executions' own path.
    #[arg(long, env = "REPORT_BATCH_DELAY_MS", default_value_t = 100)]
    pub report_batch_delay_ms: u64,
    /// On PostgreSQL, how many agents executions find in memory instead of reading them (each
    /// process drops one as soon as a change to it is announced; see the README's "Agent
    /// cache"); an agent over 16 KiB counts as one per 16 KiB. 0: every run reads its agent.
    #[arg(long, env = "AGENT_CACHE_CAPACITY", default_value_t = 1024)]
    pub agent_cache_capacity: u64,
    /// Most execution finishes recorded together, in one transaction with one commit: those
    /// that arrive while a group commits form the next one, up to this many (1: each alone).
    #[arg(long, env = "FINISH_BATCH_MAX", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub finish_batch_max: u32,
    #[command(flatten)]
    pub walker: crate::walker::WalkerSettings,
    #[command(flatten)]
    pub memory: crate::execution::MemoryWindow,
    #[command(flatten)]
    pub retention: crate::retention::RetentionSettings,
    /// How often orphan Langflow flows (made for agents that were never stored) are looked for,
    /// in seconds; 0 turns it off.
    #[arg(long, env = "LANGFLOW_RECONCILE_INTERVAL_SECS", default_value_t = 300)]
    pub langflow_reconcile_interval_secs: u64,
    /// How old an orphan flow must be before it is deleted, in seconds.
    #[arg(long, env = "LANGFLOW_ORPHAN_GRACE_SECS", default_value_t = 600)]
    pub langflow_orphan_grace_secs: u64,
    /// The mark of this deployment on the Langflow flows it makes (1-64 letters, digits, '-',
    /// '_', '.'): its orphan reconciler deletes only flows with this mark, so deployments that
    /// share a Langflow never delete each other's flows. Unset: an id made at random once in
    /// this deployment's database, shared by its replicas. Set it when a database is copied
    /// into another deployment (the copy would carry the same id).
    #[arg(long, env = "LANGFLOW_DEPLOYMENT_ID")]
    pub langflow_deployment_id: Option<String>,
    /// PEM CA certificate(s) trusted for an https:// LANGFLOW_URL, besides the public roots
    /// compiled in (a private CA, or a self-signed Langflow).
    #[arg(long, env = "LANGFLOW_CA_FILE")]
    pub langflow_ca_file: Option<PathBuf>,
    /// PEM CA certificate(s) trusted for an https:// WORKFLOW_SERVICE_URL, instead of the public
    /// roots compiled in (the usual case: workflow-service's certificate comes from a private CA).
    #[arg(long, env = "WORKFLOW_SERVICE_CA_FILE")]
    pub workflow_service_ca_file: Option<PathBuf>,
    /// PEM client certificate presented to workflow-service (mTLS), with
    /// WORKFLOW_SERVICE_CLIENT_KEY_FILE.
    #[arg(long, env = "WORKFLOW_SERVICE_CLIENT_CERT_FILE")]
    pub workflow_service_client_cert_file: Option<PathBuf>,
    /// PEM private key of WORKFLOW_SERVICE_CLIENT_CERT_FILE.
    #[arg(long, env = "WORKFLOW_SERVICE_CLIENT_KEY_FILE")]
    pub workflow_service_client_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub common: CommonConfig,
    #[command(flatten)]
    pub import: ImportConfig,
    /// Without a command, the service serves.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What the binary does instead of serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Imports the platform's `ai_agents` table, every tenant's rows, into this service's
    /// database (DATABASE_URL): snapshots are read from workflow-service (WORKFLOW_SERVICE_URL,
    /// as this service's identity acting for each row's tenant: import the workflows first) and
    /// flows are linked in LANGFLOW_URL's Langflow. Prints one JSON line per row and a summary,
    /// and exits: 0 when every row came in, 2 when some failed (see their reasons), 1 on an error.
    Import(ImportArgs),
}

impl Config {
    /// The Langflow settings, when a Langflow is configured.
    pub fn langflow(&self) -> Option<crate::langflow::LangflowSettings> {
        let url = self.langflow_url.as_deref().filter(|u| !u.is_empty())?;
        Some(crate::langflow::LangflowSettings {
            base_url: url.to_owned(),
            api_key: self.langflow_api_key.clone().filter(|k| !k.is_empty()),
            run_timeout: Duration::from_millis(self.langflow_run_timeout_ms.max(1)),
            call_timeout: Duration::from_millis(self.langflow_call_timeout_ms.max(1)),
            ca_file: set(&self.langflow_ca_file),
        })
    }

    /// The TLS of the workflow-service client: `None` for an http:// WORKFLOW_SERVICE_URL.
    /// Refuses TLS files with an http:// URL, a client certificate without its key (or the
    /// reverse), and files that cannot be read or hold no usable PEM.
    pub fn workflow_service_tls(&self) -> anyhow::Result<Option<ClientTlsConfig>> {
        let ca = set(&self.workflow_service_ca_file);
        let cert = set(&self.workflow_service_client_cert_file);
        let key = set(&self.workflow_service_client_key_file);
        let url = &self.workflow_service_url;
        if !url.starts_with("https://") {
            if ca.is_some() || cert.is_some() || key.is_some() {
                anyhow::bail!(
                    "WORKFLOW_SERVICE_CA_FILE and WORKFLOW_SERVICE_CLIENT_CERT_FILE/_KEY_FILE are for TLS: \
                     WORKFLOW_SERVICE_URL {url:?} must then be https://"
                );
            }
            return Ok(None);
        }
        let tls = match ca {
            Some(path) => ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read_certificates_pem("WORKFLOW_SERVICE_CA_FILE", &path)?)),
            None => ClientTlsConfig::new().with_webpki_roots(),
        };
        match (cert, key) {
            (Some(cert), Some(key)) => {
                let cert = read_certificates_pem("WORKFLOW_SERVICE_CLIENT_CERT_FILE", &cert)?;
                let key_pem = read_file("WORKFLOW_SERVICE_CLIENT_KEY_FILE", &key)?;
                engarde::kit::tls::parse_private_key("WORKFLOW_SERVICE_CLIENT_KEY_FILE", &key, &key_pem)?;
                Ok(Some(tls.identity(Identity::from_pem(cert, key_pem))))
            }
            (None, None) => Ok(Some(tls)),
            (Some(_), None) => anyhow::bail!(
                "WORKFLOW_SERVICE_CLIENT_CERT_FILE is set without WORKFLOW_SERVICE_CLIENT_KEY_FILE: set both, or neither"
            ),
            (None, Some(_)) => anyhow::bail!(
                "WORKFLOW_SERVICE_CLIENT_KEY_FILE is set without WORKFLOW_SERVICE_CLIENT_CERT_FILE: set both, or neither"
            ),
        }
    }

    /// See [`Self::execution_stale_after_secs`].
    pub fn execution_stale_after(&self) -> Duration {
        match self.execution_stale_after_secs {
            Some(secs) => Duration::from_secs(secs.max(1)),
            None => Duration::from_millis(self.langflow_run_timeout_ms.max(1)) + Duration::from_secs(60),
        }
    }

    pub fn report_interval(&self) -> Duration {
        Duration::from_millis(self.report_interval_ms.max(10))
    }

    pub fn report_batch_delay(&self) -> Duration {
        Duration::from_millis(self.report_batch_delay_ms)
    }

    pub fn workflow_call_timeout(&self) -> Duration {
        Duration::from_millis(self.workflow_call_timeout_ms.max(1))
    }
}

/// A path setting, unless unset or empty.
fn set(path: &Option<PathBuf>) -> Option<PathBuf> {
    path.clone().filter(|p| !p.as_os_str().is_empty())
}

fn read_file(setting: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{setting}: cannot read {}", path.display()))
}

/// The PEM of `path`, checked to hold certificates.
fn read_certificates_pem(setting: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    let pem = read_file(setting, path)?;
    engarde::kit::tls::parse_certificates(setting, path, &pem)?;
    Ok(pem)
}
