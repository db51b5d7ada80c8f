//! Importing the platform's own tables (`workflow_definitions`, `ai_agents`): what both services'
//! imports share. The source database is the operator's choice, never a caller's: its URL comes
//! from the configuration (`IMPORT_SOURCE_URL`) or the operator's command line, is read through
//! a read-only session, and its password is never written anywhere (see [`SourceUrl`]).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sqlx::ConnectOptions as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgRow};

use super::error::{FieldViolation, ServiceError, ServiceResult};

/// How long connecting to the source may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one statement on the source may run.
const STATEMENT_TIMEOUT_MS: &str = "60000";

/// The settings of the import RPC, flattened into each service's config.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportConfig {
    /// PostgreSQL URL of the platform's database that the import RPC reads (each caller only
    /// its own tenant's rows). Unset: the RPC answers FAILED_PRECONDITION "import is not enabled".
    #[arg(long, env = "IMPORT_SOURCE_URL", hide_env_values = true)]
    pub import_source_url: Option<SourceUrl>,
    /// Most source rows one import reads; a source with more answers FAILED_PRECONDITION (the
    /// answer lists every row, and must fit a message).
    #[arg(long, env = "IMPORT_MAX_ROWS", default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..))]
    pub import_max_rows: u32,
}

impl ImportConfig {
    /// The source an import RPC reads, once `schema` (the request's) is checked: the one the
    /// operator configured, or FAILED_PRECONDITION when there is none.
    pub fn source_for(&self, schema: &str) -> ServiceResult<&SourceUrl> {
        let source = self.import_source_url.as_ref().ok_or_else(|| {
            ServiceError::FailedPrecondition(
                "import is not enabled: the operator configures its source (IMPORT_SOURCE_URL)".into(),
            )
        })?;
        check_schema("schema", schema).map_err(|v| ServiceError::InvalidArgument(vec![v]))?;
        Ok(source)
    }
}

/// `<service> import`: the operator's import of every tenant's rows.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// PostgreSQL URL of the platform's database; defaults to IMPORT_SOURCE_URL.
    #[arg(long, env = "IMPORT_SOURCE_URL", hide_env_values = true)]
    pub source_url: Option<SourceUrl>,
    /// The schema holding the platform's tables.
    #[arg(long, default_value = "public")]
    pub schema: String,
    /// Print what would change, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// A source database's URL. Its `Debug` and `Display` leave the password out, so that no log,
/// error or answer can show it.
#[derive(Clone)]
pub struct SourceUrl {
    options: PgConnectOptions,
    shown: String,
}

impl FromStr for SourceUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err("must be a postgres:// URL".into());
        }
        // sqlx's own error would quote the URL, password and all.
        let options = PgConnectOptions::from_str(url).map_err(|_| "is not a valid PostgreSQL URL".to_owned())?;
        let shown = format!(
            "postgres://{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("")
        );
        Ok(Self { options, shown })
    }
}

impl fmt::Debug for SourceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SourceUrl({})", self.shown)
    }
}

impl fmt::Display for SourceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl SourceUrl {
    /// One read-only connection to the source: the import never writes there.
    pub async fn connect(&self) -> ServiceResult<PgConnection> {
        let options = self
            .options
            .clone()
            .options([("default_transaction_read_only", "on"), ("statement_timeout", STATEMENT_TIMEOUT_MS)])
            .disable_statement_logging();
        match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(e)) => {
                tracing::warn!(source = %self, error = %e, "the import source cannot be reached");
                Err(ServiceError::Unavailable(format!("the import source {self} cannot be reached")))
            }
            Err(_) => Err(ServiceError::Unavailable(format!("the import source {self} did not answer in time"))),
        }
    }
}

/// Checks the schema a request names: it is written into SQL (quoted), so only a plain
/// identifier is accepted.
pub fn check_schema(field: &str, schema: &str) -> Result<(), FieldViolation> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && schema.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(FieldViolation::new(field, "must be 1-63 ASCII letters, digits or underscores, not starting with a digit"))
    }
}

/// What an import reads from the source: `columns` (each cast to what the mapping reads, so
/// that an `id` of type uuid or text, a json or jsonb column, are all read the same) of `table`
/// in `schema`, the rows of `tenant` (every tenant's for `None`: the operator's command), in id
/// order, each mapped by `map`. More than `max_rows` rows is refused whole rather than cut short.
pub async fn read_source<T>(
    connection: &mut PgConnection,
    source: SourceTable<'_>,
    tenant: Option<&str>,
    max_rows: u32,
    map: impl Fn(&PgRow) -> Result<T, sqlx::Error>,
) -> ServiceResult<Vec<T>> {
    let SourceTable { schema, table, columns } = source;
    check_schema("schema", schema).map_err(|v| ServiceError::InvalidArgument(vec![v]))?;
    // `schema` is a checked identifier, quoted here; `table` and `columns` are the service's own.
    let sql = format!(
        "SELECT {columns} FROM \"{schema}\".{table} WHERE $1::text IS NULL OR tenant_id::text = $1 \
         ORDER BY id::text LIMIT $2"
    );
    let rows: Vec<PgRow> = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        // One more than allowed, to tell "exactly max_rows" from "more".
        .bind(i64::from(max_rows) + 1)
        .fetch_all(connection)
        .await
        .map_err(|e| read_error(table, e))?;
    if rows.len() > max_rows as usize {
        return Err(too_many_rows(table, max_rows));
    }
    rows.iter().map(|row| map(row).map_err(|e| read_error(table, e))).collect()
}

/// Where an import reads: a table of the source and the columns it selects.
#[derive(Debug, Clone, Copy)]
pub struct SourceTable<'a> {
    /// The request's schema (checked by [`read_source`] before use).
    pub schema: &'a str,
    pub table: &'static str,
    /// The SELECT list, with casts.
    pub columns: &'static str,
}

/// What a failed read of the source's `table` is answered as: the source's own problem (a
/// missing table or column, a type that does not cast) is FAILED_PRECONDITION with the
/// database's message; a source that went away is UNAVAILABLE.
fn read_error(table: &str, err: sqlx::Error) -> ServiceError {
    if super::error::is_unavailable(&err) {
        return ServiceError::Unavailable(format!("the import source went away while reading {table}"));
    }
    match &err {
        sqlx::Error::Database(db) => {
            ServiceError::FailedPrecondition(format!("the source's {table} cannot be read: {}", db.message()))
        }
        _ => ServiceError::FailedPrecondition(format!("the source's {table} cannot be read: {err}")),
    }
}

/// The answer when the source holds more rows than an import reads.
fn too_many_rows(table: &str, max: u32) -> ServiceError {
    ServiceError::FailedPrecondition(format!(
        "the source's {table} holds more than {max} rows to import (IMPORT_MAX_ROWS); raise it or run the import command"
    ))
}

/// What the import did, or would do, with one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
    Failed,
}

/// One source row and what became of it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RowReport {
    pub id: String,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl RowReport {
    pub fn failed(id: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { id: id.into(), outcome: Outcome::Failed, reason: reason.into(), notes: Vec::new() }
    }
}

/// A whole import's report.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ImportReport {
    pub dry_run: bool,
    pub rows: Vec<RowReport>,
}

/// A report as both services' import RPCs answer it.
pub struct Answer {
    pub rows: Vec<crate::proto::workflow::v1::ImportedRow>,
    pub created: i32,
    pub updated: i32,
    pub unchanged: i32,
    pub failed: i32,
}

impl ImportReport {
    /// The report as the contracts answer it; logs its counts (`what`: "workflows", "agents").
    pub fn answer(&self, what: &str) -> Answer {
        use crate::proto::workflow::v1 as pb;
        let rows = self
            .rows
            .iter()
            .map(|row| pb::ImportedRow {
                id: row.id.clone(),
                outcome: match row.outcome {
                    Outcome::Created => pb::ImportOutcome::Created,
                    Outcome::Updated => pb::ImportOutcome::Updated,
                    Outcome::Unchanged => pb::ImportOutcome::Unchanged,
                    Outcome::Failed => pb::ImportOutcome::Failed,
                } as i32,
                reason: row.reason.clone(),
                notes: row.notes.clone(),
            })
            .collect();
        let answer = Answer {
            rows,
            created: self.count(Outcome::Created),
            updated: self.count(Outcome::Updated),
            unchanged: self.count(Outcome::Unchanged),
            failed: self.count(Outcome::Failed),
        };
        tracing::info!(
            dry_run = self.dry_run,
            created = answer.created,
            updated = answer.updated,
            unchanged = answer.unchanged,
            failed = answer.failed,
            "{what} imported"
        );
        answer
    }

    /// How many rows had `outcome`.
    pub fn count(&self, outcome: Outcome) -> i32 {
        self.rows.iter().filter(|r| r.outcome == outcome).count().try_into().unwrap_or(i32::MAX)
    }

    /// Prints the report for the operator: one JSON object per row, then a summary line.
    /// Exit status: success when no row failed, 2 when some did.
    pub fn print(&self) -> std::process::ExitCode {
        for row in &self.rows {
            println!("{}", serde_json::to_string(row).unwrap_or_default());
        }
        let summary = serde_json::json!({
            "dry_run": self.dry_run,
            "created": self.count(Outcome::Created),
            "updated": self.count(Outcome::Updated),
            "unchanged": self.count(Outcome::Unchanged),
            "failed": self.count(Outcome::Failed),
        });
        println!("{summary}");
        if self.count(Outcome::Failed) == 0 { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::from(2) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_never_shown() {
        let url: SourceUrl = "postgres://importer:s3cret@db.example:5433/platform".parse().unwrap();
        assert_eq!(url.to_string(), "postgres://db.example:5433/platform");
        assert!(!format!("{url:?}").contains("s3cret"));
        let err = "postgres://importer:s3cret@db.example:notaport/x".parse::<SourceUrl>().unwrap_err();
        assert!(!err.contains("s3cret"));
    }

    #[test]
    fn only_plain_identifiers_are_schemas() {
        for good in ["public", "Platform_2", "_x"] {
            assert!(check_schema("schema", good).is_ok(), "{good}");
        }
        for bad in ["", "1abc", "a\"; DROP TABLE x; --", "a.b", &"x".repeat(64)] {
            assert!(check_schema("schema", bad).is_err(), "{bad}");
        }
    }
}
