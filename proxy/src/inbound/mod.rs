//! The inbound side: requests from other sidecars to the local application.
//! With `--inbound-forward ADDR` (no iptables redirect) every request the
//! inbound listener accepts goes to the application at ADDR over pooled
//! HTTP/1.1 connections. Plaintext for now: mTLS termination and
//! authorization policies come with the identity work.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;

use crate::body::{self, ProxyBody, RequestBody};
use crate::metrics::{DurationLabels, Metrics};
use crate::outbound::headers::strip_hop_by_hop;
use crate::outbound::local_reply::Reason;
use crate::transport::pool::{EndpointPool, PoolConfig, SendError};

/// Forwards inbound requests to the local application.
#[derive(Debug)]
pub struct Inbound {
    app: Arc<EndpointPool>,
    labels: DurationLabels,
    metrics: Arc<Metrics>,
}

impl Inbound {
    /// `service` names this workload in metrics (`destination_service`).
    pub fn new(
        app: SocketAddr,
        connect_timeout: Duration,
        service: &str,
        metrics: Arc<Metrics>,
    ) -> Self {
        let config = PoolConfig {
            http2: false,
            connect_timeout,
            max_requests_per_connection: 0,
        };
        Self {
            app: Arc::new(EndpointPool::new(&app.to_string(), config)),
            labels: DurationLabels {
                direction: "inbound",
                source_workload: String::new(),
                destination_service: service.to_string(),
                destination_subset: String::new(),
                route: String::new(),
            },
            metrics,
        }
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let (mut parts, incoming) = req.into_parts();
        // HTTP/2 names the authority only in the URI: the app gets it as Host.
        if !parts.headers.contains_key(HOST) {
            if let Some(host) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                parts.headers.insert(HOST, host);
            }
        }
        strip_hop_by_hop(&mut parts.headers);
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(path);
        parts.version = Version::HTTP_11;
        let request = Request::from_parts(
            parts,
            RequestBody::Streaming {
                prefix: None,
                rest: incoming,
            },
        );
        let (response, reason) = match self.app.send(request).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                (Response::from_parts(parts, body::stream(body)), "")
            }
            Err(e) => {
                let reason = match e {
                    SendError::Connect { .. } => Reason::ConnectFailure,
                    SendError::Upstream(_) => Reason::UpstreamReset,
                };
                tracing::debug!(error = %e, "inbound request failed");
                (reason.response(), reason.as_str())
            }
        };
        self.metrics
            .request_duration
            .get_or_create(&self.labels)
            .observe(started.elapsed().as_secs_f64());
        let labels = self
            .labels
            .with_response(response.status().as_u16(), reason);
        self.metrics.requests.get_or_create(&labels).inc();
        response
    }
}
