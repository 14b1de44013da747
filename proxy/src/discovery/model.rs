//! The compiled configuration the proxy runs on: `api::ProxyConfig` turned
//! into lookup tables with compiled matchers and shared cluster state.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use trellis_api as api;

use super::cluster::{Cluster, Env};
pub use super::error::ModelError;
use super::matcher::{CompiledMatch, RequestView};
use super::tcp::TcpTable;
use crate::config::NodeConfig;
use crate::inbound::policy::InboundPolicy;
use crate::layers::rate_limit::RateLimit;
use crate::layers::retry::RetryConditions;
use crate::metrics::RouteSeries;

/// All virtual hosts by every name a client may use, and the clusters.
#[derive(Debug, Default)]
pub struct RouteTable {
    pub version: u64,
    pub source: String,
    hosts: HashMap<String, Arc<VirtualHost>>,
    /// Distinct hosts in config order (for /config_dump).
    pub virtual_hosts: Vec<Arc<VirtualHost>>,
    pub clusters: Vec<Arc<Cluster>>,
    /// What the inbound side enforces for this workload.
    pub inbound: InboundPolicy,
    /// Captured opaque TCP by the address and port the application dialled.
    pub tcp: TcpTable,
    /// The mesh's outboundTrafficPolicy is REGISTRY_ONLY.
    pub registry_only: bool,
}

#[derive(Debug)]
pub struct VirtualHost {
    pub name: String,
    /// Every name this host answers to.
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    matches: Vec<CompiledMatch>,
    pub destinations: Vec<WeightedCluster>,
    total_weight: u32,
    pub timeout: Option<Duration>,
    pub retry: Option<RouteRetry>,
    pub fault: Option<Fault>,
    pub redirect: Option<api::Redirect>,
    pub rewrite: Option<api::Rewrite>,
    pub request_headers: Option<api::HeaderOperations>,
    pub response_headers: Option<api::HeaderOperations>,
    /// `rateLimit` of the route (a new bucket on each config).
    pub rate_limit: Option<RateLimit>,
    /// `mirror` / `mirrors`: where copies of the requests go.
    pub mirrors: Vec<Mirror>,
}

/// One mirror of a route.
#[derive(Debug)]
pub struct Mirror {
    pub cluster: Arc<Cluster>,
    /// Share of requests copied, 0..=100.
    pub percentage: f64,
}

/// `retries` of a route, compiled.
#[derive(Debug)]
pub struct RouteRetry {
    /// Retries after the first attempt (Istio's `attempts`).
    pub retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub conditions: Arc<RetryConditions>,
    /// Retry POST/PATCH even after they reached the upstream.
    pub non_idempotent: bool,
}

/// `fault` of a route, compiled: (percentage of requests, what to do).
#[derive(Debug)]
pub struct Fault {
    pub delay: Option<(f64, Duration)>,
    pub abort: Option<(f64, http::StatusCode)>,
}

#[derive(Debug)]
pub struct WeightedCluster {
    pub cluster: Arc<Cluster>,
    pub weight: u32,
    pub request_headers: Option<api::HeaderOperations>,
    pub response_headers: Option<api::HeaderOperations>,
    /// Metric series of (this route, this destination), resolved on first use.
    pub series: OnceLock<RouteSeries>,
}

impl Route {
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.matches(req))
    }

    /// The path after `rewrite.uri`: the matched prefix is replaced, or the
    /// whole path when no prefix match applies. `None` without a rewrite.
    pub fn rewrite_path(&self, path: &str) -> Option<String> {
        let to = self
            .rewrite
            .as_ref()
            .map(|r| r.uri.as_str())
            .filter(|u| !u.is_empty())?;
        let prefix = self
            .matches
            .iter()
            .filter_map(CompiledMatch::uri_prefix)
            .find(|p| path.starts_with(p));
        Some(match prefix {
            Some(p) => format!("{to}{}", &path[p.len()..]),
            None => to.to_string(),
        })
    }

    /// A destination by weight; `None` when the route has none.
    pub fn pick(&self) -> Option<&WeightedCluster> {
        if self.total_weight == 0 {
            return self.destinations.first();
        }
        let mut roll = fastrand::u32(0..self.total_weight);
        for d in &self.destinations {
            if roll < d.weight {
                return Some(d);
            }
            roll -= d.weight;
        }
        self.destinations.last()
    }
}

impl RouteTable {
    /// Compiles a pushed or loaded config for the sidecar `node`, carrying
    /// endpoint state and retry budgets over from `previous`.
    pub fn build(
        config: &api::ProxyConfig,
        node: &NodeConfig,
        previous: Option<&RouteTable>,
        env: &Env,
    ) -> Result<Self, Vec<ModelError>> {
        let mut errors = Vec::new();
        let clusters: HashMap<&str, Arc<Cluster>> = config
            .clusters
            .iter()
            .filter_map(|c| {
                match Cluster::build(c, previous.and_then(|p| p.cluster(&c.name)), env) {
                    Ok(built) => Some((c.name.as_str(), Arc::new(built))),
                    Err(e) => {
                        errors.push(e);
                        None
                    }
                }
            })
            .collect();
        let mut virtual_hosts = Vec::new();
        for vh in &config.hosts {
            let mut routes = Vec::new();
            for r in &vh.routes {
                match route(r, &clusters, node) {
                    Ok(route) => routes.push(route),
                    Err(e) => errors.push(e),
                }
            }
            virtual_hosts.push(Arc::new(VirtualHost {
                name: vh.name.clone(),
                domains: domains(vh),
                routes,
            }));
        }
        let tcp = TcpTable::build(config, &clusters, node, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut hosts = HashMap::new();
        // Exact names first; then short names, the sidecar's own namespace winning.
        for vh in &virtual_hosts {
            for d in &vh.domains {
                hosts.insert(d.clone(), vh.clone());
            }
        }
        for own in [false, true] {
            for (vh, src) in virtual_hosts.iter().zip(&config.hosts) {
                if (src.namespace == node.namespace) != own || src.namespace.is_empty() {
                    continue;
                }
                if let Some(short) = vh.name.split('.').next() {
                    hosts.insert(short.to_string(), vh.clone());
                }
            }
        }
        let mut clusters: Vec<Arc<Cluster>> = clusters.into_values().collect();
        clusters.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self {
            version: config.version,
            source: config.source.clone(),
            hosts,
            virtual_hosts,
            clusters,
            inbound: InboundPolicy::build(config, node),
            tcp,
            registry_only: config.registry_only,
        })
    }

    /// The cluster called `name`.
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters
            .binary_search_by(|c| c.name.as_str().cmp(name))
            .ok()
            .map(|i| self.clusters[i].as_ref())
    }

    /// The host a request names (`Host` or `:authority`, port ignored).
    pub fn host(&self, authority: &str) -> Option<&Arc<VirtualHost>> {
        let name = strip_port(authority).trim_end_matches('.');
        let found = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            self.hosts.get(&name.to_ascii_lowercase())
        } else {
            self.hosts.get(name)
        };
        found.or_else(|| {
            // `*.example.com` rules
            let (_, parent) = name.split_once('.')?;
            self.hosts
                .get(&format!("*.{}", parent.to_ascii_lowercase()))
        })
    }
}

fn duration(d: Option<&api::prost_types::Duration>) -> Option<Duration> {
    d.and_then(|d| Duration::try_from(*d).ok())
        .filter(|d| !d.is_zero())
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.split(']').next().map_or(authority, |h| &h[1..]);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// Names of a host other than short names: the FQDN, its aliases and, for
/// `svc.ns.svc.cluster.local`, `svc.ns` and `svc.ns.svc`.
fn domains(vh: &api::VirtualHost) -> Vec<String> {
    let mut names = vec![vh.name.clone()];
    names.extend(vh.aliases.iter().cloned());
    if let Some((service, namespace)) = trellis_crds::host::split_cluster_local(&vh.name) {
        names.push(format!("{service}.{namespace}"));
        names.push(format!("{service}.{namespace}.svc"));
    }
    names
}

fn route(
    r: &api::Route,
    clusters: &HashMap<&str, Arc<Cluster>>,
    node: &NodeConfig,
) -> Result<Route, ModelError> {
    let matches = r
        .matches
        .iter()
        .map(|m| CompiledMatch::new(m, node))
        .collect::<Result<_, _>>()
        .map_err(|source| ModelError::Match {
            route: r.name.clone(),
            source,
        })?;
    let destinations: Vec<WeightedCluster> = r
        .destinations
        .iter()
        .map(|d| {
            let cluster = clusters.get(d.cluster.as_str()).cloned().ok_or_else(|| {
                ModelError::UnknownCluster {
                    route: r.name.clone(),
                    cluster: d.cluster.clone(),
                }
            })?;
            Ok(WeightedCluster {
                cluster,
                weight: d.weight,
                request_headers: d.request_headers.clone(),
                response_headers: d.response_headers.clone(),
                series: OnceLock::new(),
            })
        })
        .collect::<Result<_, _>>()?;
    let mirrors = r
        .mirrors
        .iter()
        .map(|m| {
            let cluster = clusters.get(m.cluster.as_str()).cloned().ok_or_else(|| {
                ModelError::UnknownCluster {
                    route: r.name.clone(),
                    cluster: m.cluster.clone(),
                }
            })?;
            Ok(Mirror {
                cluster,
                percentage: m.percentage,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Route {
        mirrors,
        name: r.name.clone(),
        total_weight: destinations.iter().map(|d| d.weight).sum(),
        matches,
        destinations,
        timeout: duration(r.timeout.as_ref()),
        retry: r
            .retries
            .as_ref()
            .filter(|p| p.attempts > 0)
            .map(|p| RouteRetry {
                retries: p.attempts,
                per_try_timeout: duration(p.per_try_timeout.as_ref()),
                conditions: Arc::new(RetryConditions::parse(
                    p.retry_on.iter().map(String::as_str),
                )),
                non_idempotent: p.retry_non_idempotent,
            }),
        fault: r.fault.as_ref().map(|f| Fault {
            delay: f
                .delay
                .as_ref()
                .and_then(|d| Some((d.percentage, duration(d.fixed_delay.as_ref())?))),
            abort: f.abort.as_ref().and_then(|a| {
                let status = http::StatusCode::from_u16(u16::try_from(a.http_status).ok()?).ok()?;
                Some((a.percentage, status))
            }),
        }),
        redirect: r.redirect.clone(),
        rewrite: r.rewrite.clone(),
        request_headers: r.request_headers.clone(),
        response_headers: r.response_headers.clone(),
        rate_limit: r
            .rate_limit
            .as_ref()
            .map(|l| RateLimit::new(super::cluster::rate_limit_config(l))),
    })
}

#[cfg(test)]
mod tests;
