//! Who is calling: the tenant, taken from the caller's credentials and never from a request field.
//!
//! Production mode verifies a bearer JWT (`authorization: Bearer <token>`) whose `tenant_id`
//! claim names the tenant, signed with an HS256 secret, an RS256 public key, or a key of an
//! identity provider's JWK set picked by the token's `kid` ([`super::jwks`]); only the
//! configured algorithms are taken (never `none`, never an HMAC signature made with a public
//! key). Development mode trusts an `x-tenant-id` header (defaulting to the development tenant)
//! so that grpcurl stays easy to use.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use tonic::Status;

use super::jwks::{Jwks, Refetch};

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
    /// Bearer JWTs verified with these keys, signed with one of `validation.algorithms`.
    Jwt { keys: Keys, validation: Arc<Validation> },
    /// No authentication: the `x-tenant-id` header, or this default tenant.
    Development { default_tenant: Tenant },
}

/// Where the key that verifies a token comes from.
#[derive(Clone)]
pub enum Keys {
    /// The one key of the configuration: an HS256 secret or an RS256 public key.
    Static(Arc<DecodingKey>),
    /// An identity provider's JWK set, the key picked by the token's `kid`.
    Provider(Arc<Jwks>),
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
        Ok(Self::Jwt {
            keys: Keys::Static(Arc::new(DecodingKey::from_secret(secret))),
            validation: Arc::new(validation),
        })
    }

    /// JWTs signed with RS256, verified with a PEM public key.
    pub fn rs256(public_key_pem: &[u8], rules: &TokenRules) -> anyhow::Result<Self> {
        let key = DecodingKey::from_rsa_pem(public_key_pem)?;
        let validation = rules.validation(Algorithm::RS256);
        Ok(Self::Jwt { keys: Keys::Static(Arc::new(key)), validation: Arc::new(validation) })
    }

    /// JWTs signed with RS256 by a key of an identity provider's JWK set.
    pub fn jwks(jwks: Arc<Jwks>, rules: &TokenRules) -> Self {
        let validation = rules.validation(Algorithm::RS256);
        Self::Jwt { keys: Keys::Provider(jwks), validation: Arc::new(validation) }
    }

    /// Takes tokens signed with exactly these algorithms (JWT_ALGORITHMS) instead of the
    /// default one of the key. Refuses an algorithm that does not fit the key: an HMAC one with
    /// a public key (or an identity provider) is how a public key becomes a forging secret.
    pub fn allowing(mut self, algorithms: &[Algorithm]) -> anyhow::Result<Self> {
        let Self::Jwt { keys, validation, .. } = &mut self else { return Ok(self) };
        if algorithms.is_empty() {
            anyhow::bail!("JWT_ALGORITHMS names no algorithm");
        }
        for alg in algorithms {
            let fits = match keys {
                Keys::Static(key) => key.family() == alg.family(),
                Keys::Provider(_) => alg.family() != AlgorithmFamily::Hmac,
            };
            if !fits {
                let key = match keys {
                    Keys::Static(key) if key.family() == AlgorithmFamily::Hmac => "the HS256 secret",
                    Keys::Static(_) => "the RS256 public key file",
                    Keys::Provider(_) => "an identity provider (JWT_JWKS_URL), whose keys are public",
                };
                anyhow::bail!("JWT_ALGORITHMS: {alg:?} cannot be used with {key}");
            }
        }
        Arc::make_mut(validation).algorithms = algorithms.to_vec();
        Ok(self)
    }

    /// Starts what the keys need in the background: the refresh of an identity provider's set
    /// (its first fetch is now). Nothing for the other keys; a second call does nothing.
    pub fn start_key_refresh(&self) {
        if let Self::Jwt { keys: Keys::Provider(jwks), .. } = self {
            jwks.start();
        }
    }

    /// The refetch of the identity provider's keys to wait for before authenticating these
    /// headers: when the token is signed with an allowed algorithm by a `kid` that the set lacks
    /// (or there is no set yet) and a refetch is due. See [`super::jwks`].
    pub fn keys_refetch(&self, headers: &http::HeaderMap) -> Option<Refetch> {
        let Self::Jwt { keys: Keys::Provider(jwks), validation, .. } = self else { return None };
        let header = jsonwebtoken::decode_header(bearer_token(headers)?).ok()?;
        if !validation.algorithms.contains(&header.alg) {
            return None;
        }
        jwks.refetch_for(header.kid.as_deref())
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
            Self::Jwt { keys, validation } => {
                if !headers.contains_key(http::header::AUTHORIZATION) {
                    return Err(Status::unauthenticated("missing credentials: send `authorization: Bearer <jwt>`"));
                }
                let token = bearer_token(headers)
                    .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <jwt>`"))?;
                let data = verify::<Claims>(token, keys, validation)?;
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

/// Checks a token's algorithm against the allowed ones, finds its key, and verifies it: its
/// claims, or UNAUTHENTICATED saying why not (UNAVAILABLE when an identity provider's keys
/// could never be fetched).
fn verify<T: serde::de::DeserializeOwned>(
    token: &str,
    keys: &Keys,
    validation: &Validation,
) -> Result<jsonwebtoken::TokenData<T>, Status> {
    let invalid = |e: jsonwebtoken::errors::Error| Status::unauthenticated(format!("invalid token: {e}"));
    // `alg: none` (or any name jsonwebtoken does not know) fails here, as a malformed header.
    let header = jsonwebtoken::decode_header(token).map_err(invalid)?;
    if !validation.algorithms.contains(&header.alg) {
        return Err(Status::unauthenticated(format!(
            "invalid token: signed with {:?}, but only {:?} is accepted (JWT_ALGORITHMS)",
            header.alg, validation.algorithms
        )));
    }
    let key = match keys {
        Keys::Static(key) => key.clone(),
        Keys::Provider(jwks) => jwks.key_for(header.kid.as_deref(), header.alg)?,
    };
    // jsonwebtoken wants every allowed algorithm to fit the key, so with several allowed the
    // token's own (checked above) is the one passed.
    let single;
    let validation = if validation.algorithms.len() == 1 {
        validation
    } else {
        single = Validation { algorithms: vec![header.alg], ..validation.clone() };
        &single
    };
    jsonwebtoken::decode::<T>(token, &key, validation).map_err(invalid)
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

    /// Headers carrying `authorization: <value>`.
    fn authorization(value: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    /// Claims that pass [`strict`]'s rules, with `changes` applied (a null removes a claim).
    fn claims(changes: serde_json::Value) -> serde_json::Value {
        let mut claims = serde_json::json!({"tenant_id": "tA", "sub": "ada", "exp": now() + 600,
            "iss": "https://issuer.example", "aud": "engarde"});
        for (name, value) in changes.as_object().unwrap() {
            match value {
                serde_json::Value::Null => drop(claims.as_object_mut().unwrap().remove(name)),
                value => claims[name] = value.clone(),
            }
        }
        claims
    }

    fn strict_rules() -> TokenRules {
        TokenRules {
            issuer: Some("https://issuer.example".into()),
            audience: Some("engarde".into()),
            leeway: std::time::Duration::from_secs(30),
        }
    }

    /// An unsigned token: `alg: none` and an empty signature.
    fn unsigned(claims: &serde_json::Value) -> String {
        use base64::Engine as _;
        let b64 = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.", b64(&serde_json::json!({"alg": "none", "typ": "JWT"})), b64(claims))
    }

    /// An HS256 token signed with `secret`.
    fn hs256(secret: &[u8], kid: Option<&str>, claims: &serde_json::Value) -> String {
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &jsonwebtoken::EncodingKey::from_secret(secret)).unwrap()
    }

    /// Authenticates as the kit's call layer does: first waits for a refetch of the identity
    /// provider's keys when one is due for this token, then checks it.
    async fn authenticate(auth: &Authenticator, bearer: &str) -> Result<Tenant, Status> {
        let headers = authorization(&format!("Bearer {bearer}"));
        if let Some(refetch) = auth.keys_refetch(&headers) {
            refetch.await;
        }
        auth.authenticate(&headers)
    }

    /// Every bad token of the list, on RS256 with a public key file: each is
    /// UNAUTHENTICATED, saying why.
    #[test]
    fn every_bad_token_is_unauthenticated_with_an_rs256_public_key() {
        let key = super::super::jwks::testing::rsa_key(0);
        let auth = Authenticator::rs256(&key.public_pem, &strict_rules()).unwrap();
        let good = key.sign_as(None, &claims(serde_json::json!({})));
        assert_eq!(auth.authenticate(&authorization(&format!("Bearer {good}"))).unwrap().as_str(), "tA");

        let other = super::super::jwks::testing::rsa_key(1);
        let cases: Vec<(&str, http::HeaderMap, &str)> = vec![
            ("none", http::HeaderMap::new(), "missing credentials"),
            ("not bearer", authorization("Basic YWRhOnNlY3JldA=="), "must be `Bearer <jwt>`"),
            ("malformed", authorization("Bearer not.a.jwt"), "invalid token"),
            ("malformed, one part", authorization("Bearer garbage"), "invalid token"),
            (
                "alg none",
                authorization(&format!("Bearer {}", unsigned(&claims(serde_json::json!({}))))),
                "unknown variant `none`",
            ),
            (
                "HS256 with a secret",
                authorization(&format!("Bearer {}", hs256(SECRET, None, &claims(serde_json::json!({}))))),
                "signed with HS256, but only [RS256]",
            ),
            // HS/RS confusion: the public key's own bytes as an HMAC secret.
            (
                "HS256 with the public key",
                authorization(&format!("Bearer {}", hs256(&key.public_pem, None, &claims(serde_json::json!({}))))),
                "signed with HS256, but only [RS256]",
            ),
            (
                "another key",
                authorization(&format!("Bearer {}", other.sign_as(None, &claims(serde_json::json!({}))))),
                "InvalidSignature",
            ),
            (
                "expired",
                authorization(&format!(
                    "Bearer {}",
                    key.sign_as(None, &claims(serde_json::json!({"exp": now() - 120})))
                )),
                "ExpiredSignature",
            ),
            (
                "wrong iss",
                authorization(&format!(
                    "Bearer {}",
                    key.sign_as(None, &claims(serde_json::json!({"iss": "https://other.example"})))
                )),
                "InvalidIssuer",
            ),
            (
                "no iss",
                authorization(&format!("Bearer {}", key.sign_as(None, &claims(serde_json::json!({"iss": null}))))),
                "iss",
            ),
            (
                "wrong aud",
                authorization(&format!("Bearer {}", key.sign_as(None, &claims(serde_json::json!({"aud": "other"}))))),
                "InvalidAudience",
            ),
            (
                "no aud",
                authorization(&format!("Bearer {}", key.sign_as(None, &claims(serde_json::json!({"aud": null}))))),
                "aud",
            ),
            (
                "no tenant",
                authorization(&format!(
                    "Bearer {}",
                    key.sign_as(None, &claims(serde_json::json!({"tenant_id": null})))
                )),
                "tenant_id",
            ),
        ];
        for (what, headers, reason) in cases {
            let status = auth.authenticate(&headers).err().unwrap_or_else(|| panic!("{what}: accepted"));
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{what}: {status:?}");
            assert!(status.message().contains(reason), "{what}: {}", status.message());
        }
    }

    #[test]
    fn with_an_hs256_secret_rs256_and_unsigned_tokens_are_unauthenticated() {
        let auth = strict();
        let key = super::super::jwks::testing::rsa_key(0);
        for (what, token) in [
            ("RS256", key.sign_as(None, &claims(serde_json::json!({})))),
            ("alg none", unsigned(&claims(serde_json::json!({})))),
        ] {
            let status = auth.authenticate(&authorization(&format!("Bearer {token}"))).expect_err(what);
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{what}");
        }
    }

    #[test]
    fn jwt_algorithms_must_fit_the_key() {
        let key = super::super::jwks::testing::rsa_key(0);
        let rs = || Authenticator::rs256(&key.public_pem, &TokenRules::default()).unwrap();
        let error = rs().allowing(&[Algorithm::RS256, Algorithm::HS256]).err().expect("refused").to_string();
        assert!(error.contains("HS256 cannot be used with the RS256 public key file"), "{error}");
        let error = strict().allowing(&[Algorithm::RS256]).err().expect("refused").to_string();
        assert!(error.contains("RS256 cannot be used with the HS256 secret"), "{error}");
        assert!(rs().allowing(&[]).is_err());
        let settings = super::super::jwks::JwksSettings {
            url: "http://127.0.0.1:9/jwks".into(),
            refresh: std::time::Duration::from_secs(60),
            min_refresh: std::time::Duration::from_secs(1),
            timeout: super::super::jwks::FETCH_TIMEOUT,
            ca_file: None,
        };
        let jwks = Authenticator::jwks(Jwks::new(settings).unwrap(), &TokenRules::default());
        let error = jwks.clone().allowing(&[Algorithm::HS256]).err().expect("refused").to_string();
        assert!(error.contains("HS256 cannot be used with an identity provider"), "{error}");
        jwks.allowing(&[Algorithm::RS256, Algorithm::PS256, Algorithm::ES256]).unwrap();

        // RS256 and PS256 both allowed: a token signed with either is taken, RS384 is not.
        let both = rs().allowing(&[Algorithm::RS256, Algorithm::PS256]).unwrap();
        for (alg, taken) in [(Algorithm::RS256, true), (Algorithm::PS256, true), (Algorithm::RS384, false)] {
            let token = jsonwebtoken::encode(
                &jsonwebtoken::Header::new(alg),
                &serde_json::json!({"tenant_id": "tA", "exp": now() + 60}),
                &key.encoding,
            )
            .unwrap();
            assert_eq!(both.authenticate(&authorization(&format!("Bearer {token}"))).is_ok(), taken, "{alg:?}");
        }
    }

    /// Every bad token of the list against an identity provider's key set, and an
    /// unknown kid before and after the provider rotates its keys.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_token_case_against_an_identity_provider_that_rotates_its_keys() {
        use super::super::jwks::testing::{FakeIdp, rsa_key};
        let (old, new) = (rsa_key(0), rsa_key(1));
        let idp = FakeIdp::start(&[&old.jwk]).await;
        let settings = super::super::jwks::JwksSettings {
            url: idp.url.clone(),
            refresh: std::time::Duration::from_secs(3600),
            min_refresh: std::time::Duration::from_millis(1000),
            timeout: super::super::jwks::FETCH_TIMEOUT,
            ca_file: None,
        };
        let auth = Authenticator::jwks(Jwks::new(settings).unwrap(), &strict_rules());
        let good = claims(serde_json::json!({}));
        // The first call fetches the set (nothing started the background refresh here).
        assert_eq!(authenticate(&auth, &old.sign(&good)).await.unwrap().as_str(), "tA");
        assert_eq!(idp.hits(), 1);
        // One key in the set: a token without kid is taken.
        authenticate(&auth, &old.sign_as(None, &good)).await.unwrap();

        let code = |result: Result<Tenant, Status>| result.err().map(|s| (s.code(), s.message().to_owned()));
        let unauthenticated = |what: &str, result: Result<Tenant, Status>, reason: &str| {
            let (code, message) = code(result).unwrap_or_else(|| panic!("{what}: accepted"));
            assert_eq!(code, tonic::Code::Unauthenticated, "{what}: {message}");
            assert!(message.contains(reason), "{what}: {message}");
        };
        let pem = &old.public_pem;
        for (what, token, reason) in [
            ("malformed", "not.a.jwt".to_owned(), "invalid token"),
            ("alg none", unsigned(&good), "unknown variant `none`"),
            ("HS256", hs256(SECRET, Some(&old.kid), &good), "signed with HS256, but only [RS256]"),
            ("HS/RS confusion", hs256(pem, Some(&old.kid), &good), "signed with HS256, but only [RS256]"),
            ("signed by another key under its kid", new.sign_as(Some(&old.kid), &good), "InvalidSignature"),
            ("expired", old.sign(&claims(serde_json::json!({"exp": now() - 120}))), "ExpiredSignature"),
            ("wrong iss", old.sign(&claims(serde_json::json!({"iss": "https://other.example"}))), "InvalidIssuer"),
            ("wrong aud", old.sign(&claims(serde_json::json!({"aud": "other"}))), "InvalidAudience"),
        ] {
            unauthenticated(what, authenticate(&auth, &token).await, reason);
        }
        assert_eq!(idp.hits(), 1, "none of these refetches the set");

        // Unknown kid before the rotation: one refetch (after min_refresh), then refused.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        unauthenticated("unknown kid", authenticate(&auth, &new.sign(&good)).await, "no key with kid \"key-1\"");
        assert_eq!(idp.hits(), 2);
        // Again at once: the rate limit spares the provider.
        unauthenticated("unknown kid again", authenticate(&auth, &new.sign(&good)).await, "no key with kid");
        assert_eq!(idp.hits(), 2);

        // The provider rotates (both keys published, then the old one retired).
        idp.serve(&[&old.jwk, &new.jwk]);
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        assert_eq!(authenticate(&auth, &new.sign(&good)).await.unwrap().as_str(), "tA");
        assert_eq!(idp.hits(), 3);
        authenticate(&auth, &old.sign(&good)).await.unwrap();
        // Two keys now: a token must name its own.
        unauthenticated("no kid, two keys", authenticate(&auth, &new.sign_as(None, &good)).await, "has no kid");
        idp.serve(&[&new.jwk]);
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        // The old kid is still in the cached set until a fetch drops it.
        authenticate(&auth, &old.sign(&good)).await.unwrap();
        unauthenticated("made-up kid", authenticate(&auth, &old.sign_as(Some("made-up"), &good)).await, "made-up");
        assert_eq!(idp.hits(), 4);
        unauthenticated("retired kid", authenticate(&auth, &old.sign(&good)).await, "no key with kid \"key-0\"");
        assert_eq!(authenticate(&auth, &new.sign(&good)).await.unwrap().as_str(), "tA");
        assert_eq!(idp.hits(), 4);
    }

    #[tokio::test]
    async fn without_a_key_set_calls_are_unavailable_not_unauthenticated() {
        use super::super::jwks::testing::{FakeIdp, rsa_key};
        let idp = FakeIdp::start(&[&rsa_key(0).jwk]).await;
        idp.set_up(false);
        let settings = super::super::jwks::JwksSettings {
            url: idp.url.clone(),
            refresh: std::time::Duration::from_secs(3600),
            min_refresh: std::time::Duration::from_millis(200),
            timeout: super::super::jwks::FETCH_TIMEOUT,
            ca_file: None,
        };
        let auth = Authenticator::jwks(Jwks::new(settings).unwrap(), &strict_rules());
        let token = rsa_key(0).sign(&claims(serde_json::json!({})));
        let status = authenticate(&auth, &token).await.expect_err("no keys");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("identity provider keys unavailable"), "{}", status.message());
        // A token bad on its own is still UNAUTHENTICATED.
        let status = authenticate(&auth, &unsigned(&claims(serde_json::json!({})))).await.expect_err("bad");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        idp.set_up(true);
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        assert_eq!(authenticate(&auth, &token).await.unwrap().as_str(), "tA");
    }
}
