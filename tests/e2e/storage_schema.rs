//! The two dialects' migrations cannot drift apart: for each service, every migration of each
//! dialect is applied to a fresh PostgreSQL database and to a fresh SQLite file, and the schemas
//! they make are compared from the catalogs (PostgreSQL's `pg_catalog` / `information_schema`,
//! SQLite's `sqlite_master` and `pragma_*`): the tables, and per table the columns (name, NOT
//! NULL, type family), the primary key, the foreign keys, the unique constraints and indexes,
//! the other indexes and the number of CHECK constraints. A difference fails with a diff naming
//! the table and the column.
//!
//! Column types are compared as families, so that PostgreSQL's `uuid` ids and SQLite's `TEXT`
//! ones agree (both "text"): PostgreSQL `text`/`uuid` -> text, `bigint`/`integer` -> integer,
//! `boolean` -> boolean, `double precision` -> real, `bytea` -> blob, `jsonb` -> json,
//! `timestamptz` -> timestamp; SQLite's family comes from the declared type name. SQLite has no
//! JSON or timestamp type: the SQLite migrations declare such columns `TEXT`, which is what a
//! PostgreSQL json or timestamp column must be on SQLite.
//!
//! Trigger functions, NOTIFY and the seeding of `deployment_identity` are PostgreSQL-only
//! behaviour and not compared.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sqlx::Row as _;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

use crate::helpers::{Backend, TestDb};

/// Tables allowed on one dialect only: (service, table, the dialect that has it, why). None today.
const TABLES_ON_ONE_SIDE_ONLY: &[(&str, &str, &str, &str)] = &[];

/// Column type differences that exist and are allowed: (service, table, column, PostgreSQL
/// family, SQLite family, why). Each must still be a difference: an entry that no longer is one
/// fails the test, so that this list cannot hide a later drift of the same column.
const ALLOWED_TYPE_DIFFERENCES: &[(&str, &str, &str, Family, Family, &str)] = &[
    (
        "agent-service",
        "agents",
        "scheduled",
        Family::Boolean,
        Family::Integer,
        "sqlite/0004 declares INTEGER (default 1) where postgres/0004 says BOOLEAN (default TRUE); SQLite stores \
         both as 0/1 and sqlx reads either as bool. Changing an applied migration would change its checksum",
    ),
    (
        "agent-service",
        "runs",
        "approval_required",
        Family::Boolean,
        Family::Integer,
        "sqlite/0003 declares INTEGER where postgres/0003 says BOOLEAN; SQLite stores both as 0/1 and sqlx reads \
         either as bool",
    ),
    (
        "agent-service",
        "deployment_identity",
        "singleton",
        Family::Boolean,
        Family::Integer,
        "sqlite/0005 makes it INTEGER PRIMARY KEY (the rowid) CHECK (singleton = 1) where postgres/0005 says \
         BOOLEAN PRIMARY KEY CHECK (singleton): one row either way, and nothing but the migration reads it",
    ),
];

/// The comparable type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Family {
    Text,
    Integer,
    Boolean,
    Real,
    Blob,
    Json,
    Timestamp,
    Other,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Text => "text",
            Self::Integer => "integer",
            Self::Boolean => "boolean",
            Self::Real => "real",
            Self::Blob => "blob",
            Self::Json => "json",
            Self::Timestamp => "timestamp",
            Self::Other => "other",
        };
        f.write_str(name)
    }
}

impl Family {
    /// The family of a PostgreSQL `information_schema.columns.data_type`.
    fn of_postgres(data_type: &str) -> Self {
        match data_type {
            "text" | "uuid" | "character varying" | "character" => Self::Text,
            "bigint" | "integer" | "smallint" => Self::Integer,
            "boolean" => Self::Boolean,
            "double precision" | "real" => Self::Real,
            "bytea" => Self::Blob,
            "jsonb" | "json" => Self::Json,
            "timestamp with time zone" | "timestamp without time zone" => Self::Timestamp,
            _ => Self::Other,
        }
    }

    /// The family of an SQLite declared type, by its name (SQLite's own affinity rules would
    /// call BOOLEAN numeric and JSON or DATETIME numeric too: the name says more).
    fn of_sqlite(declared: &str) -> Self {
        let t = declared.to_ascii_uppercase();
        if t.contains("INT") {
            Self::Integer
        } else if t.contains("BOOL") {
            Self::Boolean
        } else if t.contains("JSON") {
            Self::Json
        } else if t.contains("TIMESTAMP") || t.contains("DATETIME") {
            Self::Timestamp
        } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") || t.contains("UUID") {
            Self::Text
        } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
            Self::Real
        } else if t.contains("BLOB") || t.contains("BYTEA") {
            Self::Blob
        } else {
            Self::Other
        }
    }

    /// What a column of this PostgreSQL family is declared as on SQLite: SQLite has no JSON
    /// and no timestamp type, and the SQLite migrations store both as TEXT.
    fn on_sqlite(self) -> Self {
        match self {
            Self::Json | Self::Timestamp => Self::Text,
            other => other,
        }
    }
}

/// A column as both catalogs describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Column {
    /// NOT NULL, or part of the primary key (see [`sqlite_schema`] for why).
    not_null: bool,
    family: Family,
    /// The type as declared, for messages.
    declared: String,
}

/// A foreign key: columns -> table(columns), ON DELETE action.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ForeignKey {
    columns: Vec<String>,
    table: String,
    references: Vec<String>,
    on_delete: String,
}

impl fmt::Display for ForeignKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "({}) -> {}({}) ON DELETE {}",
            self.columns.join(", "),
            self.table,
            self.references.join(", "),
            self.on_delete
        )
    }
}

/// One table of a schema.
#[derive(Debug, Clone, Default)]
struct Table {
    columns: BTreeMap<String, Column>,
    primary_key: Vec<String>,
    foreign_keys: BTreeSet<ForeignKey>,
    /// Unique constraints and unique indexes, as column lists (their names differ by dialect).
    unique: BTreeSet<Vec<String>>,
    /// The other indexes: name -> columns (partial-index predicates ignored).
    indexes: BTreeMap<String, Vec<String>>,
    checks: i64,
}

type Schema = BTreeMap<String, Table>;

/// The migrations folder of `service` for `dialect` ("postgres" or "sqlite").
fn migrations_dir(service: &str, dialect: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(service).join("migrations").join(dialect)
}

/// The schema every PostgreSQL migration of `service` makes, on a fresh database (dropped after).
async fn postgres_schema(service: &str) -> Schema {
    let db = TestDb::new(Backend::Postgres).await;
    let pool = PgPoolOptions::new().max_connections(1).connect(db.url()).await.expect("connect to PostgreSQL");
    let migrator = Migrator::new(migrations_dir(service, "postgres")).await.expect("PostgreSQL migrations");
    migrator.run(&pool).await.expect("apply the PostgreSQL migrations");
    let schema = read_postgres_schema(&pool).await;
    pool.close().await;
    schema
}

/// Reads the tables of the current schema from PostgreSQL's catalogs.
async fn read_postgres_schema(pool: &sqlx::PgPool) -> Schema {
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND c.relname <> '_sqlx_migrations'",
    )
    .fetch_all(pool)
    .await
    .expect("PostgreSQL tables");
    let mut schema = Schema::new();
    for (name,) in tables {
        let mut table = Table::default();
        let columns = sqlx::query(
            "SELECT column_name::text, is_nullable::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1",
        )
        .bind(&name)
        .fetch_all(pool)
        .await
        .expect("PostgreSQL columns");
        for row in columns {
            let data_type: String = row.get(2);
            let nullable: String = row.get(1);
            table.columns.insert(
                row.get(0),
                Column { not_null: nullable == "NO", family: Family::of_postgres(&data_type), declared: data_type },
            );
        }
        let indexes = sqlx::query(
            "SELECT ic.relname::text, i.indisunique, i.indisprimary, \
                    array(SELECT a.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                          ORDER BY k.ord) \
             FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid \
             WHERE i.indrelid = to_regclass(quote_ident($1))",
        )
        .bind(&name)
        .fetch_all(pool)
        .await
        .expect("PostgreSQL indexes");
        for row in indexes {
            let (index, unique, primary, columns): (String, bool, bool, Vec<String>) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            if primary {
                table.primary_key = columns;
            } else if unique {
                table.unique.insert(columns);
            } else {
                table.indexes.insert(index, columns);
            }
        }
        let foreign_keys = sqlx::query(
            "SELECT array(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord) \
                          JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum ORDER BY k.ord), \
                    (SELECT relname::text FROM pg_class WHERE oid = c.confrelid), \
                    array(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY AS k(attnum, ord) \
                          JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum ORDER BY k.ord), \
                    c.confdeltype::text \
             FROM pg_constraint c WHERE c.conrelid = to_regclass(quote_ident($1)) AND c.contype = 'f'",
        )
        .bind(&name)
        .fetch_all(pool)
        .await
        .expect("PostgreSQL foreign keys");
        for row in foreign_keys {
            let action: String = row.get(3);
            let on_delete = match action.as_str() {
                "a" => "NO ACTION",
                "r" => "RESTRICT",
                "c" => "CASCADE",
                "n" => "SET NULL",
                "d" => "SET DEFAULT",
                other => panic!("unknown confdeltype {other:?}"),
            };
            table.foreign_keys.insert(ForeignKey {
                columns: row.get(0),
                table: row.get(1),
                references: row.get(2),
                on_delete: on_delete.to_owned(),
            });
        }
        let (checks,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = to_regclass(quote_ident($1)) AND contype = 'c'",
        )
        .bind(&name)
        .fetch_one(pool)
        .await
        .expect("PostgreSQL checks");
        table.checks = checks;
        schema.insert(name, table);
    }
    schema
}

/// The schema every SQLite migration of `service` makes, in a fresh file.
///
/// A column of the primary key counts as NOT NULL, as on PostgreSQL: SQLite's catalog says
/// `notnull = 0` for `id TEXT PRIMARY KEY`, and SQLite (a legacy quirk) indeed lets such a key
/// hold NULL, which PostgreSQL refuses; the services never write a NULL id, so the comparison
/// does not count that as drift.
async fn sqlite_schema(service: &str) -> Schema {
    let db = TestDb::new(Backend::Sqlite).await;
    let options = SqliteConnectOptions::from_str(db.url()).expect("SQLite URL").create_if_missing(true);
    let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options).await.expect("open the SQLite file");
    let migrator = Migrator::new(migrations_dir(service, "sqlite")).await.expect("SQLite migrations");
    migrator.run(&pool).await.expect("apply the SQLite migrations");
    let schema = read_sqlite_schema(&pool).await;
    pool.close().await;
    schema
}

async fn read_sqlite_schema(pool: &sqlx::SqlitePool) -> Schema {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
         AND name <> '_sqlx_migrations'",
    )
    .fetch_all(pool)
    .await
    .expect("SQLite tables");
    let mut schema = Schema::new();
    for (name, sql) in tables {
        let mut table = Table::default();
        let columns = sqlx::query("SELECT name, type, \"notnull\", pk FROM pragma_table_info(?1)")
            .bind(&name)
            .fetch_all(pool)
            .await
            .expect("SQLite columns");
        let mut primary_key: Vec<(i64, String)> = Vec::new();
        for row in columns {
            let (column, declared, not_null, pk): (String, String, bool, i64) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            if pk > 0 {
                primary_key.push((pk, column.clone()));
            }
            table.columns.insert(
                column,
                Column { not_null: not_null || pk > 0, family: Family::of_sqlite(&declared), declared },
            );
        }
        primary_key.sort();
        table.primary_key = primary_key.into_iter().map(|(_, c)| c).collect();

        let foreign_keys = sqlx::query(
            "SELECT id, \"table\", \"from\", \"to\", on_delete FROM pragma_foreign_key_list(?1) ORDER BY id, seq",
        )
        .bind(&name)
        .fetch_all(pool)
        .await
        .expect("SQLite foreign keys");
        let mut by_id: BTreeMap<i64, ForeignKey> = BTreeMap::new();
        for row in foreign_keys {
            let (id, target, from, to, on_delete): (i64, String, String, Option<String>, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
            let fk = by_id.entry(id).or_insert_with(|| ForeignKey {
                columns: Vec::new(),
                table: target,
                references: Vec::new(),
                on_delete,
            });
            fk.columns.push(from);
            // NULL `to`: the referenced table's primary key, which every migration here names.
            fk.references.push(to.unwrap_or_else(|| "<primary key>".into()));
        }
        table.foreign_keys = by_id.into_values().collect();

        let indexes = sqlx::query("SELECT name, \"unique\", origin FROM pragma_index_list(?1)")
            .bind(&name)
            .fetch_all(pool)
            .await
            .expect("SQLite indexes");
        for row in indexes {
            let (index, unique, origin): (String, bool, String) = (row.get(0), row.get(1), row.get(2));
            if origin == "pk" {
                continue; // the primary key's own index, compared as the primary key
            }
            let columns: Vec<(Option<String>,)> =
                sqlx::query_as("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")
                    .bind(&index)
                    .fetch_all(pool)
                    .await
                    .expect("SQLite index columns");
            let columns: Vec<String> =
                columns.into_iter().map(|(c,)| c.unwrap_or_else(|| "<expression>".into())).collect();
            if unique {
                table.unique.insert(columns);
            } else {
                table.indexes.insert(index, columns);
            }
        }
        table.checks = count_checks(&sql);
        schema.insert(name, table);
    }
    schema
}

/// How many times `CHECK` occurs, as a whole word in any case, in a table's SQL, leaving out
/// comments and string literals (sqlite_master keeps the CREATE TABLE as written, with its
/// comments, and with the columns ALTER TABLE added).
fn count_checks(sql: &str) -> i64 {
    let mut code = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '-' if chars.peek() == Some(&'-') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                code.push('\n');
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut last = ' ';
                for c in chars.by_ref() {
                    if last == '*' && c == '/' {
                        break;
                    }
                    last = c;
                }
                code.push(' ');
            }
            '\'' => {
                // A string literal ('' is a quote inside it).
                loop {
                    match chars.next() {
                        None => break,
                        Some('\'') if chars.peek() == Some(&'\'') => {
                            chars.next();
                        }
                        Some('\'') => break,
                        Some(_) => {}
                    }
                }
                code.push(' ');
            }
            c => code.push(c),
        }
    }
    code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.eq_ignore_ascii_case("check"))
        .count() as i64
}

/// Every difference between the two schemas of `service`, one line each, naming the table and
/// the column; allowed differences ([`TABLES_ON_ONE_SIDE_ONLY`], [`ALLOWED_TYPE_DIFFERENCES`])
/// left out, and those no longer differing reported.
fn differences(service: &str, postgres: &Schema, sqlite: &Schema) -> Vec<String> {
    let mut out = Vec::new();
    let one_side_only = |table: &str, dialect: &str| {
        TABLES_ON_ONE_SIDE_ONLY.iter().any(|(s, t, d, _)| *s == service && *t == table && *d == dialect)
    };
    for name in postgres.keys().filter(|t| !sqlite.contains_key(*t)) {
        if !one_side_only(name, "postgres") {
            out.push(format!("table {name}: only on PostgreSQL"));
        }
    }
    for name in sqlite.keys().filter(|t| !postgres.contains_key(*t)) {
        if !one_side_only(name, "sqlite") {
            out.push(format!("table {name}: only on SQLite"));
        }
    }
    let mut allowed_seen = BTreeSet::new();
    for (name, pg) in postgres {
        let Some(lite) = sqlite.get(name) else { continue };
        for (column, p) in &pg.columns {
            let Some(s) = lite.columns.get(column) else {
                out.push(format!("{name}.{column}: only on PostgreSQL ({})", p.declared));
                continue;
            };
            if p.not_null != s.not_null {
                let says = |n: bool| if n { "NOT NULL" } else { "nullable" };
                out.push(format!("{name}.{column}: PostgreSQL {}, SQLite {}", says(p.not_null), says(s.not_null)));
            }
            if p.family == Family::Other || s.family == Family::Other || p.family.on_sqlite() != s.family {
                let allowed = ALLOWED_TYPE_DIFFERENCES.iter().position(|(sv, t, c, pf, sf, _)| {
                    *sv == service && *t == name && *c == column && *pf == p.family && *sf == s.family
                });
                match allowed {
                    Some(i) => {
                        allowed_seen.insert(i);
                    }
                    None => out.push(format!(
                        "{name}.{column}: type: PostgreSQL {} ({}; SQLite should say {}), SQLite {} ({})",
                        p.family,
                        p.declared,
                        p.family.on_sqlite(),
                        s.family,
                        s.declared
                    )),
                }
            }
        }
        for (column, s) in &lite.columns {
            if !pg.columns.contains_key(column) {
                out.push(format!("{name}.{column}: only on SQLite ({})", s.declared));
            }
        }
        if pg.primary_key != lite.primary_key {
            out.push(format!(
                "{name}: primary key: PostgreSQL ({}), SQLite ({})",
                pg.primary_key.join(", "),
                lite.primary_key.join(", ")
            ));
        }
        for fk in pg.foreign_keys.difference(&lite.foreign_keys) {
            out.push(format!("{name}: foreign key {fk}: only on PostgreSQL"));
        }
        for fk in lite.foreign_keys.difference(&pg.foreign_keys) {
            out.push(format!("{name}: foreign key {fk}: only on SQLite"));
        }
        for unique in pg.unique.difference(&lite.unique) {
            out.push(format!("{name}: unique ({}): only on PostgreSQL", unique.join(", ")));
        }
        for unique in lite.unique.difference(&pg.unique) {
            out.push(format!("{name}: unique ({}): only on SQLite", unique.join(", ")));
        }
        for (index, columns) in &pg.indexes {
            match lite.indexes.get(index) {
                None => out.push(format!("{name}: index {index} ({}): only on PostgreSQL", columns.join(", "))),
                Some(other) if other != columns => out.push(format!(
                    "{name}: index {index}: PostgreSQL ({}), SQLite ({})",
                    columns.join(", "),
                    other.join(", ")
                )),
                Some(_) => {}
            }
        }
        for (index, columns) in &lite.indexes {
            if !pg.indexes.contains_key(index) {
                out.push(format!("{name}: index {index} ({}): only on SQLite", columns.join(", ")));
            }
        }
        if pg.checks != lite.checks {
            out.push(format!("{name}: CHECK constraints: PostgreSQL {}, SQLite {}", pg.checks, lite.checks));
        }
    }
    for (i, (sv, table, column, pf, sf, _)) in ALLOWED_TYPE_DIFFERENCES.iter().enumerate() {
        if *sv == service && !allowed_seen.contains(&i) {
            out.push(format!(
                "{table}.{column}: ALLOWED_TYPE_DIFFERENCES expects PostgreSQL {pf} and SQLite {sf}, which is no \
                 longer so: remove the entry"
            ));
        }
    }
    out
}

async fn assert_dialects_agree(service: &str) {
    let postgres = postgres_schema(service).await;
    let sqlite = sqlite_schema(service).await;
    assert!(!postgres.is_empty() && !sqlite.is_empty(), "{service}: the migrations made no tables");
    let diff = differences(service, &postgres, &sqlite);
    assert!(
        diff.is_empty(),
        "{service}: the PostgreSQL and SQLite migrations make different schemas ({} difference(s)):\n  {}",
        diff.len(),
        diff.join("\n  ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_service_dialects_agree() {
    assert_dialects_agree("agent-service").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_service_dialects_agree() {
    assert_dialects_agree("workflow-service").await;
}

#[test]
fn checks_are_counted_as_words_outside_comments_and_strings() {
    let sql = "CREATE TABLE t (\n  -- a check of nothing\n  a TEXT CHECK (a IN ('check', 'x')),\n  \
               b INTEGER check(b > 0), checked INTEGER, /* CHECK */ c TEXT,\n  CHECK (a <> b)\n)";
    assert_eq!(count_checks(sql), 3);
}

#[test]
fn families_of_declared_types() {
    assert_eq!(Family::of_sqlite("TEXT"), Family::Text);
    assert_eq!(Family::of_sqlite("BIGINT"), Family::Integer);
    assert_eq!(Family::of_sqlite("BOOLEAN"), Family::Boolean);
    assert_eq!(Family::of_sqlite("REAL"), Family::Real);
    assert_eq!(Family::of_sqlite("BLOB"), Family::Blob);
    assert_eq!(Family::of_postgres("uuid"), Family::Text);
    assert_eq!(Family::of_postgres("jsonb").on_sqlite(), Family::Text);
    assert_eq!(Family::of_postgres("timestamp with time zone").on_sqlite(), Family::Text);
}
