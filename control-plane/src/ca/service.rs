//! The `Identity` gRPC service on the proxy port (`--xds-addr`): checks the
//! caller's bootstrap token against the identity it asks for, then signs
//! its CSR with the root in this replica's applied state. Any replica
//! signs; none needs the leader.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use trellis_api as api;

use super::review::{ReviewError, TokenReviewer};
use super::sign::{sign, SignError};
use super::tokens::Tokens;
use crate::replica::Replica;

/// Workload certificate settings.
#[derive(Clone, Debug)]
pub struct IdentityConfig {
    /// Bootstrap tokens accepted for CSRs (outside Kubernetes).
    pub tokens: Arc<Tokens>,
    /// Service-account tokens checked by TokenReview (`--kubernetes`).
    /// With neither, signing is off.
    pub reviewer: Option<TokenReviewer>,
    /// Lifetime of a workload certificate (24 h by default).
    pub cert_ttl: Duration,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            tokens: Arc::new(Tokens::default()),
            reviewer: None,
            cert_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// Serves `Identity.Sign`.
#[derive(Clone, Debug)]
pub struct IdentityService {
    pub replica: Arc<Replica>,
    pub config: IdentityConfig,
}

impl IdentityService {
    fn refuse(&self, status: Status, node: &str) -> Status {
        self.replica.metrics.certificate_refusals.inc();
        tracing::warn!(node, reason = status.message(), "CSR refused");
        status
    }
}

#[tonic::async_trait]
impl api::identity_server::Identity for IdentityService {
    async fn sign(
        &self,
        request: Request<api::SignRequest>,
    ) -> Result<Response<api::SignReply>, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        let req = request.into_inner();
        let node = req.node.as_str();
        if self.config.tokens.is_empty() && self.config.reviewer.is_none() {
            return Err(self.refuse(
                Status::failed_precondition(
                    "this control plane signs no certificates (start it with --bootstrap-tokens or --kubernetes)",
                ),
                node,
            ));
        }
        let Some(token) = token else {
            return Err(self.refuse(
                Status::unauthenticated("no `authorization: Bearer` credential"),
                node,
            ));
        };
        if !self
            .config
            .tokens
            .allows(&token, &req.namespace, &req.service_account)
        {
            let Some(reviewer) = &self.config.reviewer else {
                return Err(self.refuse(
                    Status::permission_denied(format!(
                        "the credential does not allow {}/{}",
                        req.namespace, req.service_account
                    )),
                    node,
                ));
            };
            match reviewer.review(&token).await {
                Ok((ns, sa)) if ns == req.namespace && sa == req.service_account => {}
                Ok((ns, sa)) => {
                    return Err(self.refuse(
                        Status::permission_denied(format!(
                            "the token is service account {ns}/{sa}'s; it may not ask for {}/{}",
                            req.namespace, req.service_account
                        )),
                        node,
                    ))
                }
                Err(e @ ReviewError::Api(_)) => {
                    return Err(self.refuse(Status::unavailable(e.to_string()), node))
                }
                Err(e) => return Err(self.refuse(Status::unauthenticated(e.to_string()), node)),
            }
        }
        let Some(ca) = self.replica.sm.read(|a| a.state.ca().cloned()) else {
            return Err(Status::unavailable("the root CA is not set up yet"));
        };
        let ttl = self.config.cert_ttl;
        let csr = req.csr_pem.clone();
        let (namespace, sa) = (req.namespace.clone(), req.service_account.clone());
        let ca_for_signing = ca.clone();
        // Signing parses keys and signs: keep it off the runtime threads.
        let signed =
            tokio::task::spawn_blocking(move || sign(&ca_for_signing, &csr, &namespace, &sa, ttl))
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
        match signed {
            Ok(signed) => {
                self.replica.metrics.certificates_signed.inc();
                tracing::info!(node, id = %signed.spiffe_id, ttl = ?ttl, "certificate signed");
                Ok(Response::new(api::SignReply {
                    cert_pem: signed.cert_pem,
                    trust_bundle_pem: ca.cert_pem,
                    trust_domain: ca.trust_domain,
                    spiffe_id: signed.spiffe_id,
                }))
            }
            Err(e @ (SignError::Csr(_) | SignError::Identity(_))) => {
                Err(self.refuse(Status::invalid_argument(e.to_string()), node))
            }
            Err(e @ SignError::Ca(_)) => Err(Status::internal(e.to_string())),
        }
    }
}
