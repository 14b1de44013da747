//! The sidecar's workload identity: a key generated in memory, a
//! certificate for one SPIFFE id signed by the control plane
//! ([`certify`]), and the rustls configurations built from them
//! ([`verify`] checks peers). A renewed certificate replaces the current
//! [`Credentials`] atomically: new connections use it, open ones go on.

pub mod certify;
pub use trellis_api::tls::{spiffe, verify};

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub use spiffe::{IdentityError, SpiffeId};
use verify::PeerVerifier;

use crate::metrics::Metrics;

/// ALPN between sidecars: HTTP/2 (requests multiplexed), HTTP/1.1 accepted.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// Opaque TCP between sidecars: the inbound side relays the bytes to the
/// application instead of serving HTTP.
pub const ALPN_TCP: &[u8] = b"trellis-tcp";

/// A certificate with its key and the TLS configurations using them.
#[derive(Debug)]
pub struct Credentials {
    pub id: SpiffeId,
    pub trust_domain: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Inbound: requires and verifies a client certificate.
    pub server: Arc<rustls::ServerConfig>,
    /// Outbound: presents the certificate, verifies the server's.
    pub client: Arc<rustls::ClientConfig>,
    /// As `client`, for opaque TCP (ALPN `trellis-tcp`).
    pub client_tcp: Arc<rustls::ClientConfig>,
}

impl Credentials {
    /// Builds credentials from a signed certificate (PEM), its key (PKCS#8
    /// DER) and the trust bundle (PEM).
    pub fn new(
        cert_pem: &str,
        key_pkcs8: Vec<u8>,
        bundle_pem: &str,
        trust_domain: &str,
    ) -> Result<Self, String> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("certificate: {e}"))?;
        let leaf = chain.first().ok_or("certificate: none in the reply")?;
        let id = spiffe::identity_of(leaf, trust_domain).map_err(|e| e.to_string())?;
        let (not_before, not_after) = validity(leaf)?;
        let roots: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(bundle_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("trust bundle: {e}"))?;
        let verifier = Arc::new(PeerVerifier::new(&roots, trust_domain)?);
        let key = || PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8.clone()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(chain.clone(), key())
            .map_err(|e| format!("server config: {e}"))?;
        server.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec(), ALPN_TCP.to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(chain, key())
            .map_err(|e| format!("client config: {e}"))?;
        let mut client_tcp = client.clone();
        client.alpn_protocols = vec![ALPN_H2.to_vec()];
        client_tcp.alpn_protocols = vec![ALPN_TCP.to_vec()];
        Ok(Self {
            client_tcp: Arc::new(client_tcp),
            id,
            trust_domain: trust_domain.to_string(),
            not_before,
            not_after,
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// When to renew: half-way through the certificate's life.
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life / 2
    }

    /// The full SPIFFE id an endpoint identity names: as given when it is
    /// one, else `ns/x/sa/y` in this proxy's trust domain.
    pub fn expand(&self, identity: &str) -> String {
        if identity.starts_with("spiffe://") {
            identity.to_string()
        } else {
            format!("spiffe://{}/{identity}", self.trust_domain)
        }
    }
}

fn validity(der: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), String> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|_| "certificate does not parse".to_string())?;
    let at = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    Ok((
        at(cert.validity().not_before.timestamp()),
        at(cert.validity().not_after.timestamp()),
    ))
}

/// The proxy's current credentials (none until the first certificate).
#[derive(Debug)]
pub struct Identity {
    current: ArcSwapOption<Credentials>,
    metrics: Arc<Metrics>,
}

impl Identity {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            current: ArcSwapOption::empty(),
            metrics,
        }
    }

    pub fn current(&self) -> Option<Arc<Credentials>> {
        self.current.load_full()
    }

    pub fn install(&self, credentials: Credentials) {
        self.current.store(Some(Arc::new(credentials)));
        self.refresh_metrics();
    }

    /// Sets the seconds-until-expiry gauge (called per scrape).
    pub fn refresh_metrics(&self) {
        if let Some(c) = self.current.load().as_ref() {
            let left = match c.not_after.duration_since(SystemTime::now()) {
                Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
            };
            self.metrics
                .cert_expiry
                .get_or_create(&Vec::new())
                .set(left);
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}
