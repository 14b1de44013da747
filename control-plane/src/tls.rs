//! This replica's TLS: a certificate for
//! `spiffe://<td>/trellis/control-plane/<node-id>`, issued at start from the
//! mesh root the replica is given (`--ca-cert`, `--ca-key`) and kept in
//! memory only, and the configs of its ports built from it: gRPC (Raft and
//! the operator API, the proxy stream and CA), the admin port, and the
//! client side replicas use with each other (presenting the certificate).

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use trellis_api::tls::channel::{self, Identity};

use crate::ca::sign::replica_certificate;
use crate::ca::CaRecord;

/// How long a replica's own certificate is valid (issued again at each start).
const REPLICA_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// The TLS configurations of one replica.
#[derive(Clone, Debug)]
pub struct ReplicaTls {
    /// gRPC ports (ALPN h2); client certificates optional, verified when sent.
    pub grpc: Arc<rustls::ServerConfig>,
    /// The admin port (HTTP/1.1).
    pub admin: Arc<rustls::ServerConfig>,
    /// To other replicas: verifies a replica, presents this one.
    pub peers: Arc<rustls::ClientConfig>,
}

impl ReplicaTls {
    /// Issues this replica's certificate from `root` and builds the configs.
    pub fn issue(root: &CaRecord, node: u64) -> Result<Self, String> {
        let (cert_pem, key_pem) = replica_certificate(root, node, REPLICA_CERT_TTL)
            .map_err(|e| format!("replica certificate: {e}"))?;
        let roots = channel::read_bundle(&root.cert_pem)?;
        let leaf = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| format!("replica certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| format!("replica key: {e}"))?;
        let mut chain = vec![leaf];
        chain.extend(roots.iter().cloned());
        let identity = Identity { chain, key };
        let td = &root.trust_domain;
        Ok(Self {
            grpc: channel::server_config(&roots, td, identity.clone(), &[b"h2"])?,
            admin: channel::server_config(&roots, td, identity.clone(), &[b"http/1.1"])?,
            peers: channel::client_config(&roots, Some(identity))?,
        })
    }
}
