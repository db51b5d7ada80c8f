//! Who is calling: the tenant, taken from the caller's credentials and never from a request field.
//!
//! Production mode verifies a bearer JWT (`authorization: Bearer <token>`) whose `tenant_id`
//! claim names the tenant, signed with HS256 or RS256. Development mode trusts an `x-tenant-id`
//! header (defaulting to the development tenant) so that grpcurl stays easy to use.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tonic::Status;

/// The development tenant used when dev mode gets no `x-tenant-id`.
pub const DEFAULT_DEV_TENANT: &str = "default-tenant-001";
/// The metadata header that carries the tenant in development mode.
pub const TENANT_HEADER: &str = "x-tenant-id";
/// The metadata header that names the caller in development mode.
pub const SUBJECT_HEADER: &str = "x-subject";
/// The development subject used when dev mode gets no `x-subject`.
pub const DEFAULT_DEV_SUBJECT: &str = "developer";
/// The longest subject kept; a longer one is cut (it is a record, not a key).
const MAX_SUBJECT_CHARS: usize = 256;

/// The authenticated tenant of a request, put in the request's extensions by the kit's layer
/// around every call ([`super::calls::CallLayer`]), which authenticates every RPC but health
/// and reflection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tenant(String);

impl Tenant {
    /// Parses a tenant id: 1-128 characters of letters, digits, `-`, `_`, `.`.
    pub fn parse(id: &str) -> Result<Self, String> {
        if id.is_empty() || id.len() > 128 {
            return Err("tenant id must be 1-128 characters".into());
        }
        if !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            return Err("tenant id may hold only letters, digits, '-', '_' and '.'".into());
        }
        Ok(Self(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tenant of a request that went through [`super::calls::CallLayer`].
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Tenant, Status> {
        request.extensions().get::<Tenant>().cloned().ok_or_else(|| Status::unauthenticated("no authenticated tenant"))
    }
}

impl std::fmt::Display for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who, within the tenant, is calling: a bearer JWT's `sub` claim (empty when it has none); in
/// development mode the `x-subject` header, or [`DEFAULT_DEV_SUBJECT`]. Put in the request's
/// extensions beside the [`Tenant`], for records of who changed what.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subject(String);

impl Subject {
    /// The subject of a call made by one of our services (`svc:<name>`).
    pub fn service(caller: &super::service_identity::ServiceCaller) -> Self {
        Subject(format!("{}{}", super::service_identity::SERVICE_SUBJECT_PREFIX, caller.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The subject of a request that went through [`super::calls::CallLayer`] (empty if none).
    pub fn of<T>(request: &tonic::Request<T>) -> Subject {
        request.extensions().get::<Subject>().cloned().unwrap_or_default()
    }
}

/// How callers are authenticated.
#[derive(Clone)]
pub enum Authenticator {
    /// Bearer JWTs verified with this key.
    Jwt { key: Arc<DecodingKey>, validation: Arc<Validation> },
    /// No authentication: the `x-tenant-id` header, or this default tenant.
    Development { default_tenant: Tenant },
}

#[derive(serde::Deserialize)]
struct Claims {
    tenant_id: String,
    #[serde(default)]
    sub: Option<String>,
}

/// The shortest HS256 secret accepted, in bytes: RFC 7518 (3.2) asks for a key at least as
/// long as the hash (256 bits); a shorter one can be guessed offline from any token it signed.
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// The default clock skew allowed on `exp` and `nbf` (see [`TokenRules::leeway`]).
pub const DEFAULT_LEEWAY: std::time::Duration = std::time::Duration::from_secs(30);

/// What a token must carry besides a good signature.
#[derive(Debug, Clone)]
pub struct TokenRules {
    /// The `iss` a token must have: a token without an `iss` claim is refused too.
    pub issuer: Option<String>,
    /// The `aud` a token must have: a token without an `aud` claim is refused too.
    pub audience: Option<String>,
    /// The clock skew allowed between the token's issuer and this server, on `exp` (a token is
    /// still taken this long after it expired) and `nbf` (and this long before it is valid).
    pub leeway: std::time::Duration,
}

impl Default for TokenRules {
    fn default() -> Self {
        Self { issuer: None, audience: None, leeway: DEFAULT_LEEWAY }
    }
}

impl TokenRules {
    /// The jsonwebtoken validation of these rules: `exp` always required, `iss` and `aud`
    /// required whenever they are configured (jsonwebtoken checks them only when present
    /// otherwise), `nbf` honoured when present.
    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        let mut required = vec!["exp"];
        match &self.issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = self.leeway.as_secs();
        validation
    }
}

impl Authenticator {
    /// JWTs signed with an HS256 shared secret of at least [`MIN_HS256_SECRET_BYTES`].
    pub fn hs256(secret: &[u8], rules: &TokenRules) -> anyhow::Result<Self> {
        if secret.len() < MIN_HS256_SECRET_BYTES {
            anyhow::bail!(
                "the HS256 secret is {} bytes long; it must be at least {MIN_HS256_SECRET_BYTES} bytes (256 bits), \
                 or tokens can be forged by guessing it from any token it signed \
                 (make one with e.g. `openssl rand -base64 48`)",
                secret.len()
            );
        }
        let validation = rules.validation(Algorithm::HS256);
        Ok(Self::Jwt { key: Arc::new(DecodingKey::from_secret(secret)), validation: Arc::new(validation) })
    }

    /// JWTs signed with RS256, verified with a PEM public key.
    pub fn rs256(public_key_pem: &[u8], rules: &TokenRules) -> anyhow::Result<Self> {
        let key = DecodingKey::from_rsa_pem(public_key_pem)?;
        let validation = rules.validation(Algorithm::RS256);
        Ok(Self::Jwt { key: Arc::new(key), validation: Arc::new(validation) })
    }

    /// Whether callers are authenticated at all (not in development mode).
    pub fn authenticates(&self) -> bool {
        matches!(self, Self::Jwt { .. })
    }

    pub fn development(default_tenant: Tenant) -> Self {
        Self::Development { default_tenant }
    }

    /// The tenant the headers authenticate, or UNAUTHENTICATED saying why not.
    pub fn authenticate(&self, headers: &http::HeaderMap) -> Result<Tenant, Status> {
        self.identify(headers).map(|(tenant, _)| tenant)
    }

    /// The tenant the headers authenticate and the subject within it, or UNAUTHENTICATED saying
    /// why not.
    pub fn identify(&self, headers: &http::HeaderMap) -> Result<(Tenant, Subject), Status> {
        match self {
            Self::Development { default_tenant } => {
                let tenant = tenant_header(headers)?.unwrap_or_else(|| default_tenant.clone());
                let subject = match headers.get(SUBJECT_HEADER) {
                    None => DEFAULT_DEV_SUBJECT,
                    Some(v) => v.to_str().map_err(|_| Status::unauthenticated("x-subject is not valid text"))?,
                };
                Ok((tenant, subject_of(subject)))
            }
            Self::Jwt { key, validation } => {
                if !headers.contains_key(http::header::AUTHORIZATION) {
                    return Err(Status::unauthenticated("missing credentials: send `authorization: Bearer <jwt>`"));
                }
                let token = bearer_token(headers)
                    .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <jwt>`"))?;
                let data = jsonwebtoken::decode::<Claims>(token, key, validation)
                    .map_err(|e| Status::unauthenticated(format!("invalid token: {e}")))?;
                let tenant = Tenant::parse(&data.claims.tenant_id)
                    .map_err(|e| Status::unauthenticated(format!("invalid tenant_id claim: {e}")))?;
                Ok((tenant, subject_of(data.claims.sub.as_deref().unwrap_or(""))))
            }
        }
    }
}

/// The tenant an `x-tenant-id` header names, if there is one: how development callers and our
/// own services (see [`super::service_identity`]) say which tenant they act for.
pub fn tenant_header(headers: &http::HeaderMap) -> Result<Option<Tenant>, Status> {
    let Some(value) = headers.get(TENANT_HEADER) else { return Ok(None) };
    let id = value.to_str().map_err(|_| Status::unauthenticated("x-tenant-id is not valid text"))?;
    Tenant::parse(id).map(Some).map_err(|e| Status::unauthenticated(format!("x-tenant-id: {e}")))
}

/// The token of an `authorization: Bearer <token>` header, trimmed.
pub fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let header = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    header.strip_prefix("Bearer ").or_else(|| header.strip_prefix("bearer ")).map(str::trim)
}

/// A subject as recorded: trimmed, without control characters, at most [`MAX_SUBJECT_CHARS`].
fn subject_of(text: &str) -> Subject {
    Subject(text.trim().chars().filter(|c| !c.is_control()).take(MAX_SUBJECT_CHARS).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a-secret-of-enough-length-0123456789";

    fn now() -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
    }

    fn bearer(claims: serde_json::Value) -> http::HeaderMap {
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        headers
    }

    fn strict() -> Authenticator {
        let rules = TokenRules {
            issuer: Some("https://issuer.example".into()),
            audience: Some("engarde".into()),
            leeway: std::time::Duration::from_secs(30),
        };
        Authenticator::hs256(SECRET, &rules).unwrap()
    }

    #[test]
    fn a_token_without_the_configured_issuer_or_audience_is_unauthenticated() {
        let auth = strict();
        let exp = now() + 60;
        let good =
            serde_json::json!({"tenant_id": "tA", "exp": exp, "iss": "https://issuer.example", "aud": "engarde"});
        assert_eq!(auth.authenticate(&bearer(good)).unwrap().as_str(), "tA");
        for claims in [
            serde_json::json!({"tenant_id": "tA", "exp": exp}),
            serde_json::json!({"tenant_id": "tA", "exp": exp, "aud": "engarde"}),
            serde_json::json!({"tenant_id": "tA", "exp": exp, "iss": "https://issuer.example"}),
            serde_json::json!({"tenant_id": "tA", "exp": exp, "iss": "https://other.example", "aud": "engarde"}),
            serde_json::json!({"tenant_id": "tA", "exp": exp, "iss": "https://issuer.example", "aud": "other"}),
        ] {
            let status = auth.authenticate(&bearer(claims.clone())).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{claims}");
        }
    }

    #[test]
    fn a_token_not_yet_valid_is_unauthenticated_beyond_the_leeway() {
        let auth = strict();
        let claims = |nbf: i64| {
            serde_json::json!({"tenant_id": "tA", "exp": now() + 3600, "nbf": nbf,
                "iss": "https://issuer.example", "aud": "engarde"})
        };
        let status = auth.authenticate(&bearer(claims(now() + 50 * 60))).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("ImmatureSignature"), "{}", status.message());
        // Within the leeway (clock skew), and in the past: accepted.
        auth.authenticate(&bearer(claims(now() + 10))).unwrap();
        auth.authenticate(&bearer(claims(now() - 60))).unwrap();
        // An expired token is accepted only within the leeway.
        let expired = |exp: i64| serde_json::json!({"tenant_id": "tA", "exp": exp, "iss": "https://issuer.example", "aud": "engarde"});
        auth.authenticate(&bearer(expired(now() - 10))).unwrap();
        auth.authenticate(&bearer(expired(now() - 120))).unwrap_err();
    }

    #[test]
    fn without_configured_issuer_or_audience_neither_is_required() {
        let auth = Authenticator::hs256(SECRET, &TokenRules::default()).unwrap();
        auth.authenticate(&bearer(serde_json::json!({"tenant_id": "tA", "exp": now() + 60}))).unwrap();
    }

    #[test]
    fn the_subject_is_the_sub_claim_or_in_development_the_x_subject_header() {
        let auth = Authenticator::hs256(SECRET, &TokenRules::default()).unwrap();
        let with_sub = bearer(serde_json::json!({"tenant_id": "tA", "sub": "ada@example.com", "exp": now() + 60}));
        let (tenant, subject) = auth.identify(&with_sub).unwrap();
        assert_eq!((tenant.as_str(), subject.as_str()), ("tA", "ada@example.com"));
        let without = bearer(serde_json::json!({"tenant_id": "tA", "exp": now() + 60}));
        assert_eq!(auth.identify(&without).unwrap().1.as_str(), "");

        let dev = Authenticator::development(Tenant::parse("dev").unwrap());
        assert_eq!(dev.identify(&http::HeaderMap::new()).unwrap().1.as_str(), DEFAULT_DEV_SUBJECT);
        let mut headers = http::HeaderMap::new();
        headers.insert(SUBJECT_HEADER, " grace ".parse().unwrap());
        assert_eq!(dev.identify(&headers).unwrap().1.as_str(), "grace");
    }

    #[test]
    fn a_short_hs256_secret_is_refused_saying_why() {
        for secret in [&b"x"[..], &[b'k'; MIN_HS256_SECRET_BYTES - 1][..]] {
            let error = Authenticator::hs256(secret, &TokenRules::default()).err().expect("refused").to_string();
            assert!(error.contains("at least 32 bytes"), "{error}");
        }
        Authenticator::hs256(&[b'k'; MIN_HS256_SECRET_BYTES], &TokenRules::default()).unwrap();
    }
}
