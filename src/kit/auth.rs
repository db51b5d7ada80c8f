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
    /// Bearer JWTs verified with this key.
    Jwt { key: Arc<DecodingKey>, validation: Arc<Validation> },
    /// No authentication: the `x-tenant-id` header, or this default tenant.
    Development { default_tenant: Tenant },
}

#[derive(serde::Deserialize)]
struct Claims {
    tenant_id: String,
}

impl Authenticator {
    /// JWTs signed with an HS256 shared secret.
    pub fn hs256(secret: &[u8], issuer: Option<&str>, audience: Option<&str>) -> Self {
        Self::jwt(DecodingKey::from_secret(secret), Algorithm::HS256, issuer, audience)
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
        Self::Jwt { key: Arc::new(key), validation: Arc::new(validation) }
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
            Self::Jwt { key, validation } => {
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
