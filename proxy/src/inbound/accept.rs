//! The inbound handshake: per connection, the workload's mTLS mode decides
//! between TLS (STRICT), plaintext (DISABLE), or either as the first byte
//! says (PERMISSIVE: a TLS record starts with 0x16). A STRICT listener
//! drops a plaintext connection, and any connection whose certificate the
//! verifier refuses, before a byte reaches the application.
//!
//! A captured plaintext connection is HTTP or opaque TCP by its first
//! bytes, unless it is to an endpoint whose port a service declares
//! opaque (TCP, MONGO, ...): that one is relayed at once. Under PERMISSIVE
//! a server-first protocol still waits out the detection timeout for a TLS
//! first byte; STRICT or DISABLE avoid that wait.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::policy::MtlsMode;
use crate::discovery::ConfigStore;
use crate::identity::spiffe::identity_of;
use crate::identity::verify::io_failure_reason;
use crate::identity::{Identity, SpiffeId, ALPN_TCP};
use crate::metrics::{Metrics, TcpLabels};
use crate::transport::detect::{detect, Protocol};
use crate::transport::io::MaybeTls;
use crate::transport::listen::Handshake;
use crate::transport::opaque;
use crate::transport::orig_dst::original_dst;

/// Time allowed for the first byte and the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// First byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// What requests know of their connection.
#[derive(Clone, Debug)]
pub struct PeerSecurity {
    /// The client sidecar's verified identity (mTLS), else `None`.
    pub principal: Option<Arc<SpiffeId>>,
    /// The port the client dialled, when iptables redirected the
    /// connection here: the application's port on localhost.
    pub app_port: Option<u16>,
}

impl PeerSecurity {
    /// The `connection_security_policy` label.
    pub fn policy_label(&self) -> &'static str {
        if self.principal.is_some() {
            "mutual_tls"
        } else {
            "none"
        }
    }
}

/// mTLS or plaintext per the workload's PeerAuthentication.
#[derive(Clone, Debug)]
pub struct InboundHandshake {
    pub store: Arc<ConfigStore>,
    pub identity: Option<Arc<Identity>>,
    pub metrics: Arc<Metrics>,
    /// This workload's name (`destination_service` of opaque connections).
    pub service: String,
    pub connect_timeout: Duration,
    pub detection_timeout: Duration,
}

impl InboundHandshake {
    fn fail(&self, peer: SocketAddr, reason: &'static str, detail: &dyn std::fmt::Display) {
        self.metrics.handshake_failure("inbound", reason);
        tracing::debug!(%peer, reason, %detail, "inbound connection refused");
    }

    /// A plaintext connection redirected to `port`: HTTP is served; anything
    /// else, or anything on a port declared opaque, is relayed to the
    /// application's port as opaque TCP.
    async fn plain_captured(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        port: u16,
        opaque: bool,
    ) -> Option<(MaybeTls, PeerSecurity)> {
        if !opaque && detect(&stream, self.detection_timeout).await == Protocol::Http {
            let security = PeerSecurity {
                principal: None,
                app_port: Some(port),
            };
            return Some((MaybeTls::Plain(stream), security));
        }
        self.relay(MaybeTls::Plain(stream), peer, port, None).await;
        None
    }

    /// Opaque bytes between a client (`principal`, when mTLS) and the
    /// application's `port`, if the workload's AuthorizationPolicies allow it.
    async fn relay(
        &self,
        client: MaybeTls,
        peer: SocketAddr,
        port: u16,
        principal: Option<&SpiffeId>,
    ) {
        let labels = TcpLabels {
            direction: "inbound",
            source_workload: String::new(),
            destination_service: self.service.clone(),
            destination_subset: String::new(),
            connection_security_policy: if principal.is_some() {
                "mutual_tls"
            } else {
                "none"
            },
            source_principal: principal.map(ToString::to_string).unwrap_or_default(),
        };
        if let Err(denied) = self.store.load().inbound.authorize_tcp(principal) {
            self.metrics.tcp_denied(&labels);
            tracing::debug!(%peer, ?denied, "inbound opaque connection denied");
            return;
        }
        let app = SocketAddr::from(([127, 0, 0, 1], port));
        match opaque::connect(app, self.connect_timeout).await {
            Ok(upstream) => {
                let labels = self.metrics.tcp_open(labels);
                let (received, sent) = opaque::relay(client, upstream).await;
                self.metrics.tcp_close(&labels, sent, received);
            }
            Err(e) => tracing::debug!(%peer, error = %e, "inbound opaque connection failed"),
        }
    }

    async fn tls(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        app_port: Option<u16>,
    ) -> Option<(MaybeTls, PeerSecurity)> {
        let Some(credentials) = self.identity.as_ref().and_then(|i| i.current()) else {
            self.fail(
                peer,
                "no-local-certificate",
                &"mTLS asked, no certificate yet",
            );
            return None;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(credentials.server.clone());
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Err(_) => {
                self.fail(peer, "timeout", &"TLS handshake timed out");
                return None;
            }
            Ok(Err(e)) => {
                let reason = io_failure_reason(&e);
                self.fail(peer, reason, &e);
                return None;
            }
            Ok(Ok(tls)) => tls,
        };
        // The verifier accepted the chain and the id; read the id back.
        let principal = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|leaf| identity_of(leaf, &credentials.trust_domain).ok())
            .map(Arc::new);
        if principal.is_none() {
            self.fail(peer, "no-client-certificate", &"no peer identity");
            return None;
        }
        if tls.get_ref().1.alpn_protocol() == Some(ALPN_TCP) {
            // Opaque TCP from another sidecar: the bytes go to the port
            // the client dialled.
            let Some(port) = app_port else {
                self.fail(
                    peer,
                    "no-original-destination",
                    &"opaque TCP on a listener without capture",
                );
                return None;
            };
            self.relay(
                MaybeTls::Tls(Box::new(tls.into())),
                peer,
                port,
                principal.as_deref(),
            )
            .await;
            return None;
        }
        let io = MaybeTls::Tls(Box::new(tls.into()));
        Some((
            io,
            PeerSecurity {
                principal,
                app_port,
            },
        ))
    }
}

impl Handshake for InboundHandshake {
    type Io = MaybeTls;
    type Peer = PeerSecurity;

    async fn handshake(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<(Self::Io, Self::Peer)> {
        let original = original_dst(&stream);
        let app_port = original.map(|a| a.port());
        let (mode, opaque) = {
            let table = self.store.load();
            let opaque = original.is_some_and(|a| table.tcp.is_opaque_endpoint(a));
            (table.inbound.mtls, opaque)
        };
        let plain = |stream| async move {
            match app_port {
                Some(port) => self.plain_captured(stream, peer, port, opaque).await,
                None => Some((
                    MaybeTls::Plain(stream),
                    PeerSecurity {
                        principal: None,
                        app_port: None,
                    },
                )),
            }
        };
        if mode == MtlsMode::Disable {
            return plain(stream).await;
        }
        let mut first = [0u8; 1];
        // A captured connection may carry a protocol whose server speaks
        // first: silence past the detection timeout is plaintext.
        let wait = match app_port {
            Some(_) => self.detection_timeout,
            None => HANDSHAKE_TIMEOUT,
        };
        let peeked = tokio::time::timeout(wait, stream.peek(&mut first)).await;
        let is_tls = match peeked {
            Ok(Ok(1)) => first[0] == TLS_HANDSHAKE,
            Ok(Ok(_)) => return None, // closed before a byte
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "inbound connection failed");
                return None;
            }
            Err(_) if app_port.is_some() => false,
            Err(_) => {
                self.fail(peer, "timeout", &"no first byte");
                return None;
            }
        };
        match (mode, is_tls) {
            (_, true) => self.tls(stream, peer, app_port).await,
            (MtlsMode::Permissive, false) => plain(stream).await,
            (_, false) => {
                self.fail(peer, "plaintext", &"plaintext on a STRICT listener");
                None
            }
        }
    }
}
