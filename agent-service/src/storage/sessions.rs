//! Conversation memory: each agent's sessions and their messages. An execution's finish writes
//! them ([`super::executions`]); they are listed and cleared here.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use engarde::kit::dialect::{self, BindKeyset, SqlUuid, Statement};
use engarde::kit::error::{ServiceError, ServiceResult};
use engarde::kit::idempotency::IdempotencyKey;
use engarde::kit::pagination::PageRequest;
use uuid::Uuid;

use super::execution_rows::corrupt;
use super::execution_store::SqlExecutionRepository;
use super::{AgentDialect, replayed};
use crate::domain::execution::{MessageRole, Session, SessionMessage};

#[async_trait]
pub trait SessionRepository: Send + Sync {
    /// A page of an agent's sessions, most recently active first.
    async fn sessions(&self, tenant: &str, agent_id: Uuid, page: &PageRequest) -> ServiceResult<Vec<Session>>;

    /// A page of a session's messages, oldest first.
    async fn messages(
        &self,
        tenant: &str,
        agent_id: Uuid,
        session_id: &str,
        page: &PageRequest,
    ) -> ServiceResult<Vec<SessionMessage>>;

    /// The last `limit` messages of a session, oldest first: the memory an execution gives its
    /// model. Empty for a session that has none (or was cleared). The caller has checked the
    /// agent is the tenant's.
    async fn recent_messages(&self, agent_id: Uuid, session_id: &str, limit: u32)
    -> ServiceResult<Vec<SessionMessage>>;

    /// Forgets a session's messages; answers how many there were. The executions stay.
    async fn clear_session(
        &self,
        tenant: &str,
        agent_id: Uuid,
        session_id: &str,
        key: Option<&IdempotencyKey>,
    ) -> ServiceResult<i64>;
}

#[derive(sqlx::FromRow)]
pub(super) struct SessionRow {
    session_id: String,
    message_count: i64,
    last_message_at: DateTime<Utc>,
}

impl From<SessionRow> for Session {
    fn from(row: SessionRow) -> Self {
        Session { session_id: row.session_id, message_count: row.message_count, last_message_at: row.last_message_at }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct MessageRow {
    sequence: i64,
    role: String,
    text: String,
    execution_id: SqlUuid,
    created_at: DateTime<Utc>,
}

impl TryFrom<MessageRow> for SessionMessage {
    type Error = ServiceError;

    fn try_from(row: MessageRow) -> ServiceResult<Self> {
        Ok(SessionMessage {
            sequence: row.sequence,
            role: MessageRole::parse(&row.role).ok_or_else(|| corrupt("message role", row.execution_id))?,
            execution_id: row.execution_id.0,
            text: row.text,
            created_at: row.created_at,
        })
    }
}

#[async_trait]
impl<D: AgentDialect> SessionRepository for SqlExecutionRepository<D> {
    async fn sessions(&self, tenant: &str, agent_id: Uuid, page: &PageRequest) -> ServiceResult<Vec<Session>> {
        let _span = D::span("sessions.sessions");
        Self::ensure_agent(&self.pool, tenant, agent_id).await?;
        let rows: Vec<SessionRow> = sqlx::query::<D::Db>(
            "SELECT session_id, message_count, last_message_at FROM sessions \
             WHERE agent_id = $1 AND tenant_id = $2 \
               AND ($3 = 0 OR (last_message_at, session_id) < ($4, $5)) \
             ORDER BY last_message_at DESC, session_id DESC LIMIT $6",
        )
        .arg(SqlUuid(agent_id))
        .arg(tenant)
        .bind_time_text_keyset(page)?
        .arg(i64::from(page.size))
        .fetch_all_as(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Session::from).collect())
    }

    async fn messages(
        &self,
        tenant: &str,
        agent_id: Uuid,
        session_id: &str,
        page: &PageRequest,
    ) -> ServiceResult<Vec<SessionMessage>> {
        let _span = D::span("sessions.messages");
        Self::ensure_agent(&self.pool, tenant, agent_id).await?;
        let after = page.number_cursor()?;
        let rows: Vec<MessageRow> = sqlx::query::<D::Db>(
            "SELECT sequence, role, text, execution_id, created_at FROM session_messages \
             WHERE agent_id = $1 AND session_id = $2 AND sequence > $3 ORDER BY sequence LIMIT $4",
        )
        .arg(SqlUuid(agent_id))
        .arg(session_id)
        .arg(after)
        .arg(i64::from(page.size))
        .fetch_all_as(&self.pool)
        .await?;
        rows.into_iter().map(SessionMessage::try_from).collect()
    }

    async fn recent_messages(
        &self,
        agent_id: Uuid,
        session_id: &str,
        limit: u32,
    ) -> ServiceResult<Vec<SessionMessage>> {
        let _span = D::span("sessions.recent_messages");
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Newest first by the primary key (agent, session, sequence), then put back in order.
        let rows: Vec<MessageRow> = sqlx::query::<D::Db>(
            "SELECT sequence, role, text, execution_id, created_at FROM session_messages \
             WHERE agent_id = $1 AND session_id = $2 ORDER BY sequence DESC LIMIT $3",
        )
        .arg(SqlUuid(agent_id))
        .arg(session_id)
        .arg(i64::from(limit))
        .fetch_all_as(&self.pool)
        .await?;
        let mut messages = rows.into_iter().map(SessionMessage::try_from).collect::<ServiceResult<Vec<_>>>()?;
        messages.reverse();
        Ok(messages)
    }

    async fn clear_session(
        &self,
        tenant: &str,
        agent_id: Uuid,
        session_id: &str,
        key: Option<&IdempotencyKey>,
    ) -> ServiceResult<i64> {
        let _span = D::span("sessions.clear_session");
        let mut tx = self.pool.begin_with(D::BEGIN).await?;
        if let Some(json) = dialect::claim_idempotency::<D>(&mut *tx, tenant, key).await? {
            return replayed(&json);
        }
        Self::ensure_agent(&mut *tx, tenant, agent_id).await?;
        // The session row first: it is the lock a finishing execution holds while it
        // numbers its messages, so none is added between the two deletes.
        sqlx::query::<D::Db>("DELETE FROM sessions WHERE agent_id = $1 AND session_id = $2")
            .arg(SqlUuid(agent_id))
            .arg(session_id)
            .run(&mut *tx)
            .await?;
        let cleared = sqlx::query::<D::Db>("DELETE FROM session_messages WHERE agent_id = $1 AND session_id = $2")
            .arg(SqlUuid(agent_id))
            .arg(session_id)
            .run(&mut *tx)
            .await?;
        let cleared = i64::try_from(D::rows_affected(&cleared)).map_err(ServiceError::internal)?;
        dialect::complete_idempotency::<D::Db>(&mut *tx, tenant, key, &cleared).await?;
        tx.commit().await?;
        Ok(cleared)
    }
}
