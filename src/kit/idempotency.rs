//! Idempotency keys: a mutating RPC may carry a `request_id`; the first answer is stored with a
//! fingerprint of the request, in the same transaction as the change it made. A retry with the
//! same id gets that answer back; the same id with a different request is ALREADY_EXISTS.
//!
//! Each service keeps the keys in its own `idempotency_keys` table:
//! `(tenant_id, request_id) PRIMARY KEY, fingerprint, response, created_at`; the SQL that claims,
//! completes and expires them, once for both databases, is in [`super::dialect`].

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
