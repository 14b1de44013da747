//! Admin endpoint (default 127.0.0.1:15000): `/live`, `/ready`, `/metrics`,
//! `/config_dump`.

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use serde_json::json;

use crate::body::{self, ProxyBody};
use crate::discovery::{ConfigStore, RouteTable};
use crate::identity::Identity;
use crate::layers::balance::Balancer;
use crate::layers::outlier::Health;
use crate::metrics::Metrics;

/// State the admin endpoint reports on.
#[derive(Debug)]
pub struct Admin {
    pub store: Arc<ConfigStore>,
    pub metrics: Arc<Metrics>,
    /// The workload identity, when mTLS is on.
    pub identity: Option<Arc<Identity>>,
}

impl Admin {
    pub fn handle<B>(&self, req: &Request<B>) -> Response<ProxyBody> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "GET only\n".into(),
            );
        }
        match req.uri().path() {
            "/live" => reply(StatusCode::OK, "text/plain", "live\n".into()),
            "/ready" if !self.store.is_ready() => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "no config yet\n".into(),
            ),
            "/ready"
                if self
                    .identity
                    .as_ref()
                    .is_some_and(|i| i.current().is_none()) =>
            {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "no workload certificate yet\n".into(),
                )
            }
            "/ready" => reply(StatusCode::OK, "text/plain", "ready\n".into()),
            "/metrics" => {
                let table = self.store.load();
                self.metrics.set_endpoints(
                    table
                        .clusters
                        .iter()
                        .map(|c| (c.service.as_str(), c.subset.as_str(), c.health_counts())),
                );
                if let Some(identity) = &self.identity {
                    identity.refresh_metrics();
                }
                let accept = req.headers().get(http::header::ACCEPT);
                let (content_type, text) = trellis_api::exposition::negotiate(
                    accept.and_then(|a| a.to_str().ok()),
                    self.metrics.encode(),
                );
                reply(StatusCode::OK, content_type, text)
            }
            "/config_dump" => {
                let mut dump = config_dump(&self.store.load());
                if let Some(c) = self.identity.as_ref().and_then(|i| i.current()) {
                    let unix = |t: std::time::SystemTime| {
                        t.duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs())
                    };
                    dump["identity"] = json!({
                        "spiffe_id": c.id.as_str(),
                        "not_before": unix(c.not_before),
                        "not_after": unix(c.not_after),
                        "renew_at": unix(c.renew_at()),
                    });
                }
                let text = serde_json::to_string_pretty(&dump).unwrap_or_default();
                reply(StatusCode::OK, "application/json", text)
            }
            _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        }
    }
}

fn reply(status: StatusCode, content_type: &'static str, text: String) -> Response<ProxyBody> {
    let mut resp = Response::new(body::full(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    resp
}

/// The config in use as JSON: version, source, hosts with routes, endpoints.
fn balancer_name(b: &Balancer) -> &'static str {
    match b {
        Balancer::RoundRobin(_) => "ROUND_ROBIN",
        Balancer::Random => "RANDOM",
        Balancer::LeastRequest => "LEAST_REQUEST",
        Balancer::PeakEwma => "PEAK_EWMA",
        Balancer::RingHash(_) => "RING_HASH",
    }
}

/// "healthy", "probing", or "ejected for 12.3s more".
fn health(h: Health, now: tokio::time::Instant) -> String {
    match h {
        Health::Healthy => "healthy".into(),
        Health::Probing => "probing".into(),
        Health::Ejected { until } if until > now => {
            format!("ejected for {:.1}s more", (until - now).as_secs_f64())
        }
        Health::Ejected { .. } => "ejected (expired, awaiting probe)".into(),
    }
}

pub fn config_dump(table: &RouteTable) -> serde_json::Value {
    let now = tokio::time::Instant::now();
    let hosts: Vec<_> = table
        .virtual_hosts
        .iter()
        .map(|vh| {
            let routes: Vec<_> = vh
                .routes
                .iter()
                .map(|r| {
                    json!({
                        "name": r.name,
                        "destinations": r.destinations.iter().map(|d| json!({
                            "cluster": d.cluster.name,
                            "weight": d.weight,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json!({ "name": vh.name, "domains": vh.domains, "routes": routes })
        })
        .collect();
    let clusters: Vec<_> = table
        .clusters
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "service": c.service,
                "subset": c.subset,
                "protocol": c.protocol.as_str_name(),
                "balancer": balancer_name(&c.targets.balancer),
                "endpoints": c.endpoints.iter().map(|e| json!({
                    "address": e.authority.as_str(),
                    "labels": e.labels,
                    "in_flight": e.load.in_flight(),
                    "mtls": e.pool.config.mtls.as_deref(),
                    "state": health(e.health.health(), now),
                })).collect::<Vec<_>>(),
                "retry_budget": c.budget.describe(),
            })
        })
        .collect();
    let (allow, deny) = table.inbound.policy_names();
    json!({
        "version": table.version,
        "source": table.source,
        "hosts": hosts,
        "clusters": clusters,
        "inbound": {
            "mtls": table.inbound.mtls.as_str(),
            "peer_authentication": table.inbound.mtls_from,
            "allow_policies": allow,
            "deny_policies": deny,
        },
    })
}
