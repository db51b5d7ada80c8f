//! TLS on every hop, with rustls and its ring provider only (no aws-lc in the build):
//!
//! - the gRPC servers: [`ServerTls`], from TLS_CERT_FILE and TLS_KEY_FILE, with mTLS when
//!   TLS_CLIENT_CA_FILE is set. The handshake runs in [`super::connections`], within the
//!   connection's handshake timeout; a verified client certificate's [`PeerIdentity`] goes in
//!   the extensions of every request of its connection ([`PeerIdentityLayer`]);
//! - the HTTP clients (Langflow): [`http_client_config`], the public roots plus an optional CA.
//!
//! Every file is read and checked at start: a missing file, a PEM without the expected item or
//! a key that does not match its certificate stops the service, naming the setting.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{Context as _, anyhow, bail};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The only crypto provider of this build.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads `path`, the file of `setting`.
fn read(setting: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{setting}: cannot read {}", path.display()))
}

/// The PEM certificates in `pem` (the contents of `path`, the file of `setting`): at least one.
pub fn parse_certificates(setting: &str, path: &Path, pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{setting}: {} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        bail!("{setting}: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display());
    }
    for cert in &certs {
        webpki::EndEntityCert::try_from(cert)
            .map_err(|e| anyhow!("{setting}: {} holds a certificate that is not valid X.509: {e}", path.display()))?;
    }
    Ok(certs)
}

/// The certificates in the PEM file `path` (the file of `setting`).
pub fn read_certificates(setting: &str, path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    parse_certificates(setting, path, &read(setting, path)?)
}

/// The private key in `pem` (PKCS#8, PKCS#1 or SEC1), the contents of `path`.
pub fn parse_private_key(setting: &str, path: &Path, pem: &[u8]) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            anyhow!("{setting}: {} holds no PEM private key (-----BEGIN PRIVATE KEY-----)", path.display())
        }
        e => anyhow!("{setting}: {} is not a valid PEM private key: {e}", path.display()),
    })
}

/// The private key in the PEM file `path`.
pub fn read_private_key(setting: &str, path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    parse_private_key(setting, path, &read(setting, path)?)
}

/// The CA certificates of the PEM file `path`, as trust roots.
pub fn read_roots(setting: &str, path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(setting, path)? {
        roots
            .add(cert)
            .map_err(|e| anyhow!("{setting}: {} holds a certificate that cannot be a CA: {e}", path.display()))?;
    }
    Ok(roots)
}

/// The client side of an HTTPS connection (Langflow): the Mozilla roots compiled in
/// (webpki-roots), plus the CA of `ca_file` when set. Compiled-in roots rather than the
/// system's: a build trusts the same roots wherever it runs (the image, a developer's machine,
/// CI), whatever bundle the host has or lacks, and a private CA is what `ca_file` is for.
/// HTTP/1.1 only, as the client is built.
pub fn http_client_config(setting: &str, ca_file: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = ca_file {
        for cert in read_certificates(setting, path)? {
            roots
                .add(cert)
                .map_err(|e| anyhow!("{setting}: {} holds a certificate that cannot be a CA: {e}", path.display()))?;
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The server side of the gRPC servers' TLS.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    requires_client_certificate: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("requires_client_certificate", &self.requires_client_certificate).finish()
    }
}

impl ServerTls {
    /// The certificate chain of `cert_file` with the key of `key_file` (TLS_CERT_FILE,
    /// TLS_KEY_FILE); with `client_ca_file` (TLS_CLIENT_CA_FILE), every client must present a
    /// certificate signed by that CA (mTLS).
    pub fn from_files(cert_file: &Path, key_file: &Path, client_ca_file: Option<&Path>) -> anyhow::Result<Self> {
        let certs = read_certificates("TLS_CERT_FILE", cert_file)?;
        let key = read_private_key("TLS_KEY_FILE", key_file)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = match client_ca_file {
            Some(path) => {
                let roots = read_roots("TLS_CLIENT_CA_FILE", path)?;
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .map_err(|e| anyhow!("TLS_CLIENT_CA_FILE: {}: {e}", path.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            anyhow!(
                "TLS_CERT_FILE {} and TLS_KEY_FILE {} do not make a usable pair: {e}",
                cert_file.display(),
                key_file.display()
            )
        })?;
        // gRPC is HTTP/2; clients (tonic, grpc-go) insist on hearing it from ALPN.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            requires_client_certificate: client_ca_file.is_some(),
        })
    }

    /// The same certificate, key and client verification, offering `protocols` by ALPN
    /// instead of h2 (the HTTP/JSON port speaks HTTP/1.1).
    pub fn with_alpn(&self, protocols: &[&[u8]]) -> Self {
        let mut config = rustls::ServerConfig::clone(self.acceptor.config());
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            requires_client_certificate: self.requires_client_certificate,
        }
    }

    pub fn requires_client_certificate(&self) -> bool {
        self.requires_client_certificate
    }

    /// The TLS handshake on an accepted connection (the caller bounds its time), and the
    /// identity of the client's verified certificate, when it presented one.
    pub async fn accept(&self, stream: TcpStream) -> io::Result<(TlsStream<TcpStream>, Option<PeerIdentity>)> {
        let stream = self.acceptor.accept(stream).await?;
        let identity = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(PeerIdentity::from_certificate);
        Ok((stream, identity))
    }
}

/// Who the peer of an mTLS connection is: the first DNS name of its verified certificate's
/// subject alternative names, or else its subject's common name. In the extensions of every
/// request that came over such a connection; absent otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity(Arc<str>);

impl PeerIdentity {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The identity a (verified) certificate names; `None` when it names none.
    pub fn from_certificate(cert: &CertificateDer<'_>) -> Option<Self> {
        let cert = webpki::EndEntityCert::try_from(cert).ok()?;
        let name = match cert.valid_dns_names().next() {
            Some(dns) => dns.to_owned(),
            None => common_name(cert.subject())?,
        };
        (!name.is_empty()).then(|| Self(name.into()))
    }
}

impl std::fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The common name (2.5.4.3) in the DER contents of an X.509 Name (its RDN sets, without the
/// outer SEQUENCE), as UTF8String, PrintableString or IA5String.
fn common_name(mut name: &[u8]) -> Option<String> {
    const COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];
    while !name.is_empty() {
        let (tag, mut set, rest) = der_item(name)?;
        name = rest;
        if tag != 0x31 {
            return None;
        }
        while !set.is_empty() {
            let (tag, attribute, rest) = der_item(set)?;
            set = rest;
            if tag != 0x30 {
                return None;
            }
            let (tag, oid, value) = der_item(attribute)?;
            if tag == 0x06 && oid == COMMON_NAME {
                let (tag, text, _) = der_item(value)?;
                return match tag {
                    0x0c | 0x13 | 0x16 => std::str::from_utf8(text).ok().map(str::to_owned),
                    _ => None,
                };
            }
        }
    }
    None
}

/// One DER item at the start of `input`: its tag, its contents and what follows it.
fn der_item(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (rest[..n].iter().fold(0usize, |len, b| (len << 8) | usize::from(*b)), &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// What [`super::connections`] knows of a connection: its addresses and, over mTLS, its peer's
/// identity. tonic puts it in the extensions of each of its requests.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub tcp: tonic::transport::server::TcpConnectInfo,
    pub peer: Option<PeerIdentity>,
}

/// Copies a connection's [`PeerIdentity`] (and its addresses, for
/// `tonic::Request::remote_addr`) into the extensions of each request, before authentication
/// sees it. Neither boxes nor adds a future.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerIdentityLayer;

impl<S> tower_layer::Layer<S> for PeerIdentityLayer {
    type Service = PeerIdentityService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        PeerIdentityService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct PeerIdentityService<S> {
    inner: S,
}

impl<S, B> tower_service::Service<http::Request<B>> for PeerIdentityService<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if let Some(info) = req.extensions().get::<ConnectionInfo>().cloned() {
            req.extensions_mut().insert(info.tcp);
            if let Some(peer) = info.peer {
                req.extensions_mut().insert(peer);
            }
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DER of `SET { SEQUENCE { OID, UTF8String value } }`.
    fn rdn(oid: &[u8], value: &str) -> Vec<u8> {
        let mut attribute = vec![0x06, oid.len() as u8];
        attribute.extend_from_slice(oid);
        attribute.extend_from_slice(&[0x0c, value.len() as u8]);
        attribute.extend_from_slice(value.as_bytes());
        let mut sequence = vec![0x30, attribute.len() as u8];
        sequence.extend(attribute);
        let mut set = vec![0x31, sequence.len() as u8];
        set.extend(sequence);
        set
    }

    #[test]
    fn the_common_name_is_found_among_the_subjects_attributes() {
        let mut name = rdn(&[0x55, 0x04, 0x06], "FR"); // countryName
        name.extend(rdn(&[0x55, 0x04, 0x0a], "EnGarde")); // organizationName
        name.extend(rdn(&[0x55, 0x04, 0x03], "agent-service")); // commonName
        assert_eq!(common_name(&name).as_deref(), Some("agent-service"));
        assert_eq!(common_name(&rdn(&[0x55, 0x04, 0x0a], "EnGarde")), None);
        assert_eq!(common_name(&[]), None);
    }

    #[test]
    fn truncated_or_odd_der_is_no_common_name_and_no_panic() {
        let name = rdn(&[0x55, 0x04, 0x03], "agent-service");
        for cut in 0..name.len() {
            assert_eq!(common_name(&name[..cut]), None, "cut at {cut}");
        }
        assert_eq!(common_name(&[0x31, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(common_name(&[0x31, 0x80]), None);
        assert_eq!(der_item(&[0x30, 0x81, 0x02, 0xaa, 0xbb, 0xcc]), Some((0x30, &[0xaa, 0xbb][..], &[0xcc][..])));
    }

    /// A self-signed certificate made by the openssl CLI with `subject` and the extension `ext`.
    fn certificate(subject: &str, ext: Option<&str>) -> CertificateDer<'static> {
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
        let mut args = vec!["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        args.extend(["-days", "1", "-subj", subject, "-keyout", key.to_str().unwrap(), "-out", cert.to_str().unwrap()]);
        if let Some(ext) = ext {
            args.extend(["-addext", ext]);
        }
        let output = std::process::Command::new("openssl").args(&args).output().expect("openssl runs");
        assert!(output.status.success(), "openssl: {}", String::from_utf8_lossy(&output.stderr));
        read_certificates("cert", &cert).unwrap().remove(0)
    }

    #[test]
    fn a_certificates_identity_is_its_first_dns_name_else_its_common_name() {
        let both = certificate("/O=EnGarde/CN=ignored", Some("subjectAltName=DNS:agent-service,DNS:other"));
        assert_eq!(PeerIdentity::from_certificate(&both).unwrap().as_str(), "agent-service");
        let ip_only = certificate("/CN=workflow-service/O=EnGarde", Some("subjectAltName=IP:10.0.0.1"));
        assert_eq!(PeerIdentity::from_certificate(&ip_only).unwrap().as_str(), "workflow-service");
        let cn_only = certificate("/O=EnGarde/CN=platform-backend", None);
        assert_eq!(PeerIdentity::from_certificate(&cn_only).unwrap().as_str(), "platform-backend");
        assert_eq!(PeerIdentity::from_certificate(&certificate("/O=EnGarde", None)), None);
    }

    #[test]
    fn the_peer_identity_goes_into_each_requests_extensions() {
        use tower_layer::Layer as _;
        use tower_service::Service as _;
        let peer = PeerIdentity("agent-service".into());
        let mut service = PeerIdentityLayer.layer(tower::service_fn(|req: http::Request<()>| async move {
            Ok::<_, std::convert::Infallible>(req.extensions().get::<PeerIdentity>().cloned())
        }));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let tcp = tonic::transport::server::Connected::connect_info(&client);
            let mut request = http::Request::new(());
            request.extensions_mut().insert(ConnectionInfo { tcp: tcp.clone(), peer: Some(peer.clone()) });
            assert_eq!(service.call(request).await.unwrap(), Some(peer));
            let mut request = http::Request::new(());
            request.extensions_mut().insert(ConnectionInfo { tcp, peer: None });
            assert_eq!(service.call(request).await.unwrap(), None);
            assert_eq!(service.call(http::Request::new(())).await.unwrap(), None);
        });
    }
}
