//! `compile(rules, endpoints) -> ProxyConfig`: the single translation from
//! the rule model to what a proxy runs. Used by the proxy in static mode and
//! by the control plane, so both produce the very same config.
//!
//! Expects validated rules: values that validation would reject (a bad
//! duration, say) are dropped here rather than reported.

mod endpoints;
mod policy;
mod security;
mod tcp;

use std::collections::BTreeMap;

use trellis_api as api;

pub use endpoints::{Endpoints, Instance, Service, ServicePortSpec};

use crate::host::{qualify, split_cluster_local};
use crate::load::RuleSet;
use crate::types::{DestinationRuleSpec, HttpRoute, HttpRouteDestination};
use crate::Resource;

/// Compiles `rules` over the known services and instances. `version` and
/// `source` of the result are left for the caller to set.
pub fn compile(rules: &RuleSet, endpoints: &Endpoints) -> api::ProxyConfig {
    let mut c = Compiler {
        endpoints,
        rules_by_host: rules
            .destination_rules
            .iter()
            .map(|dr| (qualify(&dr.spec.host, dr.namespace()), dr))
            .collect(),
        clusters: BTreeMap::new(),
    };
    let mut hosts: BTreeMap<String, api::VirtualHost> = BTreeMap::new();
    for service in endpoints.services.values() {
        hosts.insert(service.host.clone(), virtual_host(&service.host, service));
    }
    for vs in &rules.virtual_services {
        let ns = vs.namespace();
        for host in &vs.spec.hosts {
            let fqdn = qualify(host, ns);
            let service = endpoints.services.get(&fqdn);
            let vh = hosts.entry(fqdn.clone()).or_insert_with(|| match service {
                Some(s) => virtual_host(&fqdn, s),
                None => virtual_host(&fqdn, &Service::named(&fqdn)),
            });
            if !vh.routes.is_empty() {
                continue; // validation reports a host routed twice; first wins
            }
            vh.routes = vs
                .spec
                .http
                .iter()
                .enumerate()
                .map(|(i, route)| c.route(vs.name(), i, route, ns))
                .collect();
        }
    }
    for vh in hosts.values_mut() {
        if vh.routes.is_empty() {
            let default = c.default_route(&vh.name);
            vh.routes.push(default);
        }
    }
    let tcp_services = c.tcp_services(rules);
    api::ProxyConfig {
        version: 0,
        source: String::new(),
        hosts: hosts.into_values().collect(),
        clusters: c.clusters.into_values().collect(),
        peer_authentications: security::peer_authentications(rules),
        authorization_policies: security::authorization_policies(rules),
        tcp_services,
        // A mesh setting, set by the control plane.
        registry_only: false,
    }
}

fn virtual_host(fqdn: &str, service: &Service) -> api::VirtualHost {
    api::VirtualHost {
        name: fqdn.to_string(),
        namespace: split_cluster_local(fqdn)
            .map(|(_, ns)| ns.to_string())
            .unwrap_or_default(),
        aliases: service.aliases.clone(),
        ports: service.ports.iter().map(|p| p.number).collect(),
        routes: Vec::new(),
    }
}

struct Compiler<'a> {
    endpoints: &'a Endpoints,
    rules_by_host: BTreeMap<String, &'a Resource<DestinationRuleSpec>>,
    clusters: BTreeMap<String, api::Cluster>,
}

impl Compiler<'_> {
    fn route(&mut self, vs_name: &str, index: usize, route: &HttpRoute, ns: &str) -> api::Route {
        let single = route.route.len() == 1;
        let destinations = route
            .route
            .iter()
            .map(|d: &HttpRouteDestination| {
                let host = qualify(&d.destination.host, ns);
                let port = d.destination.port.as_ref().map(|p| p.number);
                let subset = d.destination.subset.as_deref().unwrap_or("");
                api::WeightedCluster {
                    cluster: self.cluster(&host, subset, port),
                    weight: d
                        .weight
                        .map(|w| w.max(0).unsigned_abs())
                        .unwrap_or(if single { 100 } else { 0 }),
                    request_headers: d
                        .headers
                        .as_ref()
                        .and_then(|h| h.request.as_ref())
                        .map(policy::header_ops),
                    response_headers: d
                        .headers
                        .as_ref()
                        .and_then(|h| h.response.as_ref())
                        .map(policy::header_ops),
                }
            })
            .collect();
        api::Route {
            name: route
                .name
                .clone()
                .unwrap_or_else(|| format!("{vs_name}.{index}")),
            matches: route.matches.iter().map(policy::route_match).collect(),
            destinations,
            timeout: policy::duration(route.timeout.as_ref()),
            retries: route.retries.as_ref().map(policy::retries),
            fault: route.fault.as_ref().map(policy::fault),
            request_headers: route
                .headers
                .as_ref()
                .and_then(|h| h.request.as_ref())
                .map(policy::header_ops),
            response_headers: route
                .headers
                .as_ref()
                .and_then(|h| h.response.as_ref())
                .map(policy::header_ops),
            rewrite: route.rewrite.as_ref().map(|r| api::Rewrite {
                uri: r.uri.clone().unwrap_or_default(),
                authority: r.authority.clone().unwrap_or_default(),
            }),
            redirect: route.redirect.as_ref().map(policy::redirect),
            rate_limit: route.rate_limit.as_ref().map(policy::rate_limit),
            mirrors: self.mirrors(route, ns),
        }
    }

    /// `mirror` (with `mirrorPercentage`, or the deprecated `mirrorPercent`;
    /// all requests when neither) and `mirrors`, each with its cluster.
    fn mirrors(&mut self, route: &HttpRoute, ns: &str) -> Vec<api::Mirror> {
        let single = route.mirror.as_ref().map(|d| {
            let share = route
                .mirror_percentage
                .as_ref()
                .map(|p| p.value)
                .or(route.mirror_percent.map(f64::from));
            (d, share)
        });
        let listed = route
            .mirrors
            .iter()
            .map(|m| (&m.destination, m.percentage.as_ref().map(|p| p.value)));
        single
            .into_iter()
            .chain(listed)
            .map(|(d, share)| {
                let host = qualify(&d.host, ns);
                let port = d.port.as_ref().map(|p| p.number);
                api::Mirror {
                    cluster: self.cluster(&host, d.subset.as_deref().unwrap_or(""), port),
                    percentage: share.unwrap_or(100.0),
                }
            })
            .collect()
    }

    /// The route of a host no VirtualService routes: all of its endpoints.
    fn default_route(&mut self, host: &str) -> api::Route {
        api::Route {
            name: "default".into(),
            destinations: vec![api::WeightedCluster {
                cluster: self.cluster(host, "", None),
                weight: 100,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// Name of the cluster for (host, subset, port), creating it on first use.
    fn cluster(&mut self, host: &str, subset: &str, port: Option<u32>) -> String {
        let service = self.endpoints.services.get(host);
        let port_spec = service.and_then(|s| match port {
            Some(n) => s.ports.iter().find(|p| p.number == n),
            None => s.ports.first(),
        });
        let number = port.or(port_spec.map(|p| p.number)).unwrap_or(0);
        let name = if subset.is_empty() {
            format!("{host}:{number}")
        } else {
            format!("{host}:{number}|{subset}")
        };
        if self.clusters.contains_key(&name) {
            return name;
        }
        let rule = self.rules_by_host.get(host).copied();
        let subset_rule = rule.and_then(|r| r.spec.subsets.iter().find(|s| s.name == subset));
        let selector = subset_rule.map(|s| &s.labels);
        let tls_mode = subset_rule
            .and_then(|s| s.traffic_policy.as_ref())
            .and_then(|p| p.tls.as_ref())
            .or(rule
                .and_then(|r| r.spec.traffic_policy.as_ref())
                .and_then(|p| p.tls.as_ref()))
            .and_then(|t| t.mode);
        let endpoints = service
            .map(|s| s.instances.as_slice())
            .unwrap_or_default()
            .iter()
            .filter(|i| {
                selector.is_none_or(|sel| sel.iter().all(|(k, v)| i.labels.get(k) == Some(v)))
            })
            .filter_map(|i| {
                let target = port_spec.map_or(Some(number), |p| i.port_for(p));
                target.map(|port| api::Endpoint {
                    address: i.address.clone(),
                    port,
                    labels: i.labels.clone().into_iter().collect(),
                    weight: i.weight,
                    mtls: service.is_some_and(|s| security::originates_mtls(tls_mode, s, i)),
                    identities: service
                        .map(|s| security::identities(s, i))
                        .unwrap_or_default(),
                })
            })
            .collect();
        let protocol = port_spec.map_or(api::Protocol::Http1, |p| policy::protocol(&p.protocol));
        let policy = policy::traffic_policy(
            rule.and_then(|r| r.spec.traffic_policy.as_ref()),
            subset_rule.and_then(|s| s.traffic_policy.as_ref()),
        );
        self.clusters.insert(
            name.clone(),
            api::Cluster {
                name: name.clone(),
                service: host.to_string(),
                subset: subset.to_string(),
                protocol: protocol as i32,
                endpoints,
                policy,
            },
        );
        name
    }
}

#[cfg(test)]
mod tests;
