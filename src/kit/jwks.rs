//! An identity provider's keys: the JSON Web Key set at `JWT_JWKS_URL`.
//!
//! The set is fetched at start, kept in memory by `kid`, fetched again in the background every
//! `JWT_JWKS_REFRESH_SECS` (a key rotation is taken without a restart), and refetched when a
//! token names a `kid` the set lacks, at most once per `JWT_JWKS_MIN_REFRESH_SECS` so that
//! tokens with made-up kids cannot hammer the provider (callers that arrive during a fetch share
//! it). A failed fetch keeps the last good set, with a warning. Without any set yet (the provider
//! was down at start) calls are UNAVAILABLE, not UNAUTHENTICATED: the caller's token may be
//! fine, it is our keys that are missing; the set keeps being retried in the background.
//!
//! Finding a key is synchronous (a read of the current set). Only the refetch waits: the kit's
//! call layer asks [`Jwks::refetch_for`] (through `Authenticator::keys_refetch`) before it
//! authenticates, and when that returns a fetch, awaits it inside the call's future and then
//! authenticates once, against whatever set it brought.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use tonic::Status;

/// The largest JWK set document accepted, in bytes (a real one is a few KiB).
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// How long one fetch of the set may take, connection included (calls waiting for a refetch
/// wait at most this long).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the set is and how often it is fetched.
#[derive(Debug, Clone)]
pub struct JwksSettings {
    /// `http://` or `https://` URL of the JWK set document.
    pub url: String,
    /// How often the set is fetched again in the background.
    pub refresh: Duration,
    /// The least time between the end of one fetch and the start of a refetch asked by a token
    /// with an unknown `kid`; also the pace of retries while no set was ever fetched.
    pub min_refresh: Duration,
    /// How long one fetch may take ([`FETCH_TIMEOUT`]).
    pub timeout: Duration,
    /// A CA to trust for an `https://` URL besides the public roots (JWT_JWKS_CA_FILE).
    pub ca_file: Option<std::path::PathBuf>,
}

/// A fetch of the set that callers may wait for together; it resolves when the fetch is done,
/// whatever its outcome (the set in place then is what counts).
pub type Refetch = Shared<BoxFuture<'static, ()>>;

/// One verification key of the set.
struct ProviderKey {
    kid: Option<String>,
    /// The key's own `alg`, when the set states one: a token must then use exactly it.
    alg: Option<Algorithm>,
    key: Arc<DecodingKey>,
}

/// The usable signing keys of one fetched set.
pub struct KeySet {
    keys: Vec<ProviderKey>,
}

impl KeySet {
    /// Parses a JWK set document (`{"keys": [...]}`). Keys that cannot verify signatures here
    /// (encryption keys, shared secrets, unknown types or algorithms, a repeated `kid`) are left
    /// out and described in the second value; a set with no usable key at all is an error.
    pub fn parse(document: &[u8]) -> Result<(Self, Vec<String>), String> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document =
            serde_json::from_slice(document).map_err(|e| format!("not a JWK set (`{{\"keys\": [...]}}`): {e}"))?;
        let mut keys: Vec<ProviderKey> = Vec::new();
        let mut skipped = Vec::new();
        for (index, value) in document.keys.into_iter().enumerate() {
            match usable_key(value) {
                Ok(key) if key.kid.is_some() && keys.iter().any(|k| k.kid == key.kid) => {
                    skipped.push(format!("key {index}: kid {:?} repeats an earlier key", key.kid.unwrap_or_default()));
                }
                Ok(key) => keys.push(key),
                Err(reason) => skipped.push(format!("key {index}: {reason}")),
            }
        }
        if keys.is_empty() {
            return Err(format!("the JWK set has no usable signing key ({})", skipped.join("; ")));
        }
        Ok((Self { keys }, skipped))
    }

    /// Whether the set has a key with this `kid`.
    pub fn contains(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The kids of the set, for logs.
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.kid.as_deref().unwrap_or("(none)")).collect()
    }

    /// The key that verifies a token with this header `kid` and `alg`, or UNAUTHENTICATED
    /// saying why there is none.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Result<Arc<DecodingKey>, Status> {
        let key = match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)).ok_or_else(|| {
                Status::unauthenticated(format!(
                    "invalid token: the identity provider has no key with kid {:?}",
                    shown(kid)
                ))
            })?,
            None => match self.keys.as_slice() {
                [only] => only,
                keys => {
                    return Err(Status::unauthenticated(format!(
                        "invalid token: it has no kid, and the identity provider has {} keys: a token must name its key",
                        keys.len()
                    )));
                }
            },
        };
        if let Some(key_alg) = key.alg
            && key_alg != alg
        {
            return Err(Status::unauthenticated(format!(
                "invalid token: signed with {alg:?}, but its key {:?} is for {key_alg:?}",
                shown(kid.unwrap_or(""))
            )));
        }
        if key.key.family() != alg.family() {
            return Err(Status::unauthenticated(format!(
                "invalid token: signed with {alg:?}, but its key {:?} is a {:?} key",
                shown(kid.unwrap_or("")),
                key.key.family()
            )));
        }
        Ok(key.key.clone())
    }
}

/// One key of the document, if it can verify signatures.
fn usable_key(value: serde_json::Value) -> Result<ProviderKey, String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| format!("not a JWK: {e}"))?;
    let kid = jwk.common.key_id.clone();
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("an encryption key (use: enc)".into());
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(alg) => Some(Algorithm::try_from(alg).map_err(|_| format!("alg {alg} does not sign tokens"))?),
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable key: {e}"))?;
    // A shared secret published in a key set would let anyone who reads the set sign tokens.
    if key.family() == AlgorithmFamily::Hmac {
        return Err("a shared secret (kty oct) is not a public key".into());
    }
    if let Some(alg) = alg
        && alg.family() != key.family()
    {
        return Err(format!("alg {alg:?} does not fit a {:?} key", key.family()));
    }
    Ok(ProviderKey { kid, alg, key: Arc::new(key) })
}

/// A kid as shown in an answer: it comes from the caller, so it is cut short and printable.
fn shown(kid: &str) -> String {
    kid.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// The identity provider's key set, shared by every call; see the module documentation.
pub struct Jwks {
    settings: JwksSettings,
    http: reqwest::Client,
    current: RwLock<Option<Arc<KeySet>>>,
    fetching: Mutex<Fetching>,
    started: AtomicBool,
}

/// The fetch under way, if any, and when the last one ended.
#[derive(Default)]
struct Fetching {
    in_flight: Option<Refetch>,
    last_done: Option<Instant>,
}

impl Jwks {
    /// A key set to be fetched from `settings.url` (nothing is fetched before [`Jwks::start`]
    /// or a refetch); refuses a URL that is not `http(s)://host...`.
    pub fn new(settings: JwksSettings) -> anyhow::Result<Arc<Self>> {
        let url = reqwest::Url::parse(&settings.url)
            .map_err(|e| anyhow::anyhow!("JWT_JWKS_URL {:?} is not a URL: {e}", settings.url))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            anyhow::bail!("JWT_JWKS_URL {:?} must be an http:// or https:// URL", settings.url);
        }
        // rustls with the ring provider, built by the kit, as for Langflow.
        let tls = super::tls::http_client_config("JWT_JWKS_CA_FILE", settings.ca_file.as_deref())?;
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|e| anyhow::anyhow!("JWT_JWKS_URL: building the HTTP client: {e}"))?;
        Ok(Arc::new(Self {
            settings,
            http,
            current: RwLock::new(None),
            fetching: Mutex::new(Fetching::default()),
            started: AtomicBool::new(false),
        }))
    }

    /// Starts the background refresh (once; later calls do nothing): a first fetch now, then
    /// one every `refresh`, or every `min_refresh` while no set was ever fetched. The task ends
    /// when the last holder of the set is gone.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(fetch) = weak.upgrade().map(|jwks| jwks.fetch_now()) else { return };
                fetch.await;
                let Some(pause) = weak.upgrade().map(|jwks| {
                    if jwks.current().is_some() { jwks.settings.refresh } else { jwks.settings.min_refresh }
                }) else {
                    return;
                };
                tokio::time::sleep(pause).await;
            }
        });
    }

    /// The set in use, if one was ever fetched.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The key for a token's `kid` and `alg`: UNAVAILABLE while no set was ever fetched,
    /// UNAUTHENTICATED when the set has no fitting key.
    pub fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<Arc<DecodingKey>, Status> {
        match self.current() {
            Some(set) => set.find(kid, alg),
            None => Err(Status::unavailable(
                "identity provider keys unavailable: no key set could be fetched from JWT_JWKS_URL yet",
            )),
        }
    }

    /// The fetch to wait for before a token with this `kid` can be checked: when the set has
    /// no such key (or there is no set yet) and a refetch is due (one under way is shared; a new
    /// one starts only `min_refresh` after the last ended). None when waiting would not help.
    pub fn refetch_for(self: &Arc<Self>, kid: Option<&str>) -> Option<Refetch> {
        let known = match (self.current(), kid) {
            (None, _) => false,
            (Some(set), Some(kid)) => set.contains(kid),
            // Without a kid a refetch cannot help choose among the keys.
            (Some(_), None) => true,
        };
        if known {
            return None;
        }
        let mut fetching = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(in_flight) = &fetching.in_flight {
            return Some(in_flight.clone());
        }
        if fetching.last_done.is_some_and(|done| done.elapsed() < self.settings.min_refresh) {
            return None;
        }
        Some(self.start_fetch(&mut fetching))
    }

    /// The fetch under way, or a new one (for the background refresh, which keeps its own pace).
    fn fetch_now(self: &Arc<Self>) -> Refetch {
        let mut fetching = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        match &fetching.in_flight {
            Some(in_flight) => in_flight.clone(),
            None => self.start_fetch(&mut fetching),
        }
    }

    /// Spawns a fetch (so that it completes even if every caller waiting for it goes away)
    /// and records it as the one under way; the fetch clears that when it ends.
    fn start_fetch(self: &Arc<Self>, fetching: &mut Fetching) -> Refetch {
        let jwks = self.clone();
        let task = tokio::spawn(async move {
            jwks.fetch_and_keep().await;
            let mut fetching = jwks.fetching.lock().unwrap_or_else(|e| e.into_inner());
            fetching.in_flight = None;
            fetching.last_done = Some(Instant::now());
        });
        let refetch = async move {
            // A panicked fetch task is a bug that has already been reported; the waiting calls
            // go on with the set in place.
            let _ = task.await;
        }
        .boxed()
        .shared();
        fetching.in_flight = Some(refetch.clone());
        refetch
    }

    /// Fetches the set and puts it in place; a failure keeps the last good set.
    async fn fetch_and_keep(&self) {
        let url = self.settings.url.as_str();
        let fetched = self.fetch().await;
        if fetched.is_err() {
            metrics::counter!("jwks_fetches_total", "outcome" => "error").increment(1);
        }
        match fetched {
            Ok((set, skipped)) => {
                metrics::counter!("jwks_fetches_total", "outcome" => "ok").increment(1);
                metrics::gauge!("jwks_keys").set(set.keys.len() as f64);
                tracing::info!(jwks_url = url, kids = ?set.kids(), "identity provider keys fetched");
                for reason in skipped {
                    tracing::warn!(jwks_url = url, reason, "identity provider key left out");
                }
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(set));
            }
            Err(error) if self.current().is_some() => {
                tracing::warn!(
                    jwks_url = url,
                    error,
                    "fetching the identity provider keys failed; keeping the last good set"
                );
            }
            Err(error) => {
                tracing::warn!(
                    jwks_url = url,
                    error,
                    "fetching the identity provider keys failed; calls are UNAVAILABLE until a fetch succeeds"
                );
            }
        }
    }

    /// One fetch: a 2xx answer of at most [`MAX_JWKS_BYTES`] within [`FETCH_TIMEOUT`], parsed.
    async fn fetch(&self) -> Result<(KeySet, Vec<String>), String> {
        let mut response = self
            .http
            .get(&self.settings.url)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("answered HTTP {}", response.status()));
        }
        let too_big = || format!("the document is larger than {MAX_JWKS_BYTES} bytes");
        if response.content_length().is_some_and(|len| len > MAX_JWKS_BYTES as u64) {
            return Err(too_big());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| format!("reading the answer failed: {e}"))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        KeySet::parse(&body)
    }
}

/// What the tests of this module and of [`super::auth`] share: RSA keys made with the `openssl`
/// CLI, and an identity provider on loopback whose key set can be changed (rotated), taken down
/// and counted.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};

    use jsonwebtoken::{Algorithm, EncodingKey};

    /// An RSA key pair: its private key for signing, its public PEM, and its JWK (with `kid`).
    pub struct TestKey {
        pub kid: String,
        pub encoding: EncodingKey,
        pub public_pem: Vec<u8>,
        pub jwk: serde_json::Value,
    }

    impl TestKey {
        /// A token with these claims, signed RS256 with this key, naming its `kid`.
        pub fn sign(&self, claims: &serde_json::Value) -> String {
            self.sign_as(Some(&self.kid), claims)
        }

        /// A token signed RS256 with this key, naming `kid` (or none).
        pub fn sign_as(&self, kid: Option<&str>, claims: &serde_json::Value) -> String {
            let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
            header.kid = kid.map(str::to_owned);
            jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
        }
    }

    /// The `index`th of a few RSA keys made once per test process (openssl takes a while).
    pub fn rsa_key(index: usize) -> &'static TestKey {
        static KEYS: OnceLock<Vec<TestKey>> = OnceLock::new();
        &KEYS.get_or_init(|| (0..3).map(make_key).collect())[index]
    }

    fn make_key(index: usize) -> TestKey {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("key.pem");
        let public = dir.path().join("pub.pem");
        let openssl = |args: &[&str]| {
            let status = std::process::Command::new("openssl").args(args).stderr(std::process::Stdio::null()).status();
            assert!(status.expect("openssl runs").success(), "openssl {args:?}");
        };
        openssl(&["genrsa", "-out", private.to_str().unwrap(), "2048"]);
        openssl(&["rsa", "-in", private.to_str().unwrap(), "-pubout", "-out", public.to_str().unwrap()]);
        let encoding = EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap();
        let kid = format!("key-{index}");
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, Algorithm::RS256).unwrap();
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        TestKey { kid, encoding, public_pem: std::fs::read(&public).unwrap(), jwk: serde_json::to_value(jwk).unwrap() }
    }

    /// An identity provider serving a JWK set at `/jwks`, on loopback.
    #[derive(Clone)]
    pub struct FakeIdp {
        pub url: String,
        set: Arc<Mutex<serde_json::Value>>,
        hits: Arc<AtomicUsize>,
        up: Arc<AtomicBool>,
        hung: Arc<AtomicBool>,
    }

    impl FakeIdp {
        pub async fn start(keys: &[&serde_json::Value]) -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let idp = Self {
                url: format!("http://{}/jwks", listener.local_addr().unwrap()),
                set: Arc::new(Mutex::new(serde_json::Value::Null)),
                hits: Arc::default(),
                up: Arc::new(AtomicBool::new(true)),
                hung: Arc::default(),
            };
            idp.serve(keys);
            let state = idp.clone();
            let app = axum::Router::new().route(
                "/jwks",
                axum::routing::get(move || {
                    let state = state.clone();
                    async move {
                        state.hits.fetch_add(1, Ordering::SeqCst);
                        if state.hung.load(Ordering::SeqCst) {
                            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                        }
                        if !state.up.load(Ordering::SeqCst) {
                            return (axum::http::StatusCode::SERVICE_UNAVAILABLE, String::new());
                        }
                        (axum::http::StatusCode::OK, state.set.lock().unwrap().to_string())
                    }
                }),
            );
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            idp
        }

        /// Serves these keys from now on (a rotation).
        pub fn serve(&self, keys: &[&serde_json::Value]) {
            *self.set.lock().unwrap() = serde_json::json!({ "keys": keys });
        }

        /// Serves this document as it is.
        pub fn serve_document(&self, document: serde_json::Value) {
            *self.set.lock().unwrap() = document;
        }

        /// Answers 503 (down) or the set (up).
        pub fn set_up(&self, up: bool) {
            self.up.store(up, Ordering::SeqCst);
        }

        /// Takes requests and never answers them (true), or answers (false).
        pub fn set_hung(&self, hung: bool) {
            self.hung.store(hung, Ordering::SeqCst);
        }

        /// How many times the set was asked for.
        pub fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{FakeIdp, rsa_key};
    use super::*;

    fn settings(url: &str, min_refresh: Duration) -> JwksSettings {
        JwksSettings {
            url: url.to_owned(),
            refresh: Duration::from_secs(3600),
            min_refresh,
            timeout: FETCH_TIMEOUT,
            ca_file: None,
        }
    }

    /// Waits until `done` holds, for at most 5 s.
    async fn eventually(mut done: impl FnMut() -> bool) {
        for _ in 0..250 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("condition not reached within 5 s");
    }

    #[test]
    fn a_set_keeps_its_signing_keys_and_leaves_out_the_others_saying_why() {
        let mut enc = rsa_key(1).jwk.clone();
        enc["use"] = "enc".into();
        enc["kid"] = "enc-key".into();
        let mut repeated = rsa_key(2).jwk.clone();
        repeated["kid"] = rsa_key(0).kid.clone().into();
        let secret = serde_json::json!({"kty": "oct", "kid": "shared", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"});
        let mut oaep = rsa_key(2).jwk.clone();
        oaep["alg"] = "RSA-OAEP".into();
        oaep["kid"] = "oaep".into();
        let document = serde_json::json!({"keys": [rsa_key(0).jwk, enc, repeated, secret, oaep, {"kty": "weird"}]});
        let (set, skipped) = KeySet::parse(document.to_string().as_bytes()).unwrap();
        assert_eq!(set.kids(), vec!["key-0"]);
        assert_eq!(skipped.len(), 5, "{skipped:?}");
        assert!(skipped[0].contains("use: enc"), "{skipped:?}");
        assert!(skipped[1].contains("repeats"), "{skipped:?}");
        assert!(skipped[2].contains("shared secret"), "{skipped:?}");
        assert!(skipped[3].contains("does not sign"), "{skipped:?}");

        for bad in [&b"not json"[..], br#"{"keys": []}"#, br#"{"keys": [{"kty": "oct", "k": "AAAA"}]}"#, br#"[1]"#] {
            assert!(KeySet::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_key_is_found_by_kid_and_must_fit_the_token_algorithm() {
        let mut rs384 = rsa_key(1).jwk.clone();
        rs384["alg"] = "RS384".into();
        let document = serde_json::json!({"keys": [rsa_key(0).jwk, rs384]});
        let (set, _) = KeySet::parse(document.to_string().as_bytes()).unwrap();
        set.find(Some("key-0"), Algorithm::RS256).unwrap();
        set.find(Some("key-1"), Algorithm::RS384).unwrap();
        let cases = [
            (Some("key-1"), Algorithm::RS256, "is for RS384"),
            (Some("key-0"), Algorithm::ES256, "is for RS256"),
            (Some("nope"), Algorithm::RS256, "no key with kid \"nope\""),
            (None, Algorithm::RS256, "has no kid, and the identity provider has 2 keys"),
        ];
        for (kid, alg, reason) in cases {
            let status = set.find(kid, alg).expect_err("refused");
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert!(status.message().contains(reason), "{kid:?} {alg:?}: {}", status.message());
        }
        // A key without an `alg` of its own still only verifies its own family.
        let mut no_alg = rsa_key(2).jwk.clone();
        no_alg.as_object_mut().unwrap().remove("alg");
        let (single, _) = KeySet::parse(serde_json::json!({"keys": [no_alg]}).to_string().as_bytes()).unwrap();
        single.find(None, Algorithm::PS256).unwrap();
        let status = single.find(None, Algorithm::ES256).expect_err("refused");
        assert!(status.message().contains("is a Rsa key"), "{}", status.message());
    }

    #[tokio::test]
    async fn without_any_set_keys_are_unavailable_until_the_provider_answers() {
        let idp = FakeIdp::start(&[&rsa_key(0).jwk]).await;
        idp.set_up(false);
        let jwks = Jwks::new(settings(&idp.url, Duration::from_millis(200))).unwrap();
        jwks.start();
        eventually(|| idp.hits() >= 1).await;
        let status = jwks.key_for(Some("key-0"), Algorithm::RS256).expect_err("no set");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().starts_with("identity provider keys unavailable"), "{}", status.message());
        // The background retries (every min_refresh while there is no set) take it once it is up.
        idp.set_up(true);
        eventually(|| jwks.current().is_some()).await;
        jwks.key_for(Some("key-0"), Algorithm::RS256).unwrap();
    }

    #[tokio::test]
    async fn a_failed_fetch_keeps_the_last_good_set() {
        let idp = FakeIdp::start(&[&rsa_key(0).jwk]).await;
        let jwks = Jwks::new(settings(&idp.url, Duration::from_millis(1))).unwrap();
        jwks.refetch_for(Some("key-0")).expect("no set yet: a fetch").await;
        assert_eq!(jwks.current().unwrap().kids(), vec!["key-0"]);
        let garbage = serde_json::json!({"keys": "no"});
        // A good set but for its size: taken, it would replace key-0 with key-1.
        let too_big = serde_json::json!({"keys": [rsa_key(1).jwk], "padding": "x".repeat(MAX_JWKS_BYTES)});
        for (what, broken) in [("down", None), ("not a set", Some(garbage)), ("too big", Some(too_big))] {
            match broken {
                None => idp.set_up(false),
                Some(document) => {
                    idp.set_up(true);
                    idp.serve_document(document);
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            let hits = idp.hits();
            jwks.refetch_for(Some("key-1")).expect("an unknown kid refetches").await;
            assert_eq!(idp.hits(), hits + 1, "{what}");
            assert_eq!(jwks.current().unwrap().kids(), vec!["key-0"], "{what}");
            jwks.key_for(Some("key-0"), Algorithm::RS256).unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_kids_share_one_refetch_and_refetch_at_most_once_per_min_refresh() {
        let idp = FakeIdp::start(&[&rsa_key(0).jwk]).await;
        let jwks = Jwks::new(settings(&idp.url, Duration::from_millis(1000))).unwrap();
        jwks.refetch_for(None).expect("no set yet: a fetch").await;
        assert_eq!(idp.hits(), 1);
        // A known kid, or no kid once there is a set, never refetches.
        assert!(jwks.refetch_for(Some("key-0")).is_none());
        assert!(jwks.refetch_for(None).is_none());
        // Right after a fetch, an unknown kid does not refetch: the rate limit.
        assert!(jwks.refetch_for(Some("made-up")).is_none());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // The key rotates; many calls with unknown kids at once share one fetch.
        idp.serve(&[&rsa_key(1).jwk]);
        let waits: Vec<_> = (0..20).filter_map(|i| jwks.refetch_for(Some(&format!("kid-{i}")))).collect();
        assert_eq!(waits.len(), 20);
        futures::future::join_all(waits).await;
        assert_eq!(idp.hits(), 2);
        jwks.key_for(Some("key-1"), Algorithm::RS256).unwrap();
        let retired = jwks.key_for(Some("key-0"), Algorithm::RS256).expect_err("retired");
        assert_eq!(retired.code(), tonic::Code::Unauthenticated);
        // More made-up kids within min_refresh: no fetch at all.
        for i in 0..20 {
            assert!(jwks.refetch_for(Some(&format!("again-{i}"))).is_none());
        }
        assert_eq!(idp.hits(), 2);
    }

    #[tokio::test]
    async fn the_background_refresh_takes_a_rotation_and_ends_with_the_set() {
        let idp = FakeIdp::start(&[&rsa_key(0).jwk]).await;
        let jwks = Jwks::new(JwksSettings {
            url: idp.url.clone(),
            refresh: Duration::from_millis(100),
            min_refresh: Duration::from_secs(3600),
            timeout: FETCH_TIMEOUT,
            ca_file: None,
        })
        .unwrap();
        jwks.start();
        jwks.start();
        eventually(|| jwks.current().is_some_and(|set| set.contains("key-0"))).await;
        idp.serve(&[&rsa_key(1).jwk, &rsa_key(2).jwk]);
        eventually(|| jwks.current().is_some_and(|set| set.contains("key-1") && !set.contains("key-0"))).await;
        // Dropped: the refresh stops.
        drop(jwks);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let hits = idp.hits();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(idp.hits(), hits);
    }

    #[tokio::test]
    async fn a_provider_that_never_answers_holds_a_call_no_longer_than_the_fetch_timeout() {
        let idp = FakeIdp::start(&[&rsa_key(0).jwk]).await;
        idp.set_hung(true);
        let jwks = Jwks::new(JwksSettings {
            timeout: Duration::from_millis(300),
            ..settings(&idp.url, Duration::from_secs(1))
        })
        .unwrap();
        let start = Instant::now();
        jwks.refetch_for(Some("key-0")).expect("no set yet: a fetch").await;
        assert!(start.elapsed() < Duration::from_secs(3), "waited {:?}", start.elapsed());
        assert_eq!(idp.hits(), 1);
        let status = jwks.key_for(Some("key-0"), Algorithm::RS256).expect_err("no set");
        assert_eq!(status.code(), tonic::Code::Unavailable);
    }

    #[test]
    fn only_http_urls_are_taken() {
        let jwks = |url: &str| Jwks::new(settings(url, Duration::from_secs(1)));
        jwks("http://idp:8080/jwks").unwrap();
        jwks("https://idp.example/.well-known/jwks.json").unwrap();
        for bad in ["idp/jwks", "ftp://idp/jwks", "file:///etc/jwks", "not a url"] {
            let error = jwks(bad).err().expect("refused").to_string();
            assert!(error.contains("JWT_JWKS_URL"), "{error}");
        }
    }
}
