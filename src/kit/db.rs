//! Database connections: PostgreSQL in production, an SQLite file for the embedded default.
//! Each service passes its own migrations; the pool decides which set applies.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{PgPool, SqlitePool};

/// How long a request waits for a connection before answering UNAVAILABLE.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// A pooled PostgreSQL connection idle longer than this is pinged before it is handed out.
/// sqlx pings every one by default, a round trip before each statement; a busy connection has
/// just proven itself (and sqlx pings it again on release, closing it if that fails). One that
/// died in between fails its statement with UNAVAILABLE, which callers retry.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// A connection pool on one of the two supported databases.
#[derive(Clone, Debug)]
pub enum DbPool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct DbSettings {
    /// `postgres://…` or `sqlite://path/to/file.db`.
    pub url: String,
    /// PostgreSQL only: the schema holding this service's tables (created when missing).
    pub schema: Option<String>,
    pub max_connections: u32,
}

impl DbPool {
    /// Opens a pool. Connections are made lazily, so a database that is down at start is waited
    /// for by [`DbPool::migrate`], not by this call.
    pub async fn connect(settings: &DbSettings) -> anyhow::Result<Self> {
        let url = settings.url.as_str();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let mut options = PgConnectOptions::from_str(url).context("DATABASE_URL is not a valid PostgreSQL URL")?;
            if let Some(schema) = &settings.schema {
                validate_schema_name(schema)?;
                options = options.options([("search_path", schema.as_str())]);
            }
            let pool = PgPoolOptions::new()
                .max_connections(settings.max_connections)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .test_before_acquire(false)
                .before_acquire(|connection, meta| {
                    Box::pin(async move {
                        if meta.idle_for > PING_IF_IDLE_FOR {
                            sqlx::Connection::ping(connection).await?;
                        }
                        Ok(true)
                    })
                })
                .connect_lazy_with(options);
            Ok(Self::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .context("DATABASE_URL is not a valid SQLite URL")?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            if let Some(parent) = options.get_filename().parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(settings.max_connections.min(8))
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_lazy_with(options);
            Ok(Self::Sqlite(pool))
        } else {
            anyhow::bail!("DATABASE_URL must start with postgres:// or sqlite: (got {:?})", redact(url))
        }
    }

    /// Applies the service's migrations, waiting up to `wait` for the database to come up.
    /// PostgreSQL serialises concurrent migrators with an advisory lock; SQLite has none, so a
    /// migrator that lost a race simply tries again and finds the work done.
    pub async fn migrate(
        &self,
        schema: Option<&str>,
        postgres: &sqlx::migrate::Migrator,
        sqlite: &sqlx::migrate::Migrator,
        wait: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result = match self {
                Self::Postgres(pool) => {
                    async {
                        if let Some(schema) = schema {
                            ensure_schema(pool, schema).await?;
                        }
                        postgres.run(pool).await.map_err(anyhow::Error::from)
                    }
                    .await
                }
                Self::Sqlite(pool) => sqlite.run(pool).await.map_err(anyhow::Error::from),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if cannot_be_waited_out(&e) => {
                    return Err(e.context("applying migrations: the database refuses this DATABASE_URL; not retrying"));
                }
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(attempt, error = format!("{e:#}"), "database not ready for migrations; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.context("applying migrations")),
            }
        }
    }

    /// A cheap round trip, for health checks.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        match self {
            Self::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
            Self::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
        }
    }

    /// Open connections and how many of them are idle.
    pub fn stats(&self) -> (u32, usize) {
        match self {
            Self::Postgres(pool) => (pool.size(), pool.num_idle()),
            Self::Sqlite(pool) => (pool.size(), pool.num_idle()),
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Sqlite(_) => "sqlite",
        }
    }

    pub async fn close(&self) {
        match self {
            Self::Postgres(pool) => pool.close().await,
            Self::Sqlite(pool) => pool.close().await,
        }
    }
}

/// A pool of one connection of its own, opened with `pool`'s connect options (its URL, TLS and
/// schema) but never taken from it: for a long-lived connection (a `LISTEN`, the heartbeat that
/// checks it) that must neither wait behind the shared pool's busy connections nor hold one of
/// them. Lazy: the connection is made at first use, and made again after it is lost.
pub fn dedicated_connection(pool: &PgPool) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy_with(PgConnectOptions::clone(&pool.connect_options()))
}

/// Whether a failure to reach the database is one that waiting cannot cure, so start-up should
/// stop at once with the reason instead of retrying until its deadline: the server's certificate
/// does not verify, TLS is required but not offered, the credentials or the database name are
/// wrong. A server that is down or still starting is worth waiting for.
fn cannot_be_waited_out(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        let sqlx_error = cause.downcast_ref::<sqlx::Error>().or_else(|| match cause.downcast_ref() {
            Some(sqlx::migrate::MigrateError::Execute(inner)) => Some(inner),
            _ => None,
        });
        sqlx_error.is_some_and(is_misconfiguration)
    })
}

fn is_misconfiguration(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Tls(_) | sqlx::Error::Configuration(_) => true,
        // A certificate that does not verify reaches sqlx as an I/O error of this kind.
        sqlx::Error::Io(io) => io.kind() == std::io::ErrorKind::InvalidData,
        // invalid_authorization_specification, invalid_password, invalid_catalog_name.
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("28000" | "28P01" | "3D000")),
        _ => false,
    }
}

fn validate_schema_name(schema: &str) -> anyhow::Result<()> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    anyhow::ensure!(ok, "DATABASE_SCHEMA must be a lowercase identifier (got {schema:?})");
    Ok(())
}

async fn ensure_schema(pool: &PgPool, schema: &str) -> anyhow::Result<()> {
    validate_schema_name(schema)?;
    // Two replicas may race here: a duplicate-schema error from the loser is harmless.
    match sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))).execute(pool).await {
        Ok(_) => Ok(()),
        Err(e) if crate::kit::error::is_unique_violation(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or("");
                format!("{scheme}://{user}:***@{host}")
            }
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn misconfiguration_is_told_from_a_database_not_up_yet() {
        let tls = anyhow::Error::from(sqlx::Error::Tls("server does not support TLS".into()));
        assert!(cannot_be_waited_out(&tls));
        let certificate = io::Error::new(io::ErrorKind::InvalidData, "invalid peer certificate: UnknownIssuer");
        let migrating = sqlx::migrate::MigrateError::Execute(sqlx::Error::Io(certificate));
        assert!(cannot_be_waited_out(&anyhow::Error::from(migrating).context("applying")));

        let refused = sqlx::Error::Io(io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused"));
        assert!(!cannot_be_waited_out(&anyhow::Error::from(refused)));
        assert!(!cannot_be_waited_out(&anyhow::Error::from(sqlx::Error::PoolTimedOut)));
        assert!(!cannot_be_waited_out(&anyhow::anyhow!("something else")));
    }
}
