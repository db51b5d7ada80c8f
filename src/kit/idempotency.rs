//! Idempotency keys: a mutating RPC may carry a `request_id`; the first answer is stored with a
//! fingerprint of the request, in the same transaction as the change it made. A retry with the
//! same id gets that answer back; the same id with a different request is ALREADY_EXISTS.
//!
//! Each service keeps the keys in its own `idempotency_keys` table:
//! `(tenant_id, request_id) PRIMARY KEY, fingerprint, response, created_at`.

use sha2::{Digest, Sha256};

use super::error::{ServiceError, ServiceResult};

/// A validated request id and the fingerprint of the request that carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub request_id: String,
    pub fingerprint: String,
}

impl IdempotencyKey {
    /// `None` when the request carries no id. The fingerprint covers the method and the whole
    /// encoded request, so the same id on another method or with other fields is a conflict.
    pub fn from_request(method: &str, request_id: &str, message: &impl prost::Message) -> ServiceResult<Option<Self>> {
        if request_id.is_empty() {
            return Ok(None);
        }
        if request_id.len() > 128 || !request_id.chars().all(|c| c.is_ascii_graphic()) {
            return Err(ServiceError::invalid("request_id", "must be 1-128 printable ASCII characters without spaces"));
        }
        let mut hasher = Sha256::new();
        hasher.update(method.as_bytes());
        hasher.update([0]);
        hasher.update(message.encode_to_vec());
        Ok(Some(Self { request_id: request_id.to_owned(), fingerprint: hex::encode(hasher.finalize()) }))
    }
}

/// How long answers are kept for replays.
pub const RETENTION: chrono::Duration = chrono::Duration::hours(24);

/// Forgets keys older than [`RETENTION`] once an hour, for as long as the process lives.
/// `expire(before)` deletes the keys created before `before` and answers how many.
pub fn spawn_expiry<F, Fut>(expire: F)
where
    F: Fn(chrono::DateTime<chrono::Utc>) -> Fut + Send + 'static,
    Fut: Future<Output = ServiceResult<u64>> + Send,
{
    tokio::spawn(async move {
        loop {
            match expire(chrono::Utc::now() - RETENTION).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(expired = n, "expired old idempotency keys"),
                Err(e) => tracing::warn!(error = %e, "could not expire idempotency keys"),
            }
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
    });
}

/// What a stored key says about a new request.
pub fn judge_replay(
    key: &IdempotencyKey,
    stored_fingerprint: &str,
    stored_response: Option<String>,
) -> ServiceResult<String> {
    if stored_fingerprint != key.fingerprint {
        return Err(ServiceError::AlreadyExists(format!(
            "request_id {:?} was already used for a different request",
            key.request_id
        )));
    }
    stored_response.ok_or_else(|| {
        ServiceError::Aborted(format!("a request with request_id {:?} is still in progress; retry", key.request_id))
    })
}

/// Implements `claim` and `complete` on a transaction of one database type. Expanded once per
/// database by each service's storage module, beside its repository.
#[macro_export]
macro_rules! idempotency_sql {
    ($db:ty) => {
        /// Claims `key` for `tenant` inside `tx`. `Ok(None)`: the caller does the work and then
        /// calls `complete`. `Ok(Some(json))`: a replay, answer the stored response.
        #[allow(dead_code)]
        pub(crate) async fn claim_idempotency(
            tx: &mut sqlx::Transaction<'_, $db>,
            tenant: &str,
            key: Option<&$crate::kit::idempotency::IdempotencyKey>,
        ) -> $crate::kit::error::ServiceResult<Option<String>> {
            let Some(key) = key else { return Ok(None) };
            let inserted = sqlx::query(
                "INSERT INTO idempotency_keys (tenant_id, request_id, fingerprint, created_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, request_id) DO NOTHING",
            )
            .bind(tenant)
            .bind(&key.request_id)
            .bind(&key.fingerprint)
            .bind(chrono::Utc::now())
            .execute(&mut **tx)
            .await?
            .rows_affected();
            if inserted == 1 {
                return Ok(None);
            }
            let (fingerprint, response): (String, Option<String>) = sqlx::query_as(
                "SELECT fingerprint, response FROM idempotency_keys WHERE tenant_id = $1 AND request_id = $2",
            )
            .bind(tenant)
            .bind(&key.request_id)
            .fetch_one(&mut **tx)
            .await?;
            $crate::kit::idempotency::judge_replay(key, &fingerprint, response).map(Some)
        }

        /// Stores the answer of a claimed key, in the same transaction as the work.
        #[allow(dead_code)]
        pub(crate) async fn complete_idempotency(
            tx: &mut sqlx::Transaction<'_, $db>,
            tenant: &str,
            key: Option<&$crate::kit::idempotency::IdempotencyKey>,
            response: &impl serde::Serialize,
        ) -> $crate::kit::error::ServiceResult<()> {
            let Some(key) = key else { return Ok(()) };
            let json = serde_json::to_string(response).map_err($crate::kit::error::ServiceError::internal)?;
            sqlx::query("UPDATE idempotency_keys SET response = $1 WHERE tenant_id = $2 AND request_id = $3")
                .bind(json)
                .bind(tenant)
                .bind(&key.request_id)
                .execute(&mut **tx)
                .await?;
            Ok(())
        }

        /// Forgets keys older than `before` (answers are kept for replays only so long).
        #[allow(dead_code)]
        pub(crate) async fn expire_idempotency(
            pool: &sqlx::Pool<$db>,
            before: chrono::DateTime<chrono::Utc>,
        ) -> $crate::kit::error::ServiceResult<u64> {
            Ok(sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
                .bind(before)
                .execute(pool)
                .await?
                .rows_affected())
        }
    };
}
