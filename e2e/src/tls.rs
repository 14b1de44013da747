//! Certificates for mTLS tests: a test CA (given to the control plane with
//! `--ca-cert/--ca-key`, so tests can also forge leaves the mesh would
//! never issue), and one request over a raw mTLS connection to a sidecar's
//! inbound listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// A CA: its certificate and key, PEM.
#[derive(Debug)]
pub struct TestCa {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> Result<Self> {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes `ca.pem` and `ca-key.pem` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        let (cert, key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
        std::fs::write(&cert, &self.cert_pem)?;
        std::fs::write(&key, &self.key_pem)?;
        Ok((cert, key))
    }

    /// A leaf signed by this CA.
    pub fn leaf(&self, spec: &Leaf) -> Result<Credential> {
        let (cert, key) = self.signed(spec)?;
        Ok(Credential {
            cert: cert.der().clone(),
            key: key.serialize_der(),
        })
    }

    /// A leaf signed by this CA as PEM files in `dir` (`NAME.pem`,
    /// `NAME-key.pem`), for outside clients such as `openssl s_client`.
    pub fn leaf_files(&self, spec: &Leaf, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
        let (cert, key) = self.signed(spec)?;
        let paths = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&paths.0, cert.pem())?;
        std::fs::write(&paths.1, key.serialize_pem())?;
        Ok(paths)
    }

    fn signed(&self, spec: &Leaf) -> Result<(rcgen::Certificate, KeyPair)> {
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, KeyPair::from_pem(&self.key_pem)?)?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = spec
            .uris
            .iter()
            .map(|u| Ok(SanType::URI(u.as_str().try_into()?)))
            .collect::<Result<_, rcgen::Error>>()?;
        params.is_ca = if spec.ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        if spec.expired {
            params.not_before = epoch + (now - Duration::from_secs(7200));
            params.not_after = epoch + (now - Duration::from_secs(3600));
        } else {
            params.not_before = epoch + (now - Duration::from_secs(60));
            params.not_after = epoch + (now + Duration::from_secs(3600));
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert, key))
    }
}

/// What to put in a forged leaf.
#[derive(Clone, Debug, Default)]
pub struct Leaf {
    pub uris: Vec<String>,
    pub ca: bool,
    pub expired: bool,
}

impl Leaf {
    pub fn id(uri: &str) -> Self {
        Self {
            uris: vec![uri.to_string()],
            ..Self::default()
        }
    }
}

/// A client certificate and its key.
#[derive(Clone, Debug)]
pub struct Credential {
    pub cert: CertificateDer<'static>,
    pub key: Vec<u8>,
}

/// What came of one request over mTLS.
#[derive(Debug)]
pub enum Outcome {
    /// The server refused the connection (handshake failed or closed).
    Refused(String),
    /// An HTTP response: status and body.
    Response(u16, String),
}

/// `GET path` to `addr` over mTLS presenting `credential` (the server's
/// certificate is not checked: the server is what is under test).
pub async fn request(addr: SocketAddr, credential: &Credential, path: &str) -> Result<Outcome> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_client_auth_cert(
            vec![credential.cert.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(credential.key.clone())),
        )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("sidecar.trellis")?;
    let tls = match connector.connect(name, tcp).await {
        Ok(tls) => tls,
        Err(e) => return Ok(Outcome::Refused(e.to_string())),
    };
    let io = hyper_util::rt::TokioIo::new(tls);
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(io).await {
        Ok(pair) => pair,
        Err(e) => return Ok(Outcome::Refused(e.to_string())),
    };
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "reviews")
        .body(Full::new(Bytes::new()))?;
    // TLS 1.3: a refused client certificate surfaces on the first read.
    match tokio::time::timeout(Duration::from_secs(5), sender.send_request(req)).await {
        Err(_) => Ok(Outcome::Refused("no response within 5 s".into())),
        Ok(Err(e)) => Ok(Outcome::Refused(e.to_string())),
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.context("body")?.to_bytes();
            Ok(Outcome::Response(
                status,
                String::from_utf8_lossy(&body).into_owned(),
            ))
        }
    }
}

/// Accepts any server certificate (tests of the server side only).
#[derive(Debug)]
struct AnyServer;

/// A client config that accepts any server certificate, HTTP/1.1: what the
/// kubelet's HTTPS probes do.
pub fn any_server_http1() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServer))
                .with_no_client_auth()
        })
        .unwrap_or_else(|_| unreachable!("ring supports the default versions"));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
