//! The two SQL dialects both services store in, as types: what differs between PostgreSQL and
//! SQLite is named here once, and repositories written against [`Dialect`] are ordinary Rust
//! (rustfmt, clippy and rust-analyzer see every line). What every repository shares on top of a
//! dialect lives here too: the idempotency-key table and keyset-page binding.
//!
//! Rust does not carry a trait's `where` clauses to its users, so the sqlx bounds a generic
//! repository needs are stated on its `impl` blocks (each service's storage); everything else a
//! dialect decides is here.

use crate::kit::error::{ServiceError, ServiceResult};
use crate::kit::idempotency::{IdempotencyKey, judge_replay};
use crate::kit::pagination::PageRequest;
use chrono::{DateTime, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use uuid::Uuid;
use uuid::fmt::Hyphenated;

/// A SQL dialect: its sqlx database and the fragments that differ.
pub trait Dialect: Send + Sync + 'static {
    type Db: sqlx::Database;

    /// How a writing transaction starts. SQLite takes its single write lock up front
    /// (`BEGIN IMMEDIATE`), which avoids the deadlock of two readers upgrading to writers.
    const BEGIN: &'static str;
    /// Appended to a `SELECT` of rows about to change: PostgreSQL locks them; SQLite's
    /// transaction holds the write lock already.
    const LOCK: &'static str;
    /// Appended to a `SELECT` that claims work: PostgreSQL's claimers skip each other's locked
    /// rows, so that processes sharing a database never wait on each other's claims; on SQLite
    /// one process owns the file.
    const SKIP_LOCKED: &'static str;
    /// Selects the strings of the JSON array bound as `$1` (one parameter for any number).
    const JSON_TEXTS: &'static str;
    /// Selects the ids of the JSON array of UUID strings bound as `$1`, as the id columns hold
    /// them (native `uuid` on PostgreSQL, text on SQLite).
    const JSON_UUIDS: &'static str;
    /// A one-row `FROM` (for `INSERT … SELECT`, and inside `EXISTS` for `DELETE`) that lets the
    /// statement's commit return before its WAL reaches the disk (PostgreSQL's
    /// `synchronous_commit = off`, for that statement's transaction only): for writes whose loss
    /// in a crash is harmless. SQLite has no such switch; there it is inert.
    const RELAXED_FROM: &'static str;

    /// How many rows a statement changed (sqlx has no trait for it).
    fn rows_affected(result: &<Self::Db as sqlx::Database>::QueryResult) -> u64;
}

/// PostgreSQL (production).
pub struct Postgres;

impl Dialect for Postgres {
    type Db = sqlx::Postgres;
    const BEGIN: &'static str = "BEGIN";
    const LOCK: &'static str = " FOR UPDATE";
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";
    const JSON_TEXTS: &'static str = "SELECT jsonb_array_elements_text($1::jsonb)";
    const JSON_UUIDS: &'static str = "SELECT jsonb_array_elements_text($1::jsonb)::uuid";
    const RELAXED_FROM: &'static str = "(SELECT set_config('synchronous_commit', 'off', true)) AS relaxed";

    fn rows_affected(result: &sqlx::postgres::PgQueryResult) -> u64 {
        result.rows_affected()
    }
}

/// SQLite (the embedded default).
pub struct Sqlite;

impl Dialect for Sqlite {
    type Db = sqlx::Sqlite;
    const BEGIN: &'static str = "BEGIN IMMEDIATE";
    const LOCK: &'static str = "";
    const SKIP_LOCKED: &'static str = "";
    const JSON_TEXTS: &'static str = "SELECT value FROM json_each($1)";
    const JSON_UUIDS: &'static str = "SELECT value FROM json_each($1)";
    const RELAXED_FROM: &'static str = "(SELECT 1) AS relaxed";

    fn rows_affected(result: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        result.rows_affected()
    }
}

/// An id column's value: a native `uuid` on PostgreSQL, its hyphenated text on SQLite (which
/// has no such type). Bound and read as this, an id never goes through a `String`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SqlUuid(pub Uuid);

impl std::fmt::Display for SqlUuid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl From<Uuid> for SqlUuid {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

impl From<SqlUuid> for Uuid {
    fn from(id: SqlUuid) -> Self {
        id.0
    }
}

impl sqlx::Type<sqlx::Postgres> for SqlUuid {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <Uuid as sqlx::Type<sqlx::Postgres>>::type_info()
    }
}

impl sqlx::Encode<'_, sqlx::Postgres> for SqlUuid {
    fn encode_by_ref(&self, buf: &mut sqlx::postgres::PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <Uuid as sqlx::Encode<sqlx::Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl sqlx::Decode<'_, sqlx::Postgres> for SqlUuid {
    fn decode(value: sqlx::postgres::PgValueRef<'_>) -> Result<Self, BoxDynError> {
        <Uuid as sqlx::Decode<sqlx::Postgres>>::decode(value).map(Self)
    }
}

impl sqlx::Type<sqlx::Sqlite> for SqlUuid {
    fn type_info() -> sqlx::sqlite::SqliteTypeInfo {
        <Hyphenated as sqlx::Type<sqlx::Sqlite>>::type_info()
    }
}

impl sqlx::Encode<'_, sqlx::Sqlite> for SqlUuid {
    fn encode_by_ref(&self, buf: &mut sqlx::sqlite::SqliteArgumentsBuffer) -> Result<IsNull, BoxDynError> {
        <Hyphenated as sqlx::Encode<sqlx::Sqlite>>::encode_by_ref(&self.0.hyphenated(), buf)
    }
}

impl sqlx::Decode<'_, sqlx::Sqlite> for SqlUuid {
    fn decode(value: sqlx::sqlite::SqliteValueRef<'_>) -> Result<Self, BoxDynError> {
        <Hyphenated as sqlx::Decode<sqlx::Sqlite>>::decode(value).map(|id| Self(id.into_uuid()))
    }
}

/// Claims `key` for `tenant` on the transaction's connection. `Ok(None)`: the caller does the
/// work and then calls [`complete_idempotency`]. `Ok(Some(json))`: a replay, answer the stored
/// response.
pub async fn claim_idempotency<D: Dialect>(
    conn: &mut <D::Db as sqlx::Database>::Connection,
    tenant: &str,
    key: Option<&IdempotencyKey>,
) -> ServiceResult<Option<String>>
where
    for<'c> &'c mut <D::Db as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::Db>,
    <D::Db as sqlx::Database>::Arguments: sqlx::IntoArguments<D::Db>,
    for<'a> &'a str: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'a> DateTime<Utc>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
    for<'r> (String, Option<String>): sqlx::FromRow<'r, <D::Db as sqlx::Database>::Row>,
{
    let Some(key) = key else { return Ok(None) };
    let inserted = sqlx::query::<D::Db>(
        "INSERT INTO idempotency_keys (tenant_id, request_id, fingerprint, created_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, request_id) DO NOTHING",
    )
    .bind(tenant)
    .bind(key.request_id.as_str())
    .bind(key.fingerprint.as_str())
    .bind(Utc::now())
    .execute(&mut *conn)
    .await?;
    if D::rows_affected(&inserted) == 1 {
        return Ok(None);
    }
    let (fingerprint, response): (String, Option<String>) =
        sqlx::query_as("SELECT fingerprint, response FROM idempotency_keys WHERE tenant_id = $1 AND request_id = $2")
            .bind(tenant)
            .bind(key.request_id.as_str())
            .fetch_one(&mut *conn)
            .await?;
    judge_replay(key, &fingerprint, response).map(Some)
}

/// Stores the answer of a claimed key, in the same transaction as the work.
pub async fn complete_idempotency<DB>(
    conn: &mut DB::Connection,
    tenant: &str,
    key: Option<&IdempotencyKey>,
    response: &impl serde::Serialize,
) -> ServiceResult<()>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'a> &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    String: for<'a> sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let Some(key) = key else { return Ok(()) };
    let json = serde_json::to_string(response).map_err(ServiceError::internal)?;
    sqlx::query::<DB>("UPDATE idempotency_keys SET response = $1 WHERE tenant_id = $2 AND request_id = $3")
        .bind(json)
        .bind(tenant)
        .bind(key.request_id.as_str())
        .execute(conn)
        .await?;
    Ok(())
}

/// Forgets idempotency keys older than `before` (answers are kept for replays only so long).
pub async fn expire_idempotency<D: Dialect>(pool: &sqlx::Pool<D::Db>, before: DateTime<Utc>) -> ServiceResult<u64>
where
    for<'c> &'c mut <D::Db as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::Db>,
    <D::Db as sqlx::Database>::Arguments: sqlx::IntoArguments<D::Db>,
    for<'a> DateTime<Utc>: sqlx::Encode<'a, D::Db> + sqlx::Type<D::Db>,
{
    let expired =
        sqlx::query::<D::Db>("DELETE FROM idempotency_keys WHERE created_at < $1").bind(before).execute(pool).await?;
    Ok(D::rows_affected(&expired))
}

/// Keyset paging, bound in one place: a paged statement takes, in order, `has_after` (0: from
/// the start), then the sort key of the page's last row and its id.
pub trait BindKeyset: Sized {
    /// Binds `page`'s cursor, for a page ordered by (time, id), as the next three parameters.
    fn bind_keyset(self, page: &PageRequest) -> ServiceResult<Self>;
    /// Binds `page`'s cursor, for a page ordered by (text, id), as the next three parameters.
    fn bind_text_keyset(self, page: &PageRequest) -> ServiceResult<Self>;
    /// Binds `page`'s cursor, for a page ordered by (time, a caller's text key such as a session
    /// id), as the next three parameters.
    fn bind_time_text_keyset(self, page: &PageRequest) -> ServiceResult<Self>;
}

/// A cursor's id, as the id column holds it; a token whose id is no UUID was not made by us.
fn cursor_id(id: &str) -> ServiceResult<SqlUuid> {
    if id.is_empty() {
        return Ok(SqlUuid(Uuid::nil()));
    }
    Uuid::parse_str(id).map(SqlUuid).map_err(|_| crate::kit::pagination::bad_token())
}

impl<'q, DB, O> BindKeyset for sqlx::query::QueryAs<'q, DB, O, DB::Arguments>
where
    DB: sqlx::Database,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    SqlUuid: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    fn bind_keyset(self, page: &PageRequest) -> ServiceResult<Self> {
        let (has_after, after_time, after_id) = page.time_id_cursor()?;
        Ok(self.bind(has_after).bind(after_time).bind(cursor_id(&after_id)?))
    }

    fn bind_text_keyset(self, page: &PageRequest) -> ServiceResult<Self> {
        let (has_after, after_text, after_id) = page.text_id_cursor()?;
        Ok(self.bind(has_after).bind(after_text).bind(cursor_id(&after_id)?))
    }

    fn bind_time_text_keyset(self, page: &PageRequest) -> ServiceResult<Self> {
        let (has_after, after_time, after_key) = page.time_id_cursor()?;
        Ok(self.bind(has_after).bind(after_time).bind(after_key))
    }
}
