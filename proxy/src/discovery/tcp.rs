//! Captured opaque TCP as the proxy runs it: the service behind each
//! address and port the application may dial, the clusters its `tcp`
//! route splits connections between (the first route whose source
//! conditions hold for this sidecar), and the endpoints whose port is
//! declared opaque, which the inbound side relays without detection.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use trellis_api as api;

use super::cluster::Cluster;
use super::error::ModelError;
use crate::config::NodeConfig;

/// Where opaque TCP to one service address and port goes.
#[derive(Debug)]
pub struct TcpService {
    pub service: String,
    /// Declared opaque: carried as bytes at once, without detection.
    pub opaque: bool,
    pub destinations: Vec<(Arc<Cluster>, u32)>,
    total_weight: u32,
}

impl TcpService {
    /// A cluster by weight.
    pub fn pick(&self) -> Option<&Arc<Cluster>> {
        if self.total_weight == 0 {
            return self.destinations.first().map(|(c, _)| c);
        }
        let mut roll = fastrand::u32(0..self.total_weight);
        for (cluster, weight) in &self.destinations {
            if roll < *weight {
                return Some(cluster);
            }
            roll -= weight;
        }
        self.destinations.last().map(|(c, _)| c)
    }
}

/// Every captured TCP destination of the mesh.
#[derive(Debug, Default)]
pub struct TcpTable {
    by_addr: HashMap<SocketAddr, Arc<TcpService>>,
    /// Endpoints (`ip:port`) of services whose port is declared opaque.
    opaque_endpoints: HashSet<SocketAddr>,
}

impl TcpTable {
    /// Builds the table for the sidecar `node`; a reference to a cluster
    /// the config lacks, or an address that is no IP, is an error.
    pub fn build(
        config: &api::ProxyConfig,
        clusters: &HashMap<&str, Arc<Cluster>>,
        node: &NodeConfig,
        errors: &mut Vec<ModelError>,
    ) -> Self {
        let mut table = Self::default();
        for t in &config.tcp_services {
            let chosen = t
                .routes
                .iter()
                .find(|r| applies(r, node))
                .map_or(&t.destinations, |r| &r.destinations);
            let mut destinations = Vec::new();
            for d in chosen {
                match clusters.get(d.cluster.as_str()) {
                    Some(c) => destinations.push((c.clone(), d.weight)),
                    None => errors.push(ModelError::UnknownCluster {
                        route: format!("tcp {}:{}", t.service, t.port),
                        cluster: d.cluster.clone(),
                    }),
                }
            }
            if t.opaque {
                let endpoints = destinations.iter().flat_map(|(c, _)| &c.endpoints);
                table.opaque_endpoints.extend(
                    endpoints.filter_map(|e| e.authority.as_str().parse::<SocketAddr>().ok()),
                );
            }
            let total_weight = destinations.iter().map(|(_, w)| *w).sum();
            let service = Arc::new(TcpService {
                service: t.service.clone(),
                opaque: t.opaque,
                destinations,
                total_weight,
            });
            for address in &t.addresses {
                let Ok(ip) = address.parse::<IpAddr>() else {
                    errors.push(ModelError::BadAddress {
                        service: t.service.clone(),
                        address: address.clone(),
                    });
                    continue;
                };
                let port = u16::try_from(t.port).unwrap_or(0);
                table
                    .by_addr
                    .insert(SocketAddr::new(ip, port), service.clone());
            }
        }
        table
    }

    /// The service captured opaque TCP to `addr` is for.
    pub fn service(&self, addr: SocketAddr) -> Option<&Arc<TcpService>> {
        self.by_addr.get(&addr)
    }

    /// `addr` is an endpoint of a port declared opaque (TCP, MONGO, ...).
    pub fn is_opaque_endpoint(&self, addr: SocketAddr) -> bool {
        self.opaque_endpoints.contains(&addr)
    }
}

/// The route's `sourceLabels` and `sourceNamespace` hold for `node`.
fn applies(route: &api::TcpRoute, node: &NodeConfig) -> bool {
    route
        .source_labels
        .iter()
        .all(|(k, v)| node.labels.get(k) == Some(v))
        && (route.source_namespace.is_empty() || route.source_namespace == node.namespace)
}

#[cfg(test)]
mod tests;
