//! The struct every execution repository ([`super::executions`], [`super::sessions`],
//! [`super::feedback`], [`super::outbox`]) is implemented on, and the checks they share.

use std::marker::PhantomData;

use engarde::kit::dialect::{self, Dialect, SqlUuid, Statement, Via};
use engarde::kit::error::{ServiceError, ServiceResult};
use engarde::kit::warm_pool::WarmPool;
use uuid::Uuid;

use super::AgentDialect;

pub(super) fn execution_not_found(id: Uuid) -> ServiceError {
    ServiceError::not_found(format!("execution {id}"))
}

/// The execution repository of a dialect.
pub(super) struct SqlExecutionRepository<D: Dialect> {
    pub(super) pool: WarmPool<D::Db>,
    dialect: PhantomData<D>,
}

pub(super) type PostgresExecutionRepository = SqlExecutionRepository<dialect::Postgres>;
pub(super) type SqliteExecutionRepository = SqlExecutionRepository<dialect::Sqlite>;

impl<D: Dialect> SqlExecutionRepository<D> {
    pub fn new(pool: WarmPool<D::Db>) -> Self {
        Self { pool, dialect: PhantomData }
    }
}

impl<D: AgentDialect> SqlExecutionRepository<D> {
    /// NOT_FOUND unless the tenant has this agent.
    pub(super) async fn ensure_agent(
        executor: impl Into<Via<'_, D::Db>>,
        tenant: &str,
        agent_id: Uuid,
    ) -> ServiceResult<()> {
        let found: Option<(SqlUuid,)> = sqlx::query::<D::Db>("SELECT id FROM agents WHERE id = $1 AND tenant_id = $2")
            .arg(SqlUuid(agent_id))
            .arg(tenant)
            .fetch_optional_as(executor)
            .await?;
        found.map(drop).ok_or_else(|| ServiceError::not_found(format!("agent {agent_id}")))
    }
}
