//! The two SQL dialects both services store in, as types: what differs between PostgreSQL and
//! SQLite is named here once, and repositories written against [`Dialect`] are ordinary Rust
//! (rustfmt, clippy and rust-analyzer see every line). What every repository shares on top of a
//! dialect lives here too: the idempotency-key table and keyset-page binding.
//!
//! Storage code generic over a dialect states no sqlx bounds: Rust does not carry a trait's
//! `where` clauses to its users, but it does carry supertraits and bounds on associated types.
//! So what sqlx asks of a database to run statements (executors, argument lists) is stated once,
//! on [`SqlRun`]'s blanket impl; the parameter types storage binds are [`SqlDb`]'s supertraits,
//! checked once per database by its impl; and storage runs its statements through
//! [`Statement`]: `.arg(value)` binds, `.run(conn)` executes, `.fetch_*_as(conn)` fetch rows and
//! decode them through [`Decodes`].

use crate::kit::error::{ServiceError, ServiceResult};
use crate::kit::idempotency::{IdempotencyKey, judge_replay};
use crate::kit::pagination::PageRequest;
use crate::kit::warm_pool::WarmPool;
use chrono::{DateTime, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use uuid::Uuid;
use uuid::fmt::Hyphenated;

/// A SQL dialect: its sqlx database and the fragments that differ.
pub trait Dialect: Send + Sync + 'static {
    type Db: SqlDb;

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
    /// Selects the ids of the JSON array of UUID strings bound as `$1` (one parameter for any
    /// number), as the id columns hold them (native `uuid` on PostgreSQL, text on SQLite).
    const JSON_UUIDS: &'static str;
    /// A one-row `FROM` (for `INSERT … SELECT`, and inside `EXISTS` for `DELETE`) that lets the
    /// statement's commit return before its WAL reaches the disk (PostgreSQL's
    /// `synchronous_commit = off`, for that statement's transaction only): for writes whose loss
    /// in a crash is harmless. SQLite has no such switch; there it is inert.
    const RELAXED_FROM: &'static str;
    /// The database as OpenTelemetry names it (`db.system`), on the spans of storage calls.
    const SYSTEM: &'static str;

    /// A span of the storage call `operation` (`executions.start`), recorded when traces are
    /// exported and the call is part of one; it ends when dropped.
    fn span(operation: &'static str) -> super::trace::Span {
        super::trace::Span::db(Self::SYSTEM, operation)
    }

    /// How many rows a statement changed (sqlx has no trait for it).
    fn rows_affected(result: &<Self::Db as sqlx::Database>::QueryResult) -> u64;
}

/// A connection (or a transaction, through `&mut *tx`) of a dialect's database.
pub type Conn<D> = <<D as Dialect>::Db as sqlx::Database>::Connection;

/// PostgreSQL (production).
pub struct Postgres;

impl Dialect for Postgres {
    type Db = sqlx::Postgres;
    const BEGIN: &'static str = "BEGIN";
    const LOCK: &'static str = " FOR UPDATE";
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";
    const JSON_UUIDS: &'static str = "SELECT jsonb_array_elements_text($1::jsonb)::uuid";
    const RELAXED_FROM: &'static str = "(SELECT set_config('synchronous_commit', 'off', true)) AS relaxed";
    const SYSTEM: &'static str = "postgresql";

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
    const JSON_UUIDS: &'static str = "SELECT value FROM json_each($1)";
    const RELAXED_FROM: &'static str = "(SELECT 1) AS relaxed";
    const SYSTEM: &'static str = "sqlite";

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

/// A parameter type `Self` can bind (any type sqlx encodes for it).
pub trait Binds<T> {
    fn bind_value(query: SqlQuery<'_, Self>, value: T) -> SqlQuery<'_, Self>
    where
        Self: sqlx::Database;
}

impl<DB: sqlx::Database, T> Binds<T> for DB
where
    T: for<'a> sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    fn bind_value(query: SqlQuery<'_, Self>, value: T) -> SqlQuery<'_, Self> {
        query.bind(value)
    }
}

/// Text `Self` binds by reference. Its own trait, with no lifetime in its name: a
/// higher-ranked `Binds<&'a str>` supertrait cannot be proven for a dialect's database.
pub trait BindsText {
    fn bind_str<'q>(query: SqlQuery<'q, Self>, value: &str) -> SqlQuery<'q, Self>
    where
        Self: sqlx::Database;
    fn bind_opt_str<'q>(query: SqlQuery<'q, Self>, value: Option<&str>) -> SqlQuery<'q, Self>
    where
        Self: sqlx::Database;
}

impl<DB: sqlx::Database> BindsText for DB
where
    for<'a> &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    for<'a> Option<&'a str>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    fn bind_str<'q>(query: SqlQuery<'q, Self>, value: &str) -> SqlQuery<'q, Self> {
        query.bind(value)
    }

    fn bind_opt_str<'q>(query: SqlQuery<'q, Self>, value: Option<&str>) -> SqlQuery<'q, Self> {
        query.bind(value)
    }
}

/// A value storage binds as a statement's next parameter: one of the types every [`SqlDb`]
/// binds, owned or (text) borrowed.
pub trait Param<DB: sqlx::Database> {
    fn bind_to(self, query: SqlQuery<'_, DB>) -> SqlQuery<'_, DB>;
}

impl<DB: sqlx::Database + BindsText> Param<DB> for &str {
    fn bind_to(self, query: SqlQuery<'_, DB>) -> SqlQuery<'_, DB> {
        DB::bind_str(query, self)
    }
}

impl<DB: sqlx::Database + BindsText> Param<DB> for &String {
    fn bind_to(self, query: SqlQuery<'_, DB>) -> SqlQuery<'_, DB> {
        DB::bind_str(query, self)
    }
}

impl<DB: sqlx::Database + BindsText> Param<DB> for Option<&str> {
    fn bind_to(self, query: SqlQuery<'_, DB>) -> SqlQuery<'_, DB> {
        DB::bind_opt_str(query, self)
    }
}

/// Owned parameter types: each binds as itself.
macro_rules! owned_params {
    ($($owned:ty),* $(,)?) => {$(
        impl<DB: sqlx::Database + Binds<$owned>> Param<DB> for $owned {
            fn bind_to(self, query: SqlQuery<'_, DB>) -> SqlQuery<'_, DB> {
                DB::bind_value(query, self)
            }
        }
    )*};
}

owned_params!(
    String,
    i32,
    i64,
    f64,
    bool,
    Vec<u8>,
    DateTime<Utc>,
    SqlUuid,
    Option<String>,
    Option<i32>,
    Option<i64>,
    Option<Vec<u8>>,
    Option<DateTime<Utc>>,
    Option<SqlUuid>,
);

/// A row type `Self`'s rows decode into.
pub trait Decodes<R>: sqlx::Database {
    fn decode_row(row: &Self::Row) -> sqlx::Result<R>;
}

impl<DB: sqlx::Database, R> Decodes<R> for DB
where
    R: for<'r> sqlx::FromRow<'r, DB::Row>,
{
    fn decode_row(row: &Self::Row) -> sqlx::Result<R> {
        R::from_row(row)
    }
}

/// A statement of `DB`, before its parameters are bound.
pub type SqlQuery<'q, DB> = sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>;

/// Where a statement runs: a connection (or transaction) of the database, or a pool (sqlx's,
/// or the services' [`WarmPool`], which hands out the connection used last).
pub enum Via<'c, DB: sqlx::Database> {
    Conn(&'c mut DB::Connection),
    Pool(&'c sqlx::Pool<DB>),
    Warm(&'c WarmPool<DB>),
}

impl<'c, DB: sqlx::Database> From<&'c WarmPool<DB>> for Via<'c, DB> {
    fn from(pool: &'c WarmPool<DB>) -> Self {
        Self::Warm(pool)
    }
}

impl<'c, DB: sqlx::Database> From<&'c mut DB::Connection> for Via<'c, DB> {
    fn from(conn: &'c mut DB::Connection) -> Self {
        Self::Conn(conn)
    }
}

impl<'c, DB: sqlx::Database> From<&'c sqlx::Pool<DB>> for Via<'c, DB> {
    fn from(pool: &'c sqlx::Pool<DB>) -> Self {
        Self::Pool(pool)
    }
}

/// Runs statements of `Self` on a connection or the pool: sqlx's bounds for that are stated
/// here, once, on the blanket impl.
pub trait SqlRun: sqlx::Database {
    /// Binds `value` as JSON.
    fn bind_json<'q, T: serde::Serialize + ?Sized>(query: SqlQuery<'q, Self>, value: &T) -> SqlQuery<'q, Self>;

    fn execute<'q, 'c>(
        query: SqlQuery<'q, Self>,
        via: Via<'c, Self>,
    ) -> impl Future<Output = sqlx::Result<Self::QueryResult>> + Send + use<'q, 'c, Self>;

    fn fetch_all<'q, 'c>(
        query: SqlQuery<'q, Self>,
        via: Via<'c, Self>,
    ) -> impl Future<Output = sqlx::Result<Vec<Self::Row>>> + Send + use<'q, 'c, Self>;

    fn fetch_optional<'q, 'c>(
        query: SqlQuery<'q, Self>,
        via: Via<'c, Self>,
    ) -> impl Future<Output = sqlx::Result<Option<Self::Row>>> + Send + use<'q, 'c, Self>;
}

impl<DB> SqlRun for DB
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments: sqlx::IntoArguments<DB> + 'q,
    for<'a> Option<sqlx::types::Json<&'a serde_json::value::RawValue>>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    fn bind_json<'q, T: serde::Serialize + ?Sized>(query: SqlQuery<'q, Self>, value: &T) -> SqlQuery<'q, Self> {
        // Serialised here and bound as raw JSON, so that one encoding serves every type. The
        // types storage binds always serialise; were one not to, NULL would be bound and the
        // statement refused (every JSON column is NOT NULL), rather than something else stored.
        let raw = serde_json::value::to_raw_value(value).ok();
        query.bind(raw.as_deref().map(sqlx::types::Json))
    }

    async fn execute<'q, 'c>(query: SqlQuery<'q, Self>, via: Via<'c, Self>) -> sqlx::Result<Self::QueryResult> {
        match via {
            Via::Conn(conn) => query.execute(conn).await,
            Via::Pool(pool) => query.execute(&mut *pool.acquire().await?).await,
            Via::Warm(pool) => {
                let mut lease = pool.lease().await?;
                let done = query.execute(&mut *lease).await;
                lease.kept_if_ok(done)
            }
        }
    }

    async fn fetch_all<'q, 'c>(query: SqlQuery<'q, Self>, via: Via<'c, Self>) -> sqlx::Result<Vec<Self::Row>> {
        match via {
            Via::Conn(conn) => query.fetch_all(conn).await,
            Via::Pool(pool) => query.fetch_all(&mut *pool.acquire().await?).await,
            Via::Warm(pool) => {
                let mut lease = pool.lease().await?;
                let done = query.fetch_all(&mut *lease).await;
                lease.kept_if_ok(done)
            }
        }
    }

    async fn fetch_optional<'q, 'c>(query: SqlQuery<'q, Self>, via: Via<'c, Self>) -> sqlx::Result<Option<Self::Row>> {
        match via {
            Via::Conn(conn) => query.fetch_optional(conn).await,
            Via::Pool(pool) => query.fetch_optional(&mut *pool.acquire().await?).await,
            Via::Warm(pool) => {
                let mut lease = pool.lease().await?;
                let done = query.fetch_optional(&mut *lease).await;
                lease.kept_if_ok(done)
            }
        }
    }
}

/// A database as storage uses it: it runs statements, and binds every parameter type storage
/// binds. Implemented for the two databases below; for each, the compiler checks that sqlx
/// encodes every one of these types.
pub trait SqlDb:
    SqlRun
    + BindsText
    + Binds<String>
    + Binds<i32>
    + Binds<i64>
    + Binds<f64>
    + Binds<bool>
    + Binds<Vec<u8>>
    + Binds<DateTime<Utc>>
    + Binds<SqlUuid>
    + Binds<Option<String>>
    + Binds<Option<i32>>
    + Binds<Option<i64>>
    + Binds<Option<Vec<u8>>>
    + Binds<Option<DateTime<Utc>>>
    + Binds<Option<SqlUuid>>
{
}

impl SqlDb for sqlx::Postgres {}
impl SqlDb for sqlx::Sqlite {}

/// How storage builds and runs a statement over any [`SqlDb`]: `sqlx::query::<D::Db>(sql)`,
/// then `.arg(value)` per parameter, then one of the runs.
pub trait Statement<DB: SqlDb>: Sized {
    /// Binds the next parameter.
    fn arg(self, value: impl Param<DB>) -> Self;

    /// Binds the next parameter as JSON.
    fn json<T: serde::Serialize + ?Sized>(self, value: &T) -> Self;

    /// Runs it; answers what it did (see [`Dialect::rows_affected`]).
    fn run<'c>(self, via: impl Into<Via<'c, DB>>) -> impl Future<Output = sqlx::Result<DB::QueryResult>> + Send;

    /// Its rows, decoded.
    fn fetch_all_as<'c, R>(self, via: impl Into<Via<'c, DB>>) -> impl Future<Output = sqlx::Result<Vec<R>>> + Send
    where
        DB: Decodes<R>;

    /// Its first row, decoded, if any.
    fn fetch_optional_as<'c, R>(
        self,
        via: impl Into<Via<'c, DB>>,
    ) -> impl Future<Output = sqlx::Result<Option<R>>> + Send
    where
        DB: Decodes<R>;

    /// Its first row, decoded; `RowNotFound` when there is none.
    fn fetch_one_as<'c, R>(self, via: impl Into<Via<'c, DB>>) -> impl Future<Output = sqlx::Result<R>> + Send
    where
        DB: Decodes<R>,
    {
        let rows = self.fetch_optional_as(via);
        async move { rows.await?.ok_or(sqlx::Error::RowNotFound) }
    }
}

impl<'q, DB: SqlDb> Statement<DB> for SqlQuery<'q, DB> {
    fn arg(self, value: impl Param<DB>) -> Self {
        value.bind_to(self)
    }

    fn json<T: serde::Serialize + ?Sized>(self, value: &T) -> Self {
        DB::bind_json(self, value)
    }

    fn run<'c>(self, via: impl Into<Via<'c, DB>>) -> impl Future<Output = sqlx::Result<DB::QueryResult>> + Send {
        DB::execute(self, via.into())
    }

    fn fetch_all_as<'c, R>(self, via: impl Into<Via<'c, DB>>) -> impl Future<Output = sqlx::Result<Vec<R>>> + Send
    where
        DB: Decodes<R>,
    {
        let rows = DB::fetch_all(self, via.into());
        async move { rows.await?.iter().map(DB::decode_row).collect() }
    }

    fn fetch_optional_as<'c, R>(
        self,
        via: impl Into<Via<'c, DB>>,
    ) -> impl Future<Output = sqlx::Result<Option<R>>> + Send
    where
        DB: Decodes<R>,
    {
        let row = DB::fetch_optional(self, via.into());
        async move { row.await?.as_ref().map(DB::decode_row).transpose() }
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
    D::Db: Decodes<(String, Option<String>)>,
{
    let Some(key) = key else { return Ok(None) };
    let inserted = sqlx::query::<D::Db>(
        "INSERT INTO idempotency_keys (tenant_id, request_id, fingerprint, created_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, request_id) DO NOTHING",
    )
    .arg(tenant)
    .arg(key.request_id.as_str())
    .arg(key.fingerprint.as_str())
    .arg(Utc::now())
    .run(&mut *conn)
    .await?;
    if D::rows_affected(&inserted) == 1 {
        return Ok(None);
    }
    let (fingerprint, response): (String, Option<String>) = sqlx::query::<D::Db>(
        "SELECT fingerprint, response FROM idempotency_keys WHERE tenant_id = $1 AND request_id = $2",
    )
    .arg(tenant)
    .arg(key.request_id.as_str())
    .fetch_one_as(&mut *conn)
    .await?;
    judge_replay(key, &fingerprint, response).map(Some)
}

/// Stores the answer of a claimed key, in the same transaction as the work.
pub async fn complete_idempotency<DB: SqlDb>(
    conn: &mut DB::Connection,
    tenant: &str,
    key: Option<&IdempotencyKey>,
    response: &impl serde::Serialize,
) -> ServiceResult<()> {
    let Some(key) = key else { return Ok(()) };
    let json = serde_json::to_string(response).map_err(ServiceError::internal)?;
    sqlx::query::<DB>("UPDATE idempotency_keys SET response = $1 WHERE tenant_id = $2 AND request_id = $3")
        .arg(json)
        .arg(tenant)
        .arg(key.request_id.as_str())
        .run(conn)
        .await?;
    Ok(())
}

/// Forgets up to `limit` idempotency keys older than `before` (the oldest first), in one short
/// transaction; answers how many.
pub async fn expire_idempotency<D: Dialect>(
    pool: &sqlx::Pool<D::Db>,
    before: DateTime<Utc>,
    limit: i64,
) -> ServiceResult<u64> {
    let expired = sqlx::query::<D::Db>(
        "DELETE FROM idempotency_keys WHERE (tenant_id, request_id) IN \
         (SELECT tenant_id, request_id FROM idempotency_keys WHERE created_at < $1 ORDER BY created_at LIMIT $2)",
    )
    .arg(before)
    .arg(limit)
    .run(pool)
    .await?;
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

impl<'q, DB: SqlDb> BindKeyset for SqlQuery<'q, DB> {
    fn bind_keyset(self, page: &PageRequest) -> ServiceResult<Self> {
        let (has_after, after_time, after_id) = page.time_id_cursor()?;
        Ok(self.arg(has_after).arg(after_time).arg(cursor_id(&after_id)?))
    }

    fn bind_text_keyset(self, page: &PageRequest) -> ServiceResult<Self> {
        let (has_after, after_text, after_id) = page.text_id_cursor()?;
        Ok(self.arg(has_after).arg(after_text).arg(cursor_id(&after_id)?))
    }

    fn bind_time_text_keyset(self, page: &PageRequest) -> ServiceResult<Self> {
        let (has_after, after_time, after_key) = page.time_id_cursor()?;
        Ok(self.arg(has_after).arg(after_time).arg(after_key))
    }
}
