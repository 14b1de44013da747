//! The outbound listener's handshake. A connection iptables redirected
//! (it has an original destination) is classified by its first bytes:
//! HTTP is served and routed by `Host` as any other (a request for a host
//! the mesh does not know goes to the original destination: ALLOW_ANY, or
//! is refused: REGISTRY_ONLY); anything else is opaque TCP: to the
//! service whose address and port were dialled (a cluster by the `tcp`
//! route's weights, an endpoint of it, over mTLS when it has a sidecar),
//! else passed through to the original destination or refused the same
//! way. A connection made to the listener itself is HTTP, as before capture.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::discovery::ConfigStore;
use crate::metrics::{Metrics, TcpLabels};
use crate::transport::detect::{detect, Protocol};
use crate::transport::listen::{Handshake, PeerAddr};
use crate::transport::opaque;
use crate::transport::orig_dst::original_dst;
use crate::transport::pool::{EndpointPool, PoolConfig};

/// The `destination_service` of traffic outside the mesh (Istio's name).
pub const PASSTHROUGH: &str = "PassthroughCluster";

/// Where a captured HTTP connection was going, and a connection pool to
/// it for requests the mesh has no route for.
#[derive(Clone, Debug)]
pub struct OriginalDst {
    pub addr: SocketAddr,
    pub pool: Arc<EndpointPool>,
    /// REGISTRY_ONLY: requests for unknown hosts are refused.
    pub registry_only: bool,
}

/// What requests know of their outbound connection.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub peer: PeerAddr,
    pub original: Option<OriginalDst>,
}

/// Detects and splits captured connections.
#[derive(Clone, Debug)]
pub struct CaptureHandshake {
    pub store: Arc<ConfigStore>,
    /// This workload (the `source_workload` label).
    pub source_workload: String,
    pub detection_timeout: Duration,
    pub connect_timeout: Duration,
    pub registry_only: bool,
    pub metrics: Arc<Metrics>,
}

impl CaptureHandshake {
    /// Opaque TCP to `target`: a service of the mesh, else outside it.
    async fn opaque(&self, client: TcpStream, peer: SocketAddr, target: SocketAddr) {
        let table = self.store.load();
        let Some(service) = table.tcp.service(target).cloned() else {
            drop(table);
            return self.passthrough(client, peer, target).await;
        };
        drop(table);
        let Some(cluster) = service.pick() else {
            return;
        };
        // `maxConnections`: over it the connection is closed (overflow).
        let _place = match cluster.tcp_connections.as_ref().map(|l| l.try_open()) {
            Some(None) => {
                self.metrics.overflow(&cluster.service, &cluster.subset);
                tracing::debug!(%peer, service = %service.service, "opaque connection over maxConnections");
                return;
            }
            Some(Some(place)) => Some(place),
            None => None,
        };
        // Any endpoint not ejected by outlier detection, at random.
        let now = tokio::time::Instant::now();
        let healthy: Vec<_> = cluster
            .endpoints
            .iter()
            .filter(|e| e.health.available(now))
            .collect();
        let Some(endpoint) =
            (!healthy.is_empty()).then(|| healthy[fastrand::usize(..healthy.len())])
        else {
            tracing::debug!(%peer, service = %service.service, "no endpoint for opaque connection");
            return;
        };
        let upstream = match endpoint.pool.open_opaque().await {
            Ok(upstream) => upstream,
            Err(e) => {
                tracing::debug!(%peer, service = %service.service, error = %e, "opaque connection failed");
                return;
            }
        };
        let labels = self.metrics.tcp_open(TcpLabels {
            direction: "outbound",
            source_workload: self.source_workload.clone(),
            destination_service: service.service.clone(),
            destination_subset: cluster.subset.clone(),
            connection_security_policy: if endpoint.pool.config.mtls.is_some() {
                "mutual_tls"
            } else {
                "none"
            },
            source_principal: String::new(),
        });
        let (sent, received) = opaque::relay(client, upstream).await;
        self.metrics.tcp_close(&labels, sent, received);
    }

    /// REGISTRY_ONLY: by this proxy's flag or the mesh's setting.
    fn registry_only(&self) -> bool {
        self.registry_only || self.store.load().registry_only
    }

    /// Opaque TCP to `target`, a destination outside the mesh.
    async fn passthrough(&self, client: TcpStream, peer: SocketAddr, target: SocketAddr) {
        if self.registry_only() {
            self.metrics.passthrough("tcp", "refused");
            tracing::debug!(%peer, %target, "opaque connection outside the mesh refused (REGISTRY_ONLY)");
            return;
        }
        self.metrics.passthrough("tcp", "allowed");
        let upstream = match opaque::connect(target, self.connect_timeout).await {
            Ok(upstream) => upstream,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "opaque connection failed");
                return;
            }
        };
        let labels = self.metrics.tcp_open(TcpLabels {
            direction: "outbound",
            source_workload: self.source_workload.clone(),
            destination_service: PASSTHROUGH.to_string(),
            destination_subset: String::new(),
            connection_security_policy: "none",
            source_principal: String::new(),
        });
        let (sent, received) = opaque::relay(client, upstream).await;
        self.metrics.tcp_close(&labels, sent, received);
    }
}

impl Handshake for CaptureHandshake {
    type Io = TcpStream;
    type Peer = Accepted;

    async fn handshake(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<(Self::Io, Self::Peer)> {
        let Some(addr) = original_dst(&stream) else {
            let accepted = Accepted {
                peer: PeerAddr(peer),
                original: None,
            };
            return Some((stream, accepted));
        };
        let declared_opaque = self
            .store
            .load()
            .tcp
            .service(addr)
            .is_some_and(|s| s.opaque);
        let protocol = if declared_opaque {
            Protocol::Opaque
        } else {
            detect(&stream, self.detection_timeout).await
        };
        match protocol {
            Protocol::Opaque => {
                self.opaque(stream, peer, addr).await;
                None
            }
            Protocol::Http => {
                let config = PoolConfig {
                    http2: false,
                    connect_timeout: self.connect_timeout,
                    max_requests_per_connection: 0,
                    mtls: None,
                };
                let original = OriginalDst {
                    addr,
                    pool: Arc::new(EndpointPool::new(&addr.to_string(), config, None)),
                    registry_only: self.registry_only(),
                };
                let accepted = Accepted {
                    peer: PeerAddr(peer),
                    original: Some(original),
                };
                Some((stream, accepted))
            }
        }
    }

    fn extend(peer: &Self::Peer, extensions: &mut http::Extensions) {
        extensions.insert(peer.peer);
        if let Some(original) = &peer.original {
            extensions.insert(original.clone());
        }
    }
}
