//! Who is calling: the tenant, taken from the caller's credentials and never from a request field.
//!
//! Production mode verifies a bearer JWT (`authorization: Bearer <token>`) whose `tenant_id`
//! claim names the tenant, signed with HS256 or RS256. Development mode trusts an `x-tenant-id`
//! header (defaulting to the development tenant) so that grpcurl stays easy to use.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tonic::Status;
use tower_layer::Layer;
use tower_service::Service;

/// The development tenant used when dev mode gets no `x-tenant-id`.
pub const DEFAULT_DEV_TENANT: &str = "default-tenant-001";
/// The metadata header that carries the tenant in development mode.
pub const TENANT_HEADER: &str = "x-tenant-id";

/// The authenticated tenant of a request, put in the request's extensions by [`AuthLayer`].
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

    /// The tenant of a request that went through [`AuthLayer`].
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Tenant, Status> {
        request.extensions().get::<Tenant>().cloned().ok_or_else(|| Status::unauthenticated("no authenticated tenant"))
    }
}

impl std::fmt::Display for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How callers are authenticated.
#[derive(Clone)]
pub enum Authenticator {
    /// Bearer JWTs verified with this key. With a shared (HS256) secret the service can also
    /// sign tokens of its own, for work it does later on a tenant's behalf.
    Jwt { key: Arc<DecodingKey>, validation: Arc<Validation>, minter: Option<TokenMinter> },
    /// No authentication: the `x-tenant-id` header, or this default tenant.
    Development { default_tenant: Tenant },
}

#[derive(serde::Deserialize)]
struct Claims {
    tenant_id: String,
}

/// Signs short-lived tokens for a tenant, with the service's HS256 secret: for calls a service
/// makes later on a tenant's behalf, when the caller's own token may have expired (e.g. the
/// outbox of execution reports).
#[derive(Clone)]
pub struct TokenMinter {
    key: Arc<jsonwebtoken::EncodingKey>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl TokenMinter {
    /// An `authorization` header value for `tenant`, valid for `ttl`.
    pub fn bearer(&self, tenant: &Tenant, ttl: std::time::Duration) -> Option<String> {
        #[derive(serde::Serialize)]
        struct Minted<'a> {
            tenant_id: &'a str,
            exp: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            iss: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            aud: Option<&'a str>,
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?;
        let claims = Minted {
            tenant_id: tenant.as_str(),
            exp: (now + ttl).as_secs(),
            iss: self.issuer.as_deref(),
            aud: self.audience.as_deref(),
        };
        let token = jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), &claims, &self.key).ok()?;
        Some(format!("Bearer {token}"))
    }
}

impl Authenticator {
    /// JWTs signed with an HS256 shared secret.
    pub fn hs256(secret: &[u8], issuer: Option<&str>, audience: Option<&str>) -> Self {
        let minter = TokenMinter {
            key: Arc::new(jsonwebtoken::EncodingKey::from_secret(secret)),
            issuer: issuer.map(str::to_owned),
            audience: audience.map(str::to_owned),
        };
        match Self::jwt(DecodingKey::from_secret(secret), Algorithm::HS256, issuer, audience) {
            Self::Jwt { key, validation, .. } => Self::Jwt { key, validation, minter: Some(minter) },
            other => other,
        }
    }

    /// JWTs signed with RS256, verified with a PEM public key.
    pub fn rs256(public_key_pem: &[u8], issuer: Option<&str>, audience: Option<&str>) -> anyhow::Result<Self> {
        let key = DecodingKey::from_rsa_pem(public_key_pem)?;
        Ok(Self::jwt(key, Algorithm::RS256, issuer, audience))
    }

    fn jwt(key: DecodingKey, alg: Algorithm, issuer: Option<&str>, audience: Option<&str>) -> Self {
        let mut validation = Validation::new(alg);
        validation.set_required_spec_claims(&["exp"]);
        match issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Self::Jwt { key: Arc::new(key), validation: Arc::new(validation), minter: None }
    }

    /// What signs tokens for a tenant: only with an HS256 secret (an RS256 public key cannot).
    pub fn minter(&self) -> Option<TokenMinter> {
        match self {
            Self::Jwt { minter, .. } => minter.clone(),
            Self::Development { .. } => None,
        }
    }

    pub fn development(default_tenant: Tenant) -> Self {
        Self::Development { default_tenant }
    }

    /// The tenant the headers authenticate, or UNAUTHENTICATED saying why not.
    pub fn authenticate(&self, headers: &http::HeaderMap) -> Result<Tenant, Status> {
        match self {
            Self::Development { default_tenant } => match headers.get(TENANT_HEADER) {
                None => Ok(default_tenant.clone()),
                Some(v) => {
                    let id = v.to_str().map_err(|_| Status::unauthenticated("x-tenant-id is not valid text"))?;
                    Tenant::parse(id).map_err(|e| Status::unauthenticated(format!("x-tenant-id: {e}")))
                }
            },
            Self::Jwt { key, validation, .. } => {
                let header = headers.get(http::header::AUTHORIZATION).ok_or_else(|| {
                    Status::unauthenticated("missing credentials: send `authorization: Bearer <jwt>`")
                })?;
                let token = header
                    .to_str()
                    .ok()
                    .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
                    .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <jwt>`"))?;
                let data = jsonwebtoken::decode::<Claims>(token.trim(), key, validation)
                    .map_err(|e| Status::unauthenticated(format!("invalid token: {e}")))?;
                Tenant::parse(&data.claims.tenant_id)
                    .map_err(|e| Status::unauthenticated(format!("invalid tenant_id claim: {e}")))
            }
        }
    }
}

/// Paths that answer without credentials: health probes and reflection.
fn is_public(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

/// A tower layer that authenticates every RPC but health and reflection, and puts the
/// [`Tenant`] in the request's extensions.
#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(authenticator: Authenticator) -> Self {
        Self { authenticator: Arc::new(authenticator) }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, authenticator: self.authenticator.clone() }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if !is_public(req.uri().path()) {
            match self.authenticator.authenticate(req.headers()) {
                Ok(tenant) => {
                    req.extensions_mut().insert(tenant);
                }
                Err(status) => {
                    tracing::info!(rpc = req.uri().path(), code = ?status.code(), reason = status.message(), "rejected unauthenticated call");
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            }
        }
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_authenticates_its_tenant() {
        let auth = Authenticator::hs256(b"a-secret-of-enough-length-0123456789", Some("iss"), None);
        let tenant = Tenant::parse("tenant-7").unwrap();
        let bearer = auth.minter().unwrap().bearer(&tenant, std::time::Duration::from_secs(60)).unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, bearer.parse().unwrap());
        assert_eq!(auth.authenticate(&headers).unwrap(), tenant);
        assert!(Authenticator::development(tenant).minter().is_none());
    }
}
