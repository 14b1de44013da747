//! Signing a workload's CSR: the certificate carries exactly one URI SAN,
//! the SPIFFE id the caller's credential allows, whatever the CSR asked
//! for; only the CSR's public key (and its proof of possession) is used.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::CaRecord;

/// Why a CSR was not signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("invalid CSR: {0}")]
    Csr(rcgen::Error),
    #[error("invalid identity: {0}")]
    Identity(String),
    #[error("the CA cannot sign: {0}")]
    Ca(rcgen::Error),
}

/// A signed workload certificate.
#[derive(Clone, Debug)]
pub struct Signed {
    pub cert_pem: String,
    pub spiffe_id: String,
}

/// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, with each
/// part checked to be a DNS-label-like name.
pub fn spiffe_id(trust_domain: &str, namespace: &str, sa: &str) -> Result<String, SignError> {
    for (what, value) in [("namespace", namespace), ("service account", sa)] {
        let ok = !value.is_empty()
            && value.len() <= 253
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !ok {
            return Err(SignError::Identity(format!(
                "{what} {value:?} is not a Kubernetes name"
            )));
        }
    }
    Ok(format!("spiffe://{trust_domain}/ns/{namespace}/sa/{sa}"))
}

/// Signs `csr_pem` for `namespace`/`sa`, valid `ttl` from now.
pub fn sign(
    ca: &CaRecord,
    csr_pem: &str,
    namespace: &str,
    sa: &str,
    ttl: Duration,
) -> Result<Signed, SignError> {
    let id = spiffe_id(&ca.trust_domain, namespace, sa)?;
    let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(SignError::Csr)?;
    let cert = leaf_params(spiffe_san(&id)?, ttl)
        .signed_by(&csr.public_key, &issuer(ca)?)
        .map_err(SignError::Ca)?;
    Ok(Signed {
        cert_pem: cert.pem(),
        spiffe_id: id,
    })
}

/// A certificate and key for control-plane replica `node`
/// (`spiffe://<td>/trellis/control-plane/<node>`), valid `ttl`: what the
/// replica presents on its ports and to its peers. PEM (cert, key).
pub fn replica_certificate(
    ca: &CaRecord,
    node: u64,
    ttl: Duration,
) -> Result<(String, String), SignError> {
    let id = trellis_api::tls::channel::control_plane_id(&ca.trust_domain, node);
    let key = KeyPair::generate().map_err(SignError::Ca)?;
    let cert = leaf_params(spiffe_san(&id)?, ttl)
        .signed_by(&key, &issuer(ca)?)
        .map_err(SignError::Ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A serving certificate for DNS `names` (the injection webhook, which the
/// apiserver reaches by Service name and checks against the mesh root).
/// PEM (cert, key).
pub fn serving_certificate(
    ca: &CaRecord,
    names: &[String],
    ttl: Duration,
) -> Result<(String, String), SignError> {
    let key = KeyPair::generate().map_err(SignError::Ca)?;
    let sans = names
        .iter()
        .map(|n| {
            n.clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|e: rcgen::Error| SignError::Identity(format!("{n}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let mut params = leaf_params(sans, ttl);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .signed_by(&key, &issuer(ca)?)
        .map_err(SignError::Ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn issuer(ca: &CaRecord) -> Result<Issuer<'static, KeyPair>, SignError> {
    let key = KeyPair::from_pem(&ca.key_pem).map_err(SignError::Ca)?;
    Issuer::from_ca_cert_pem(&ca.cert_pem, key).map_err(SignError::Ca)
}

/// The one URI SAN of a SPIFFE id.
fn spiffe_san(id: &str) -> Result<Vec<SanType>, SignError> {
    let uri = id
        .to_string()
        .try_into()
        .map_err(|e: rcgen::Error| SignError::Identity(e.to_string()))?;
    Ok(vec![SanType::URI(uri)])
}

/// A leaf for `sans`, server and client use, valid `ttl` from now (one
/// minute earlier, for clocks slightly behind).
fn leaf_params(sans: Vec<SanType>, ttl: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Trellis");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + now.saturating_sub(Duration::from_secs(60));
    params.not_after = epoch + now + ttl;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial(now).to_be_bytes()));
    params.use_authority_key_identifier_extension = true;
    params
}

/// A positive 63-bit serial: time and randomness, unique in practice.
fn serial(now: Duration) -> u64 {
    let random = u64::from_ne_bytes(ring_random());
    (now.as_nanos() as u64 ^ random) & (u64::MAX >> 1) | 1
}

fn ring_random() -> [u8; 8] {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    // The system RNG failing leaves a time-only serial, still unique here.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::generate_root;

    fn csr(sans: Vec<String>) -> String {
        let key = KeyPair::generate().expect("key");
        CertificateParams::new(sans)
            .expect("params")
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem")
    }

    #[test]
    fn signs_one_spiffe_id_whatever_the_csr_asks() {
        let root = generate_root("example.org").expect("root");
        let signed = sign(
            &root,
            &csr(vec!["evil.example.com".into()]),
            "shop",
            "reviews",
            Duration::from_secs(3600),
        )
        .expect("signed");
        assert_eq!(signed.spiffe_id, "spiffe://example.org/ns/shop/sa/reviews");
        let der = pem_to_der(&signed.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parses");
        let sans = cert
            .subject_alternative_name()
            .expect("ext ok")
            .expect("has SAN");
        assert_eq!(sans.value.general_names.len(), 1, "exactly one SAN");
        assert!(matches!(
            sans.value.general_names[0],
            x509_parser::extensions::GeneralName::URI("spiffe://example.org/ns/shop/sa/reviews")
        ));
        assert!(!cert.is_ca());
        let lifetime =
            cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(lifetime, 3600 + 60);
    }

    #[test]
    fn refuses_bad_input() {
        let root = generate_root("example.org").expect("root");
        let ttl = Duration::from_secs(60);
        assert!(matches!(
            sign(&root, "not a csr", "shop", "reviews", ttl),
            Err(SignError::Csr(_))
        ));
        assert!(matches!(
            sign(&root, &csr(vec![]), "shop/../x", "reviews", ttl),
            Err(SignError::Identity(_))
        ));
        assert!(matches!(
            sign(&root, &csr(vec![]), "shop", "", ttl),
            Err(SignError::Identity(_))
        ));
    }

    fn pem_to_der(pem: &str) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .expect("pem")
            .1
            .contents
    }
}
