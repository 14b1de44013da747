//! The inbound side: requests from other sidecars to the local application.
//! `accept` terminates mTLS (or not) per the workload's PeerAuthentication;
//! then each request's path is normalized, AuthorizationPolicies are
//! applied (`policy`), and the request goes to the application over pooled
//! HTTP/1.1 connections, with the path that was authorized: on the port
//! the client dialled, on localhost, when iptables redirected it here;
//! else at `--inbound-forward ADDR`.

pub mod accept;
pub mod path;
pub mod policy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;

use self::accept::PeerSecurity;
use self::policy::RequestFacts;
use crate::body::{self, BoxError, ClientBody, ProxyBody, RequestBody};
use crate::config::RequestLimits;
use crate::discovery::ConfigStore;
use crate::identity::Identity;
use crate::metrics::{DurationLabels, Metrics};
use crate::outbound::head::admit;
use crate::outbound::headers::strip_hop_by_hop;
use crate::outbound::local_reply::{is_grpc, Reason};
use crate::transport::pool::{EndpointPool, PoolConfig};

/// Authorizes inbound requests and forwards them to the local application.
#[derive(Debug)]
pub struct Inbound {
    /// `--inbound-forward`: where requests go that were not redirected.
    app: Option<Arc<EndpointPool>>,
    /// The application's ports on localhost, for redirected connections.
    ports: std::sync::Mutex<std::collections::HashMap<u16, Arc<EndpointPool>>>,
    config: PoolConfig,
    store: Arc<ConfigStore>,
    service: String,
    metrics: Arc<Metrics>,
    identity: Option<Arc<Identity>>,
    limits: RequestLimits,
}

/// Tells the application who called: `By=<this workload>;URI=<the peer>`
/// (Envoy's and Istio's header). A value the client sent is dropped.
pub const XFCC: &str = "x-forwarded-client-cert";

impl Inbound {
    /// `service` names this workload in metrics (`destination_service`).
    pub fn new(
        app: Option<SocketAddr>,
        connect_timeout: Duration,
        service: &str,
        store: Arc<ConfigStore>,
        metrics: Arc<Metrics>,
        identity: Option<Arc<Identity>>,
        limits: RequestLimits,
    ) -> Self {
        let config = PoolConfig {
            http2: false,
            connect_timeout,
            max_requests_per_connection: 0,
            mtls: None,
        };
        Self {
            app: app.map(|a| Arc::new(EndpointPool::new(&a.to_string(), config.clone(), None))),
            ports: std::sync::Mutex::new(std::collections::HashMap::new()),
            config,
            store,
            service: service.to_string(),
            metrics,
            identity,
            limits,
        }
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let peer = req
            .extensions()
            .get::<PeerSecurity>()
            .cloned()
            .unwrap_or(PeerSecurity {
                principal: None,
                app_port: None,
            });
        let grpc = is_grpc(req.headers());
        let admitted = admit(req, &self.limits);
        let (response, reason) = match admitted.and_then(|req| self.authorize(req, &peer)) {
            Ok(request) => self.forward(request, peer.app_port, grpc).await,
            Err(reason) => (reason.reply(reason.status(), grpc), reason.as_str()),
        };
        let labels = DurationLabels {
            direction: "inbound",
            source_workload: String::new(),
            destination_service: self.service.clone(),
            destination_subset: String::new(),
            route: String::new(),
            connection_security_policy: peer.policy_label(),
            source_principal: peer
                .principal
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_default(),
        };
        self.metrics
            .request_duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        let labels = labels.with_response(response.status().as_u16(), reason);
        self.metrics.requests.get_or_create(&labels).inc();
        response
    }

    /// Normalizes the path and applies the policies: the request as it
    /// will be forwarded, or why not.
    fn authorize(
        &self,
        req: Request<ClientBody>,
        peer: &PeerSecurity,
    ) -> Result<Request<RequestBody>, Reason> {
        let (mut parts, incoming) = req.into_parts();
        let normalized = path::normalize(parts.uri.path()).map_err(|e| {
            tracing::debug!(path = parts.uri.path(), error = %e, "inbound path refused");
            Reason::InvalidPath
        })?;
        let table = self.store.load();
        let facts = RequestFacts {
            principal: peer.principal.as_deref(),
            method: parts.method.as_str(),
            path: &normalized,
        };
        if let Err(denied) = table.inbound.authorize(&facts) {
            tracing::debug!(
                principal = ?peer.principal.as_deref().map(|p| p.as_str()),
                method = %parts.method,
                path = %normalized,
                ?denied,
                "inbound request denied"
            );
            return Err(Reason::RbacDenied);
        }
        // `admit` left one Host, the request's authority (HTTP/2's too).
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(XFCC);
        if let Some(principal) = &peer.principal {
            let own = self.identity.as_ref().and_then(|i| i.current());
            let value = match own {
                Some(own) => format!("By={};URI={principal}", own.id),
                None => format!("URI={principal}"),
            };
            if let Ok(value) = HeaderValue::from_str(&value) {
                parts.headers.insert(XFCC, value);
            }
        }
        let path = match parts.uri.query() {
            Some(q) => format!("{normalized}?{q}"),
            None => normalized,
        };
        parts.uri =
            Uri::from(PathAndQuery::try_from(path.as_str()).map_err(|_| Reason::InvalidPath)?);
        parts.version = Version::HTTP_11;
        Ok(Request::from_parts(parts, RequestBody::streaming(incoming)))
    }

    /// The application's pool for a request that arrived on `port`
    /// (redirected), else the `--inbound-forward` one.
    fn app(&self, port: Option<u16>) -> Option<Arc<EndpointPool>> {
        let Some(port) = port else {
            return self.app.clone();
        };
        let mut ports = self
            .ports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let pool = ports.entry(port).or_insert_with(|| {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            Arc::new(EndpointPool::new(
                &addr.to_string(),
                self.config.clone(),
                None,
            ))
        });
        Some(pool.clone())
    }

    async fn forward(
        &self,
        request: Request<RequestBody>,
        port: Option<u16>,
        grpc: bool,
    ) -> (Response<ProxyBody>, &'static str) {
        let Some(app) = self.app(port) else {
            let reason = Reason::NoRoute;
            return (reason.reply(reason.status(), grpc), reason.as_str());
        };
        match app.send(request).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                (Response::from_parts(parts, body::stream(body)), "")
            }
            Err(e) => {
                let e = BoxError::from(e);
                let reason = Reason::of(&e);
                tracing::debug!(error = ?e, "inbound request failed");
                (reason.reply(reason.status(), grpc), reason.as_str())
            }
        }
    }
}
