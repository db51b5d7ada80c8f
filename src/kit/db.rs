//! Database connections: PostgreSQL in production, an SQLite file for the embedded default.
//! Each service passes its own migrations; the pool decides which set applies.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{PgPool, SqlitePool};

use crate::kit::warm_pool::WarmPool;

/// How long a request waits for a connection before answering UNAVAILABLE.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// A pooled PostgreSQL connection idle longer than this is pinged before it is handed out.
/// sqlx pings every one by default, a round trip before each statement; a busy connection has
/// just proven itself (and sqlx pings it again on release, closing it if that fails). One that
/// died in between fails its statement with UNAVAILABLE, which callers retry.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// A connection pool on one of the two supported databases (sqlx's, with the connections
/// used last kept warm in front of it: [`WarmPool`]).
#[derive(Clone, Debug)]
pub enum DbPool {
    Postgres(WarmPool<sqlx::Postgres>),
    Sqlite(WarmPool<sqlx::Sqlite>),
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
            Ok(Self::Postgres(WarmPool::new(pool)))
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
            Ok(Self::Sqlite(WarmPool::new(pool)))
        } else {
            anyhow::bail!("DATABASE_URL must start with postgres:// or sqlite: (got {:?})", redact(url))
        }
    }

    /// Applies the service's migrations, waiting up to `wait` for the database to come up.
    /// PostgreSQL serialises concurrent migrators with an advisory lock; on SQLite they take
    /// turns on a lock file (see [`migrate_sqlite`]).
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
                        postgres.run(pool.sqlx()).await.map_err(anyhow::Error::from)
                    }
                    .await
                }
                Self::Sqlite(pool) => migrate_sqlite(pool, sqlite, deadline).await,
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
            Self::Postgres(pool) => sqlx::query("SELECT 1").execute(pool.sqlx()).await.map(drop),
            Self::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool.sqlx()).await.map(drop),
        }
    }

    /// Open connections and how many of them are idle (in sqlx's queue or kept warm).
    pub fn stats(&self) -> (u32, usize) {
        match self {
            Self::Postgres(pool) => (pool.size(), pool.num_idle() + pool.warm()),
            Self::Sqlite(pool) => (pool.size(), pool.num_idle() + pool.warm()),
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

/// SQLite has no advisory lock and sqlx takes none for it, so two processes starting on one file
/// would apply the same migration at once. The loser's script fails midway, and one that runs
/// outside sqlx's transaction (a `-- no-transaction` migration holding its own `BEGIN`, with
/// foreign keys off) leaves its connection inside that transaction: handed out by the pool
/// later, it refuses every `BEGIN` and writes without foreign keys. So migrators take turns on
/// a lock file beside the database, and each migrates on a connection of its own, closed
/// afterwards whatever happened.
async fn migrate_sqlite(
    pool: &SqlitePool,
    migrator: &sqlx::migrate::Migrator,
    deadline: tokio::time::Instant,
) -> anyhow::Result<()> {
    use sqlx::ConnectOptions as _;
    let options = pool.connect_options();
    let _turn = match migration_lock_path(&options) {
        Some(path) => take_turn(&path, deadline).await?,
        None => None,
    };
    let mut connection = options.connect().await?;
    let migrated = migrator.run(&mut connection).await;
    // Closing rolls back whatever a failed script left open; the error that matters is the
    // migration's.
    let _ = sqlx::Connection::close(connection).await;
    Ok(migrated?)
}

/// The lock file of a database file's migrators, `<file>.migrate-lock`; none for an in-memory
/// database (one process only).
fn migration_lock_path(options: &SqliteConnectOptions) -> Option<std::path::PathBuf> {
    let file = options.get_filename();
    let name = file.to_str().unwrap_or_default();
    if name == ":memory:" || name.starts_with("file:") {
        return None;
    }
    let mut lock = file.as_os_str().to_owned();
    lock.push(".migrate-lock");
    Some(lock.into())
}

/// Waits (until `deadline`) for the exclusive lock on `path`, held until the file answered is
/// dropped (or the process dies: the kernel releases it). `None`: the file system takes no
/// locks, and migrations go ahead unserialised, as before.
async fn take_turn(path: &std::path::Path, deadline: tokio::time::Instant) -> anyhow::Result<Option<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening the migration lock {}", path.display()))?;
    let mut waited = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) if tokio::time::Instant::now() < deadline => {
                if !waited {
                    tracing::info!(lock = %path.display(), "another process is migrating this database; waiting for it");
                    waited = true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                anyhow::bail!("another process held the migration lock {} until the deadline", path.display())
            }
            Err(std::fs::TryLockError::Error(e)) => {
                tracing::warn!(lock = %path.display(), error = %e, "cannot lock for migrations; migrating without the lock");
                return Ok(None);
            }
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

    /// A migrator of the one migration `sql`, from a directory under `dir`.
    async fn migrator_of(dir: &std::path::Path, sql: &str) -> sqlx::migrate::Migrator {
        let migrations = dir.join("migrations");
        std::fs::create_dir_all(&migrations).unwrap();
        std::fs::write(migrations.join("0001_only.sql"), sql).unwrap();
        sqlx::migrate::Migrator::new(migrations).await.unwrap()
    }

    async fn sqlite_pool(dir: &std::path::Path) -> (DbPool, SqlitePool) {
        let url = format!("sqlite://{}", dir.join("test.db").display());
        let db = DbPool::connect(&DbSettings { url, schema: None, max_connections: 1 }).await.unwrap();
        let DbPool::Sqlite(pool) = db.clone() else { unreachable!() };
        (db, pool.sqlx().clone())
    }

    async fn table_exists(pool: &SqlitePool, name: &str) -> bool {
        sqlx::query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?")
            .bind(name)
            .fetch_optional(pool)
            .await
            .unwrap()
            .is_some()
    }

    #[tokio::test]
    async fn a_script_failing_midway_leaves_no_pooled_connection_in_its_transaction() {
        let dir = tempfile::tempdir().unwrap();
        // As a migrator that lost a race meets it: its own BEGIN, foreign keys off, then a table
        // that is already there.
        let failing = migrator_of(
            dir.path(),
            "-- no-transaction\nPRAGMA foreign_keys = OFF;\nBEGIN;\nCREATE TABLE twice (id INTEGER);\n\
             CREATE TABLE twice (id INTEGER);\nCOMMIT;\n",
        )
        .await;
        let (db, pool) = sqlite_pool(dir.path()).await;
        let failed = db.migrate(None, &failing, &failing, Duration::from_millis(300)).await;
        assert!(format!("{:#}", failed.unwrap_err()).contains("already exists"));

        // The pool's one connection: not inside the failed script's transaction, foreign keys on,
        // and nothing of the script kept.
        let mut tx = pool.begin().await.expect("a transaction on the pool's connection");
        let (foreign_keys,): (i64,) = sqlx::query_as("PRAGMA foreign_keys").fetch_one(&mut *tx).await.unwrap();
        assert_eq!(foreign_keys, 1);
        tx.rollback().await.unwrap();
        assert!(!table_exists(&pool, "twice").await);
    }

    /// A migrator of one table and a pool on a database file under `dir`, whose migration lock
    /// another process holds (as the file answered, until it is dropped).
    async fn while_another_process_migrates(
        dir: &std::path::Path,
    ) -> (sqlx::migrate::Migrator, DbPool, SqlitePool, std::fs::File) {
        let migrator = migrator_of(dir, "CREATE TABLE migrated (id INTEGER);").await;
        let (db, pool) = sqlite_pool(dir).await;
        let held = std::fs::File::create(dir.join("test.db.migrate-lock")).unwrap();
        held.lock().unwrap();
        (migrator, db, pool, held)
    }

    #[tokio::test]
    async fn sqlite_migrators_take_turns_on_a_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let (migrator, db, pool, held) = while_another_process_migrates(dir.path()).await;
        let finished = std::sync::atomic::AtomicBool::new(false);
        let migrating = async {
            let migrated = db.migrate(None, &migrator, &migrator, Duration::from_secs(30)).await;
            finished.store(true, std::sync::atomic::Ordering::SeqCst);
            migrated
        };
        let other_process = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(!finished.load(std::sync::atomic::Ordering::SeqCst), "the migrator waits for the lock");
            assert!(!table_exists(&pool, "migrated").await);
            drop(held);
        };
        let (migrated, ()) = tokio::join!(migrating, other_process);
        migrated.expect("migrates once the lock is free");
        assert!(table_exists(&pool, "migrated").await);
    }

    #[tokio::test]
    async fn a_migrator_gives_up_on_a_lock_held_past_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let (migrator, db, _, _held) = while_another_process_migrates(dir.path()).await;
        let failed = db.migrate(None, &migrator, &migrator, Duration::from_millis(200)).await.unwrap_err();
        assert!(format!("{failed:#}").contains("test.db.migrate-lock"), "{failed:#}");
    }
}
