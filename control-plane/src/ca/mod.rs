//! The mesh's certificate authority: a root certificate and key every
//! replica is given as files (`--ca-cert`, `--ca-key`: the Secret Helm
//! mounts, or what `trellisctl pki init` wrote), which also sign the
//! replicas' own TLS certificates ([`sign::replica_certificate`]). The
//! leader keeps the root in the replicated state, where the trust bundle
//! proxies receive comes from; `trellisctl trust-bundle` prints it.
//!
//! Proxies' CSRs are signed by [`service::IdentityService`] ([`sign`]),
//! authenticated by [`tokens`].

pub mod review;
pub mod service;
pub mod sign;
pub mod tokens;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use tokio::sync::watch;

use crate::replica::{Replica, WriteError};
use crate::state::MeshCommand;

pub use crate::state::CaRecord;

/// A new self-signed root for `trust_domain`, valid ten years.
pub fn generate_root(trust_domain: &str) -> Result<CaRecord, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(
        DnType::CommonName,
        format!("Trellis root CA ({trust_domain})"),
    );
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Trellis");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let year = current_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(CaRecord {
        trust_domain: trust_domain.to_string(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn current_year() -> i32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    1970 + i32::try_from(secs / 31_556_952).unwrap_or(0)
}

/// A root given as files: the key must parse and the certificate must be PEM.
pub fn load_root(cert: &Path, key: &Path, trust_domain: &str) -> Result<CaRecord, String> {
    if let Ok(meta) = std::fs::metadata(key) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                key = %key.display(),
                "the CA key file is readable by other users (chmod 600 it)"
            );
        }
    }
    let cert_pem =
        std::fs::read_to_string(cert).map_err(|e| format!("--ca-cert {}: {e}", cert.display()))?;
    let key_pem =
        std::fs::read_to_string(key).map_err(|e| format!("--ca-key {}: {e}", key.display()))?;
    if !cert_pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "--ca-cert {}: not a PEM certificate",
            cert.display()
        ));
    }
    let key_pem = pkcs8_pem(&key_pem).map_err(|e| format!("--ca-key {}: {e}", key.display()))?;
    Ok(CaRecord {
        trust_domain: trust_domain.to_string(),
        cert_pem,
        key_pem,
    })
}

/// A private key as PKCS#8 PEM, what the signer takes: PKCS#8 as it is, a
/// PKCS#1 RSA key (`RSA PRIVATE KEY`, what Helm's `genCA` and older
/// OpenSSL write) wrapped into PKCS#8.
pub fn pkcs8_pem(pem: &str) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| e.to_string())?;
    let pkcs8 = match key {
        PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
        PrivateKeyDer::Pkcs1(k) => rsa_pkcs1_to_pkcs8(k.secret_pkcs1_der()),
        _ => {
            return Err("an EC key in SEC1 form; convert it: openssl pkcs8 -topk8 -nocrypt".into())
        }
    };
    KeyPair::try_from(&PrivatePkcs8KeyDer::from(pkcs8))
        .map(|k| k.serialize_pem())
        .map_err(|e| e.to_string())
}

/// PKCS#8 `PrivateKeyInfo` around a PKCS#1 RSA key (RFC 5208): version 0,
/// algorithm rsaEncryption with NULL parameters, the key as an OCTET STRING.
fn rsa_pkcs1_to_pkcs8(pkcs1: &[u8]) -> Vec<u8> {
    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = body.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend_from_slice(body);
        out
    }
    const RSA_ENCRYPTION: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend(tlv(0x30, RSA_ENCRYPTION));
    body.extend(tlv(0x04, pkcs1));
    tlv(0x30, &body)
}

/// On the leader: makes sure the replicated state holds `root` (the mesh
/// root every replica is given as files, `--ca-cert` and `--ca-key`).
/// Runs until `shutdown`.
pub async fn run(replica: Arc<Replica>, root: CaRecord, mut shutdown: watch::Receiver<bool>) {
    // Woken when leadership changes (Raft's metrics, not polled); a
    // proposal that found no quorum is tried again after a pause.
    let mut changes = replica.raft.metrics();
    loop {
        let acted_on = leadership(&changes.borrow());
        let mut retry = false;
        if replica.is_leader() && replica.linearize().await.is_ok() {
            let current = replica.sm.read(|a| a.state.ca().cloned());
            let wanted = (current.as_ref() != Some(&root)).then(|| root.clone());
            if let Some(ca) = wanted {
                match replica.propose(MeshCommand::SetCa { ca }).await {
                    Ok((index, _)) => {
                        tracing::info!(index, "root CA stored in the replicated state")
                    }
                    Err(WriteError::Invalid(e)) => tracing::error!(errors = ?e, "root CA refused"),
                    Err(WriteError::Unavailable(e)) => {
                        tracing::debug!(error = %e, "root CA not stored yet");
                        retry = true;
                    }
                }
            }
        }
        let pause = async {
            if retry {
                tokio::time::sleep(RETRY_PAUSE).await;
            } else if changes
                .wait_for(|m| leadership(m) != acted_on)
                .await
                .is_err()
            {
                std::future::pending::<()>().await; // Raft is gone: wait for shutdown
            }
        };
        tokio::select! {
            _ = pause => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Who leads in which term: what the root's keeper acts on.
fn leadership(
    m: &openraft::RaftMetrics<crate::raft::NodeId, openraft::BasicNode>,
) -> (Option<u64>, u64) {
    (m.current_leader, m.current_term)
}

/// How long a proposal of the root that found no quorum waits to try again.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_root_is_a_ca_with_a_usable_key() {
        let root = generate_root("cluster.local").expect("generates");
        assert!(root.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(KeyPair::from_pem(&root.key_pem).is_ok());
        let other = generate_root("cluster.local").expect("generates");
        assert_ne!(root.key_pem, other.key_pem, "a fresh key each time");
    }

    #[test]
    fn a_pkcs1_rsa_key_is_taken_as_pkcs8() {
        // What Helm's genCA writes: PKCS#1 (`RSA PRIVATE KEY`), 2048 bits
        // (a throwaway key made for this test with `openssl genrsa -traditional`).
        let pem = include_str!("testdata/rsa-pkcs1.pem");
        let converted = pkcs8_pem(pem).expect("converts");
        assert!(converted.starts_with("-----BEGIN PRIVATE KEY-----"));
        let key = KeyPair::from_pem(&converted).expect("a usable key");
        assert!(key.is_compatible(&rcgen::PKCS_RSA_SHA256));
        assert!(pkcs8_pem("not a key").is_err());
    }
}
