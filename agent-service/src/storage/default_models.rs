//! Tenants' default models: one row per tenant that ever set one, with who set it and when.

use std::marker::PhantomData;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use engarde::kit::dialect::{self, Statement};
use engarde::kit::error::{ServiceError, ServiceResult};
use engarde::kit::idempotency::IdempotencyKey;
use engarde::kit::versioning::ensure_fresh;
use engarde::kit::warm_pool::WarmPool;
use sqlx::types::Json;

use super::{AgentDialect, replayed};
use crate::domain::default_model::DefaultModel;
use crate::domain::{ModelSettings, now};

/// A change of a tenant's default model, already validated.
#[derive(Debug, Clone)]
pub struct DefaultModelChange {
    /// The new default; empty clears it.
    pub model: ModelSettings,
    /// Who is changing it.
    pub subject: String,
    /// The etag the change was based on; empty for "whatever the version".
    pub etag: String,
}

/// What a set did.
#[derive(Debug, Clone, PartialEq)]
pub enum DefaultModelSet {
    /// The default was changed to this.
    Changed(DefaultModel),
    /// A retry: the answer of the first request with this id (nothing changed now).
    Replayed(DefaultModel),
}

#[async_trait]
pub trait DefaultModelRepository: Send + Sync {
    /// The tenant's default model ([`DefaultModel::unset`] when it never set one).
    async fn default_model(&self, tenant: &str) -> ServiceResult<DefaultModel>;

    /// Replaces the tenant's default model, recording who and when. ABORTED when the etag is
    /// stale, or when a concurrent change came first.
    async fn set_default_model(
        &self,
        tenant: &str,
        change: DefaultModelChange,
        key: Option<&IdempotencyKey>,
    ) -> ServiceResult<DefaultModelSet>;
}

#[derive(sqlx::FromRow)]
pub(super) struct DefaultModelRow {
    model: Json<ModelSettings>,
    updated_by: String,
    updated_at: DateTime<Utc>,
    version: i64,
}

impl From<DefaultModelRow> for DefaultModel {
    fn from(row: DefaultModelRow) -> Self {
        Self { model: row.model.0, updated_by: row.updated_by, updated_at: Some(row.updated_at), version: row.version }
    }
}

/// The default model repository of a dialect.
pub(super) struct SqlDefaultModelRepository<D: AgentDialect> {
    pool: WarmPool<D::Db>,
    dialect: PhantomData<D>,
}

impl<D: AgentDialect> SqlDefaultModelRepository<D> {
    pub fn new(pool: WarmPool<D::Db>) -> Self {
        Self { pool, dialect: PhantomData }
    }
}

const SELECT: &str = "SELECT model, updated_by, updated_at, version FROM tenant_default_models WHERE tenant_id = $1";

#[async_trait]
impl<D: AgentDialect> DefaultModelRepository for SqlDefaultModelRepository<D> {
    async fn default_model(&self, tenant: &str) -> ServiceResult<DefaultModel> {
        let _span = D::span("default_models.default_model");
        let row: Option<DefaultModelRow> =
            sqlx::query::<D::Db>(SELECT).arg(tenant).fetch_optional_as(&self.pool).await?;
        Ok(row.map(DefaultModel::from).unwrap_or_else(DefaultModel::unset))
    }

    async fn set_default_model(
        &self,
        tenant: &str,
        change: DefaultModelChange,
        key: Option<&IdempotencyKey>,
    ) -> ServiceResult<DefaultModelSet> {
        let _span = D::span("default_models.set_default_model");
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        if let Some(json) = dialect::claim_idempotency::<D>(&mut *tx, tenant, key).await? {
            return Ok(DefaultModelSet::Replayed(replayed(&json)?));
        }
        let current: Option<DefaultModelRow> =
            sqlx::query::<D::Db>(SELECT).arg(tenant).fetch_optional_as(&mut *tx).await?;
        let current_version = current.map_or(0, |row| row.version);
        ensure_fresh("the tenant's default model", current_version, &change.etag)?;
        let set = DefaultModel {
            model: change.model,
            updated_by: change.subject,
            updated_at: Some(now()),
            version: current_version + 1,
        };
        // Written only over the version read: a concurrent first set or change (which the read
        // did not lock out) makes this one change nothing, and it is refused below.
        let written = sqlx::query::<D::Db>(
            "INSERT INTO tenant_default_models (tenant_id, model, updated_by, updated_at, version) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (tenant_id) DO UPDATE SET model = excluded.model, updated_by = excluded.updated_by, \
               updated_at = excluded.updated_at, version = excluded.version \
             WHERE tenant_default_models.version = $6",
        )
        .arg(tenant)
        .json(&set.model)
        .arg(&set.updated_by)
        .arg(set.updated_at.unwrap_or_else(now))
        .arg(set.version)
        .arg(current_version)
        .run(&mut *tx)
        .await?;
        if D::rows_affected(&written) != 1 {
            return Err(ServiceError::Aborted(
                "the tenant's default model was changed at the same time; read it again".into(),
            ));
        }
        dialect::complete_idempotency::<D::Db>(&mut *tx, tenant, key, &set).await?;
        tx.commit().await?;
        Ok(DefaultModelSet::Changed(set))
    }
}
