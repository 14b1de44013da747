//! Admin endpoint (default 127.0.0.1:15000): `/live`, `/ready`, `/metrics`,
//! `/config_dump`, and `/app-health/...`: the application's own HTTP
//! probes, sent by the sidecar to the app on localhost (the injector moves
//! them here, as the app's port is captured and may require mTLS).

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use serde_json::json;

use crate::body::{self, ProxyBody};
use crate::config::AppProbe;
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
    /// `/app-health/...` paths and the app probes they stand for.
    pub app_probes: BTreeMap<String, AppProbe>,
}

impl Admin {
    /// [`handle`](Self::handle), and the app probes (which wait on the app).
    pub async fn respond<B>(&self, req: Request<B>) -> Response<ProxyBody> {
        let Some(probe) = self.app_probes.get(req.uri().path()) else {
            return self.handle(&req);
        };
        match app_probe(probe).await {
            Ok(status) => reply(status, "text/plain", format!("app answered {status}\n")),
            Err(e) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("app probe 127.0.0.1:{}{}: {e}\n", probe.port, probe.path),
            ),
        }
    }

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
            "/ready" if self.store.is_draining() => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "draining: shutting down\n".into(),
            ),
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

/// `GET path` to the app on localhost (the sidecar's own traffic is not
/// captured): its status, within a second.
async fn app_probe(probe: &AppProbe) -> Result<StatusCode, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", probe.port))
            .await
            .map_err(|e| e.to_string())?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUser-Agent: trellis-probe\r\nConnection: close\r\n\r\n",
            probe.path, probe.port
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut head = [0u8; 12];
        stream
            .read_exact(&mut head)
            .await
            .map_err(|e| e.to_string())?;
        std::str::from_utf8(&head[9..12])
            .ok()
            .and_then(|code| code.parse::<u16>().ok())
            .and_then(|code| StatusCode::from_u16(code).ok())
            .ok_or_else(|| "not an HTTP response".to_string())
    };
    tokio::time::timeout(std::time::Duration::from_secs(1), exchange)
        .await
        .map_err(|_| "no answer within 1 s".to_string())?
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
