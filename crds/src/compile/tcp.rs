//! Opaque TCP services: one entry per address-bearing service and port,
//! its destinations from the VirtualService `tcp` routes of the host whose
//! match selects the port (conditional on the source's labels or
//! namespace, or for every source), else the service's own cluster.

use trellis_api as api;

use super::{policy, Compiler};
use crate::host::qualify;
use crate::load::RuleSet;
use crate::types::{L4MatchAttributes, TcpRoute};

impl Compiler<'_> {
    pub(super) fn tcp_services(&mut self, rules: &RuleSet) -> Vec<api::TcpService> {
        let mut out = Vec::new();
        for service in self.endpoints.services.values() {
            if service.addresses.is_empty() {
                continue;
            }
            let routes: Vec<(&TcpRoute, &str)> = rules
                .virtual_services
                .iter()
                .filter(|vs| {
                    vs.spec
                        .hosts
                        .iter()
                        .any(|h| qualify(h, vs.namespace()) == service.host)
                })
                .flat_map(|vs| vs.spec.tcp.iter().map(move |r| (r, vs.namespace())))
                .collect();
            for port in &service.ports {
                let (routes, unconditional) = self.tcp_routes(&routes, port.number);
                let destinations = unconditional.unwrap_or_else(|| {
                    vec![api::WeightedCluster {
                        cluster: self.cluster(&service.host, "", Some(port.number)),
                        weight: 100,
                        ..Default::default()
                    }]
                });
                out.push(api::TcpService {
                    service: service.host.clone(),
                    addresses: service.addresses.clone(),
                    port: port.number,
                    destinations,
                    opaque: policy::protocol(&port.protocol) == api::Protocol::Tcp,
                    routes,
                });
            }
        }
        out
    }

    /// The `tcp` routes that select `port`, in order: those conditional on
    /// the source until the first that holds for every source (whose
    /// destinations are the second value).
    fn tcp_routes(
        &mut self,
        routes: &[(&TcpRoute, &str)],
        port: u32,
    ) -> (Vec<api::TcpRoute>, Option<Vec<api::WeightedCluster>>) {
        let mut conditional = Vec::new();
        for (route, ns) in routes {
            let entries: Vec<Option<&L4MatchAttributes>> = if route.matches.is_empty() {
                vec![None]
            } else {
                route
                    .matches
                    .iter()
                    .filter(|m| m.port.is_none_or(|p| p == port))
                    .map(Some)
                    .collect()
            };
            for entry in entries {
                let destinations = self.tcp_destinations(route, ns, port);
                match entry.filter(|m| !m.source_labels.is_empty() || m.source_namespace.is_some())
                {
                    Some(m) => conditional.push(api::TcpRoute {
                        source_labels: m.source_labels.clone().into_iter().collect(),
                        source_namespace: m.source_namespace.clone().unwrap_or_default(),
                        destinations,
                    }),
                    None => return (conditional, Some(destinations)),
                }
            }
        }
        (conditional, None)
    }

    fn tcp_destinations(
        &mut self,
        route: &TcpRoute,
        ns: &str,
        port: u32,
    ) -> Vec<api::WeightedCluster> {
        let single = route.route.len() == 1;
        route
            .route
            .iter()
            .map(|d| api::WeightedCluster {
                cluster: self.cluster(
                    &qualify(&d.destination.host, ns),
                    d.destination.subset.as_deref().unwrap_or(""),
                    Some(d.destination.port.as_ref().map_or(port, |p| p.number)),
                ),
                weight: match d.weight {
                    Some(w) => u32::try_from(w).unwrap_or(0),
                    None if single => 100,
                    None => 0,
                },
                ..Default::default()
            })
            .collect()
    }
}
