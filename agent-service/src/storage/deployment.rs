//! The deployment's identity, made once in its database by migration 0005.

use engarde::kit::db::DbPool;
use engarde::kit::error::ServiceResult;

const SELECT: &str = "SELECT deployment_id FROM deployment_identity";

/// The deployment id stored in this database (the same for every replica on it).
pub async fn stored_deployment_id(pool: &DbPool) -> ServiceResult<String> {
    let id = match pool {
        DbPool::Postgres(p) => sqlx::query_scalar(SELECT).fetch_one(p.sqlx()).await?,
        DbPool::Sqlite(p) => sqlx::query_scalar(SELECT).fetch_one(p.sqlx()).await?,
    };
    Ok(id)
}
