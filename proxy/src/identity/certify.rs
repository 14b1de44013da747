//! Obtaining and renewing the workload certificate: a fresh key in memory,
//! a CSR sent to a control-plane replica (`Identity.Sign`, the bootstrap
//! token as `authorization: Bearer`), the reply installed; again at half
//! of the certificate's life. A failed attempt moves to the next replica
//! and retries with backoff while the current certificate still serves.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair};
use tokio::sync::watch;
use tonic::transport::Endpoint;
use trellis_api as api;
use trellis_api::tls::channel::{describe, Connector};

use super::{Credentials, Identity};
use crate::config::Credential;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Who to ask for a certificate, and as whom.
#[derive(Clone, Debug)]
pub struct Certifier {
    /// Control-plane replicas (`--control-plane`).
    pub urls: Vec<String>,
    /// TLS that verifies the replica (`--trust-bundle`).
    pub tls: Arc<rustls::ClientConfig>,
    /// The bootstrap or service-account token.
    pub token: Credential,
    pub namespace: String,
    pub service_account: String,
    /// This proxy, for the control plane's logs.
    pub node: String,
    pub identity: Arc<Identity>,
}

impl Certifier {
    /// Keeps a valid certificate installed until `shutdown`.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut replica = 0usize;
        let mut backoff = Duration::from_millis(100);
        loop {
            let wait = match self.obtain(&mut replica).await {
                Ok(credentials) => {
                    let renew_in = credentials
                        .renew_at()
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    tracing::info!(
                        id = %credentials.id,
                        renew_in = ?renew_in,
                        "workload certificate installed"
                    );
                    self.identity.install(credentials);
                    self.identity.metrics().renewal(true);
                    backoff = Duration::from_millis(100);
                    renew_in
                }
                Err(e) => {
                    self.identity.metrics().renewal(false);
                    tracing::warn!(error = %e, retry_in = ?backoff, "no workload certificate");
                    let wait = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// One attempt on each replica, starting at `replica`, until one signs.
    async fn obtain(&self, replica: &mut usize) -> Result<Credentials, String> {
        let key = KeyPair::generate().map_err(|e| format!("key: {e}"))?;
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .map_err(|e| format!("CSR: {e}"))?;
        let mut errors = Vec::new();
        for _ in 0..self.urls.len().max(1) {
            let Some(url) = self.urls.get(*replica % self.urls.len().max(1)) else {
                return Err("no control plane to ask".into());
            };
            match self.sign(url, &csr).await {
                Ok(reply) => {
                    return Credentials::new(
                        &reply.cert_pem,
                        key.serialize_der(),
                        &reply.trust_bundle_pem,
                        &reply.trust_domain,
                    )
                }
                Err(e) => errors.push(format!("{url}: {e}")),
            }
            *replica += 1;
        }
        Err(errors.join("; "))
    }

    async fn sign(&self, url: &str, csr: &str) -> Result<api::SignReply, String> {
        let channel = Endpoint::from_shared(url.to_string())
            .map_err(|e| e.to_string())?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .connect_with_connector(Connector::new(self.tls.clone()))
            .await
            .map_err(|e| format!("connect: {}", describe(&e)))?;
        let mut request = tonic::Request::new(api::SignRequest {
            csr_pem: csr.to_string(),
            namespace: self.namespace.clone(),
            service_account: self.service_account.clone(),
            node: self.node.clone(),
        });
        let bearer = format!("Bearer {}", self.token.read()?)
            .parse()
            .map_err(|_| "the token is not a valid header value".to_string())?;
        request.metadata_mut().insert("authorization", bearer);
        api::identity_client::IdentityClient::new(channel)
            .sign(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    }
}
