//! Routes a request: the virtual host its authority names, the first route
//! whose match holds, then a destination by weight. Records the outcome.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::capture::{OriginalDst, PASSTHROUGH};
use super::forward::{Forward, LocalReply};
use super::head::admit;
use super::local_reply::{is_grpc, Reason};
use crate::body::{self, ClientBody, ProxyBody, RequestBody};
use crate::config::{NodeConfig, RequestLimits};
use crate::discovery::matcher::RequestView;
use crate::discovery::model::{Route, WeightedCluster};
use crate::discovery::{ConfigStore, RouteTable};
use crate::metrics::{DurationLabels, Metrics, RouteSeries};

/// The outbound request handler.
#[derive(Debug)]
pub struct Outbound {
    store: Arc<ConfigStore>,
    forward: Forward,
    metrics: Arc<Metrics>,
    node: NodeConfig,
    limits: RequestLimits,
}

/// What a request was routed to, for metrics.
struct Target<'a> {
    /// The virtual host's name (the destination service of a redirect).
    host: &'a str,
    route: &'a Route,
    destination: Option<&'a WeightedCluster>,
}

impl Outbound {
    pub fn new(
        store: Arc<ConfigStore>,
        forward: Forward,
        metrics: Arc<Metrics>,
        node: NodeConfig,
        limits: RequestLimits,
    ) -> Self {
        Self {
            store,
            forward,
            metrics,
            node,
            limits,
        }
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let start = Instant::now();
        let mut req = match admit(req, &self.limits) {
            Ok(req) => req,
            Err(reason) => {
                let resp = reason.reply(reason.status(), false);
                self.record(None, resp.status(), reason.as_str(), start);
                return resp;
            }
        };
        ensure_request_id(req.headers_mut());
        let table = self.store.load();
        if let Some(original) = req.extensions().get::<OriginalDst>() {
            let unknown = request_authority(&req).is_some_and(|a| table.host(a).is_none());
            if unknown {
                let original = original.clone();
                return self.passthrough(original, req, start).await;
            }
        }
        let grpc = is_grpc(req.headers());
        let (resp, target, reason) = match self.route(&table, req).await {
            Ok((resp, target)) => (resp, Some(target), ""),
            Err((reply, target)) => (
                reply.reason.reply(reply.status, grpc),
                target,
                reply.reason.as_str(),
            ),
        };
        self.record(target.as_ref(), resp.status(), reason, start);
        resp
    }

    async fn route<'t>(
        &self,
        table: &'t RouteTable,
        req: Request<ClientBody>,
    ) -> Result<(Response<ProxyBody>, Target<'t>), (LocalReply, Option<Target<'t>>)> {
        let fail = |reason: Reason| (LocalReply::from(reason), None);
        let authority = request_authority(&req).ok_or_else(|| fail(Reason::BadRequest))?;
        let vh = table.host(authority).ok_or_else(|| fail(Reason::NoRoute))?;
        let view = RequestView {
            method: req.method().as_str(),
            path: req.uri().path(),
            query: req.uri().query(),
            authority,
            port: port_of(authority),
            headers: req.headers(),
        };
        let route = vh
            .routes
            .iter()
            .find(|r| r.matches(&view))
            .ok_or_else(|| fail(Reason::NoRoute))?;
        let host = vh.name.as_str();
        let limited = |target: Target<'t>| (LocalReply::from(Reason::RateLimited), Some(target));
        if route.rate_limit.as_ref().is_some_and(|l| !l.try_acquire()) {
            return Err(limited(Target {
                host,
                route,
                destination: None,
            }));
        }
        if let Some(redirect) = &route.redirect {
            let resp = redirect_response(redirect, authority, req.uri());
            let target = Target {
                host,
                route,
                destination: None,
            };
            return Ok((resp, target));
        }
        let destination = route
            .pick()
            .ok_or_else(|| fail(Reason::NoHealthyUpstream))?;
        let target = Target {
            host,
            route,
            destination: Some(destination),
        };
        let cluster = &destination.cluster;
        if cluster
            .rate_limit
            .as_ref()
            .is_some_and(|l| !l.try_acquire())
        {
            return Err(limited(target));
        }
        match self.forward.send(req, route, destination).await {
            Ok(resp) => Ok((resp, target)),
            Err(reply) => Err((reply, Some(target))),
        }
    }

    /// A captured request for a host the mesh does not know: sent to where
    /// the application was connecting (ALLOW_ANY), or refused (REGISTRY_ONLY).
    async fn passthrough(
        &self,
        original: OriginalDst,
        req: Request<ClientBody>,
        start: Instant,
    ) -> Response<ProxyBody> {
        let grpc = is_grpc(req.headers());
        let (resp, reason) = if original.registry_only {
            self.metrics.passthrough("http", "refused");
            (
                Reason::NoRoute.reply(StatusCode::NOT_FOUND, grpc),
                Reason::NoRoute.as_str(),
            )
        } else {
            self.metrics.passthrough("http", "allowed");
            match original.pool.send(req.map(RequestBody::streaming)).await {
                Ok(resp) => (resp.map(body::stream), ""),
                Err(e) => {
                    let reason = Reason::of(&e.into());
                    (reason.reply(reason.status(), grpc), reason.as_str())
                }
            }
        };
        let seconds = start.elapsed().as_secs_f64();
        let labels = self.labels(PASSTHROUGH, "", "", false);
        self.metrics
            .request_duration
            .get_or_create(&labels)
            .observe(seconds);
        let labels = labels.with_response(resp.status().as_u16(), reason);
        self.metrics.requests.get_or_create(&labels).inc();
        resp
    }

    fn record(
        &self,
        target: Option<&Target<'_>>,
        status: StatusCode,
        reason: &'static str,
        start: Instant,
    ) {
        let seconds = start.elapsed().as_secs_f64();
        if let Some(Target {
            route,
            destination: Some(d),
            ..
        }) = target
        {
            let series = d.series.get_or_init(|| {
                RouteSeries::new(
                    &self.metrics,
                    self.labels(
                        &d.cluster.service,
                        &d.cluster.subset,
                        &route.name,
                        d.cluster.mtls,
                    ),
                )
            });
            series.record(&self.metrics, status.as_u16(), reason, seconds);
            return;
        }
        // Redirects and requests that matched nothing: rare, resolved per request.
        let labels = match target {
            Some(t) => self.labels(t.host, "", &t.route.name, false),
            None => self.labels("unknown", "", "", false),
        };
        self.metrics
            .request_duration
            .get_or_create(&labels)
            .observe(seconds);
        let labels = labels.with_response(status.as_u16(), reason);
        self.metrics.requests.get_or_create(&labels).inc();
    }

    fn labels(&self, service: &str, subset: &str, route: &str, mtls: bool) -> DurationLabels {
        DurationLabels {
            direction: "outbound",
            source_workload: self.node.service.clone(),
            destination_service: service.to_string(),
            destination_subset: subset.to_string(),
            route: route.to_string(),
            connection_security_policy: if mtls { "mutual_tls" } else { "none" },
            source_principal: String::new(),
        }
    }
}

/// `:authority`, the authority of an absolute URI, or the `Host` header.
pub(super) fn request_authority<B>(req: &Request<B>) -> Option<&str> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str());
    }
    req.headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty())
}

/// Gives the request an `x-request-id` (a random UUID) unless it has one.
fn ensure_request_id(headers: &mut http::HeaderMap) {
    const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
    if headers.contains_key(REQUEST_ID) {
        return;
    }
    // A version-4 UUID, written without intermediate strings.
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 36];
    let mut at = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text[at] = b'-';
            at += 1;
        }
        text[at] = HEX[usize::from(b >> 4)];
        text[at + 1] = HEX[usize::from(b & 0xf)];
        at += 2;
    }
    // Owned bytes, not a copy into a `Vec`: a retry's copy of the headers
    // then shares the value by a count, where a `Vec`'s bytes would first
    // move to a new shared allocation.
    if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text)) {
        headers.insert(REQUEST_ID, value);
    }
}

fn port_of(authority: &str) -> u16 {
    split_port(authority).1.unwrap_or(80)
}

/// `host[:port]` (`[v6]:port` too) into the host and the port, if any.
fn split_port(authority: &str) -> (&str, Option<u16>) {
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') || host.ends_with(']') => match port.parse() {
            Ok(port) => (host, Some(port)),
            Err(_) => (authority, None),
        },
        _ => (authority, None),
    }
}

/// The redirect's `Location`: the request's URL with the parts the route
/// sets replaced (Istio's `HTTPRedirect`).
fn redirect_location(r: &trellis_api::Redirect, authority: &str, uri: &http::Uri) -> String {
    use trellis_api::redirect::DerivePort;
    let scheme = if r.scheme.is_empty() {
        "http"
    } else {
        &r.scheme
    };
    let (_, request_port) = split_port(authority);
    let (host, kept_port) = split_port(if r.authority.is_empty() {
        authority
    } else {
        &r.authority
    });
    let port = match (r.port, r.derive_port()) {
        (0, DerivePort::FromProtocolDefault) => None,
        (0, DerivePort::FromRequestPort) => request_port,
        (0, DerivePort::Unset) => kept_port,
        (port, _) => u16::try_from(port).ok(),
    };
    let port = port.map(|p| format!(":{p}")).unwrap_or_default();
    let path = match (r.uri.as_str(), uri.query()) {
        ("", _) => uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
        (to, Some(query)) if !to.contains('?') => format!("{to}?{query}"),
        (to, _) => to.to_string(),
    };
    format!("{scheme}://{host}{port}{path}")
}

fn redirect_response(
    r: &trellis_api::Redirect,
    authority: &str,
    uri: &http::Uri,
) -> Response<ProxyBody> {
    let mut resp = Response::new(body::full(""));
    *resp.status_mut() = StatusCode::from_u16(u16::try_from(r.redirect_code).unwrap_or(301))
        .unwrap_or(StatusCode::MOVED_PERMANENTLY);
    if let Ok(location) = HeaderValue::from_str(&redirect_location(r, authority, uri)) {
        resp.headers_mut().insert(http::header::LOCATION, location);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_api::redirect::DerivePort;

    fn location(r: trellis_api::Redirect, authority: &str, uri: &str) -> String {
        redirect_location(&r, authority, &uri.parse().expect("uri"))
    }

    #[test]
    fn redirect_replaces_only_what_the_route_sets() {
        let r = trellis_api::Redirect {
            uri: "/v1/bookRatings".into(),
            authority: "newratings.default.svc.cluster.local".into(),
            ..Default::default()
        };
        assert_eq!(
            location(r, "ratings:9080", "/v1/getProductRatings?x=1"),
            "http://newratings.default.svc.cluster.local/v1/bookRatings?x=1"
        );
        let keep = trellis_api::Redirect::default();
        assert_eq!(
            location(keep, "ratings:9080", "/a?b"),
            "http://ratings:9080/a?b"
        );
    }

    #[test]
    fn redirect_port_and_scheme() {
        let https = |derive: DerivePort, port: u32| trellis_api::Redirect {
            scheme: "https".into(),
            port,
            derive_port: derive as i32,
            ..Default::default()
        };
        assert_eq!(
            location(https(DerivePort::FromProtocolDefault, 0), "web:8080", "/p"),
            "https://web/p"
        );
        assert_eq!(
            location(https(DerivePort::FromRequestPort, 0), "web:8080", "/p"),
            "https://web:8080/p"
        );
        assert_eq!(
            location(
                https(DerivePort::FromProtocolDefault, 8443),
                "[::1]:8080",
                "/p"
            ),
            "https://[::1]:8443/p"
        );
    }
}
