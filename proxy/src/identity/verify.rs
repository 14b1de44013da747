//! Certificate verification between sidecars (rustls verifiers): the peer's
//! chain must lead to the mesh's roots (rustls-webpki), its leaf must not be
//! a CA, and it must name exactly one SPIFFE id in the mesh's trust domain.
//! Which id may serve a given endpoint is checked after the handshake, by
//! the connection pool.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};

use super::spiffe::{identity_of, IdentityError};

/// Verifies peers (either side) against the mesh's roots and trust domain.
#[derive(Debug)]
pub struct PeerVerifier {
    roots: Vec<TrustAnchor<'static>>,
    subjects: Vec<DistinguishedName>,
    trust_domain: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PeerVerifier {
    pub fn new(roots: &[CertificateDer<'static>], trust_domain: &str) -> Result<Self, String> {
        let mut anchors = Vec::new();
        let mut subjects = Vec::new();
        for der in roots {
            let anchor = webpki::anchor_from_trusted_cert(der)
                .map_err(|e| format!("trust bundle: {e}"))?
                .to_owned();
            subjects.push(DistinguishedName::from(anchor.subject.as_ref().to_vec()));
            anchors.push(anchor);
        }
        if anchors.is_empty() {
            return Err("trust bundle: no certificate".into());
        }
        Ok(Self {
            roots: anchors,
            subjects,
            trust_domain: trust_domain.to_string(),
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        })
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<(), rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(chain_error)?;
        cert.verify_for_usage(
            self.algorithms.all,
            &self.roots,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(chain_error)?;
        identity_of(end_entity, &self.trust_domain).map_err(identity_error)?;
        Ok(())
    }
}

fn chain_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    let cert_error = match e {
        E::CertExpired { time, not_after } => CertificateError::ExpiredContext { time, not_after },
        E::CertNotValidYet { time, not_before } => {
            CertificateError::NotValidYetContext { time, not_before }
        }
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        E::CaUsedAsEndEntity => identity_cert_error(IdentityError::CaAsLeaf),
        E::BadDer | E::BadDerTime | E::TrailingData(_) => CertificateError::BadEncoding,
        other => CertificateError::Other(OtherError(Arc::new(ChainError(other.to_string())))),
    };
    rustls::Error::InvalidCertificate(cert_error)
}

fn identity_cert_error(e: IdentityError) -> CertificateError {
    CertificateError::Other(OtherError(Arc::new(e)))
}

fn identity_error(e: IdentityError) -> rustls::Error {
    rustls::Error::InvalidCertificate(identity_cert_error(e))
}

/// A chain problem webpki names but rustls has no variant for.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ChainError(String);

/// Why a handshake failed, as a metric label.
pub fn failure_reason(e: &rustls::Error) -> &'static str {
    match e {
        rustls::Error::NoCertificatesPresented => "no-client-certificate",
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not-yet-valid"
            }
            CertificateError::UnknownIssuer => "unknown-ca",
            CertificateError::BadSignature => "bad-signature",
            CertificateError::Other(OtherError(inner)) => {
                match inner.downcast_ref::<IdentityError>() {
                    Some(IdentityError::CaAsLeaf) => "ca-as-leaf",
                    Some(IdentityError::UriSanCount(_)) => "uri-san-count",
                    Some(IdentityError::ForeignTrustDomain { .. }) => "foreign-trust-domain",
                    Some(_) => "bad-identity",
                    None => "bad-certificate",
                }
            }
            _ => "bad-certificate",
        },
        rustls::Error::AlertReceived(_) => "alert-received",
        rustls::Error::NoApplicationProtocol => "no-alpn",
        rustls::Error::PeerIncompatible(_) => "incompatible",
        _ => "other",
    }
}

/// Why a handshake failed, from the I/O error tokio-rustls returns.
pub fn io_failure_reason(e: &std::io::Error) -> &'static str {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map_or("io", failure_reason)
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.subjects
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Sidecars are named by SPIFFE id, not DNS: the pool checks the id.
        self.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
