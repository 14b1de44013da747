//! Certificate verification (rustls verifiers) between sidecars and on the
//! control plane's ports: the peer's chain must lead to the mesh's roots
//! (rustls-webpki), its leaf must not be a CA, and it must name exactly one
//! SPIFFE id: in the mesh's trust domain (sidecars, callers of the control
//! plane) or a replica's (`spiffe://<td>/trellis/control-plane/<id>`, what
//! clients of the control plane expect). Which id may serve a given
//! endpoint is checked after the handshake, by the connection pool.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};

use super::spiffe::{control_plane_node, identity_of, spiffe_id_of, IdentityError};

/// The identity a peer's certificate must name.
#[derive(Clone, Debug)]
enum Expect {
    /// Any SPIFFE id of this trust domain.
    TrustDomain(String),
    /// A control-plane replica's id (in the trust domain of the roots).
    ControlPlane,
}

/// Verifies peers (either side) against the mesh's roots and trust domain.
#[derive(Debug)]
pub struct PeerVerifier {
    roots: Vec<TrustAnchor<'static>>,
    subjects: Vec<DistinguishedName>,
    expect: Expect,
    /// As a server: whether a client must present a certificate.
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PeerVerifier {
    /// Peers with any id of `trust_domain`; a client certificate is required.
    pub fn new(roots: &[CertificateDer<'static>], trust_domain: &str) -> Result<Self, String> {
        Self::expecting(roots, Expect::TrustDomain(trust_domain.to_string()))
    }

    /// Servers that are control-plane replicas.
    pub fn control_plane(roots: &[CertificateDer<'static>]) -> Result<Self, String> {
        Self::expecting(roots, Expect::ControlPlane)
    }

    /// As a server: a client may also connect without a certificate (it
    /// authenticates otherwise); one it presents is verified all the same.
    #[must_use]
    pub fn optional(mut self) -> Self {
        self.mandatory = false;
        self
    }

    fn expecting(roots: &[CertificateDer<'static>], expect: Expect) -> Result<Self, String> {
        let mut anchors = Vec::new();
        let mut subjects = Vec::new();
        for der in roots {
            let anchor = webpki::anchor_from_trusted_cert(der)
                .map_err(|e| format!("trust bundle: {e}"))?
                .to_owned();
            // The subject as a whole DER Name (a SEQUENCE), as OpenSSL
            // parses the certificate_authorities a server sends.
            subjects.push(DistinguishedName::in_sequence(anchor.subject.as_ref()));
            anchors.push(anchor);
        }
        if anchors.is_empty() {
            return Err("trust bundle: no certificate".into());
        }
        Ok(Self {
            roots: anchors,
            subjects,
            expect,
            mandatory: true,
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
        match &self.expect {
            Expect::TrustDomain(td) => {
                identity_of(end_entity, td).map_err(identity_error)?;
            }
            Expect::ControlPlane => {
                let id = spiffe_id_of(end_entity).map_err(identity_error)?;
                if control_plane_node(&id).is_none() {
                    return Err(identity_error(IdentityError::NotControlPlane(
                        id.to_string(),
                    )));
                }
            }
        }
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

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
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
