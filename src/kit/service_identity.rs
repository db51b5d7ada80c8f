//! How one of our services calls another as itself, not as a tenant: a short-lived JWT with
//! the services' own audience and a `svc:` subject, signed with a secret only the services hold
//! (`SERVICE_TOKEN_SECRET`). The tenant a service acts for goes in the request's `x-tenant-id`.
//!
//! Why not forward the caller's token: work done later on a tenant's behalf (the outbox of
//! execution reports, a walker's steps, the scheduler) outlives the caller's token, and a
//! tenant's token must not be able to do what only a service may (RecordExecution: a tenant
//! that could call it could forge its statistics). Why a secret of its own: a tenant token
//! signed with the tenants' key must never pass as a service token, and the tenants' key may be
//! an identity provider's public key, which cannot sign.
//!
//! Which RPCs a service identity may call, and which only it may, is each server's
//! [`ServiceAccess`]; [`super::calls`] applies it before the handler runs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use tonic::Status;

/// The audience of service tokens: no tenant token is issued for it.
pub const SERVICE_AUDIENCE: &str = "engarde-services";
/// The prefix of a service token's subject (`svc:agent-service`).
pub const SERVICE_SUBJECT_PREFIX: &str = "svc:";
/// How long a minted token is valid.
const TOKEN_TTL: Duration = Duration::from_secs(300);
/// A minted token is reused until this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(60);
/// The clock skew allowed between the services.
const LEEWAY_SECS: u64 = 30;

/// One of our services, named: the caller of a request whose service token (or client
/// certificate) [`super::calls`] verified; its subject is `svc:<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCaller(pub String);

#[derive(serde::Serialize, serde::Deserialize)]
struct ServiceClaims {
    sub: String,
    aud: String,
    exp: u64,
    iat: u64,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Checks the secret: long enough to resist guessing, and not the tenants' secret.
pub fn check_secret(secret: &[u8], tenant_secret: Option<&[u8]>) -> anyhow::Result<()> {
    let min = super::auth::MIN_HS256_SECRET_BYTES;
    if secret.len() < min {
        anyhow::bail!(
            "SERVICE_TOKEN_SECRET is {} bytes long; it must be at least {min} bytes \
             (make one with e.g. `openssl rand -base64 48`)",
            secret.len()
        );
    }
    if tenant_secret == Some(secret) {
        anyhow::bail!(
            "SERVICE_TOKEN_SECRET must differ from JWT_HS256_SECRET: whoever can sign tenant tokens \
             must not be able to act as a service"
        );
    }
    Ok(())
}

/// Signs this service's tokens, reusing one until shortly before it expires.
#[derive(Clone)]
pub struct ServiceTokens {
    name: Arc<str>,
    key: Arc<EncodingKey>,
    current: Arc<Mutex<Option<(String, u64)>>>,
}

impl std::fmt::Debug for ServiceTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceTokens").field("name", &self.name).finish_non_exhaustive()
    }
}

impl ServiceTokens {
    /// Tokens naming `service` (e.g. `agent-service`), signed with `secret`.
    pub fn new(service: &str, secret: &[u8]) -> Self {
        Self {
            name: Arc::from(service),
            key: Arc::new(EncodingKey::from_secret(secret)),
            current: Arc::new(Mutex::new(None)),
        }
    }

    /// An `authorization` header value: `Bearer <service token>`.
    pub fn bearer(&self) -> String {
        let now = unix_now();
        let mut current = self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((bearer, exp)) = current.as_ref()
            && now + RENEW_BEFORE.as_secs() < *exp
        {
            return bearer.clone();
        }
        let exp = now + TOKEN_TTL.as_secs();
        let claims = ServiceClaims {
            sub: format!("{SERVICE_SUBJECT_PREFIX}{}", self.name),
            aud: SERVICE_AUDIENCE.to_owned(),
            exp,
            iat: now,
        };
        // Encoding HS256 claims of plain strings and numbers cannot fail.
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key).unwrap_or_default();
        let bearer = format!("Bearer {token}");
        *current = Some((bearer.clone(), exp));
        bearer
    }
}

/// Verifies service tokens.
#[derive(Clone)]
pub struct ServiceVerifier {
    key: Arc<DecodingKey>,
    validation: Arc<Validation>,
}

impl ServiceVerifier {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[SERVICE_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        Self { key: Arc::new(DecodingKey::from_secret(secret)), validation: Arc::new(validation) }
    }

    /// The service the bearer token names, when it is a valid service token; `None` for any
    /// other token (a tenant's, or a forgery), which is then authenticated as a tenant's.
    pub fn verify(&self, headers: &http::HeaderMap) -> Option<ServiceCaller> {
        let token = super::auth::bearer_token(headers)?;
        let data = jsonwebtoken::decode::<ServiceClaims>(token, &self.key, &self.validation).ok()?;
        let name = data.claims.sub.strip_prefix(SERVICE_SUBJECT_PREFIX)?;
        (!name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
            .then(|| ServiceCaller(name.to_owned()))
    }
}

/// Which RPCs (by path, `/package.Service/Method`) a service identity may call, and which only
/// a service identity may call. Everything else is for tenants only.
#[derive(Debug, Clone, Default)]
pub struct ServiceAccess {
    /// Calls only a service may make: a tenant's token gets PERMISSION_DENIED.
    pub service_only: &'static [&'static str],
    /// Calls a service may make on a tenant's behalf besides those (reads it needs).
    pub service_allowed: &'static [&'static str],
}

impl ServiceAccess {
    /// Whether a call of `path` by `service` (or by a tenant, when `None`) is allowed; with
    /// `authenticated` false (development mode, no authentication) tenants may make every call.
    pub fn check(&self, path: &str, service: Option<&ServiceCaller>, authenticated: bool) -> Result<(), Status> {
        let only = self.service_only.contains(&path);
        match service {
            Some(ServiceCaller(name)) if !only && !self.service_allowed.contains(&path) => {
                Err(Status::permission_denied(format!(
                    "{path} is for tenants: the service identity of {name} may not call it"
                )))
            }
            None if only && authenticated => Err(Status::permission_denied(format!(
                "{path} is only for the services' own identity (SERVICE_TOKEN_SECRET); a tenant's token may not call it"
            ))),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"the-services-own-secret-0123456789abcdef";

    fn headers(bearer: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, bearer.parse().unwrap());
        headers
    }

    #[test]
    fn a_minted_token_names_its_service_and_is_reused() {
        let tokens = ServiceTokens::new("agent-service", SECRET);
        let bearer = tokens.bearer();
        assert_eq!(tokens.bearer(), bearer, "reused until near its expiry");
        let caller = ServiceVerifier::new(SECRET).verify(&headers(&bearer));
        assert_eq!(caller, Some(ServiceCaller("agent-service".into())));
    }

    #[test]
    fn other_tokens_are_not_service_tokens() {
        let verifier = ServiceVerifier::new(SECRET);
        // Signed with another secret.
        let other = ServiceTokens::new("agent-service", b"another-secret-of-enough-length-000000").bearer();
        assert_eq!(verifier.verify(&headers(&other)), None);
        // Right secret, a tenant's claims (no services audience).
        let tenant = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"tenant_id": "t", "exp": unix_now() + 60, "sub": "svc:agent-service"}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(verifier.verify(&headers(&format!("Bearer {tenant}"))), None);
        // Expired beyond the leeway.
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &ServiceClaims {
                sub: "svc:agent-service".into(),
                aud: SERVICE_AUDIENCE.into(),
                exp: unix_now() - 600,
                iat: unix_now() - 900,
            },
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(verifier.verify(&headers(&format!("Bearer {expired}"))), None);
        assert_eq!(verifier.verify(&http::HeaderMap::new()), None);
    }

    #[test]
    fn access_keeps_service_calls_and_tenant_calls_apart() {
        let access = ServiceAccess { service_only: &["/w/Record"], service_allowed: &["/w/Get"] };
        let svc = ServiceCaller("agent-service".into());
        access.check("/w/Record", Some(&svc), true).unwrap();
        access.check("/w/Get", Some(&svc), true).unwrap();
        let denied = access.check("/w/Create", Some(&svc), true).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        let denied = access.check("/w/Record", None, true).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        access.check("/w/Get", None, true).unwrap();
        // Development mode authenticates nobody: tenants may call everything.
        access.check("/w/Record", None, false).unwrap();
    }

    #[test]
    fn a_weak_or_shared_secret_is_refused() {
        assert!(check_secret(b"short", None).is_err());
        assert!(check_secret(SECRET, Some(SECRET)).unwrap_err().to_string().contains("differ"));
        check_secret(SECRET, Some(b"the-tenants-secret-0123456789abcdefgh")).unwrap();
    }
}
