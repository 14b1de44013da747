//! Sends a routed request to its destination through the route's
//! policies: fault injection, then route timeout -> pool limits -> retries
//! -> per-try timeout -> balancer -> outlier detection -> the endpoint's
//! client (`endpoint::Upstream`). The route timeout is a deadline from
//! routing on: it bounds the wait for a pool slot, and on a retried route it
//! is kept by the per-try timeout and the retry backoff.

use std::sync::Arc;

use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use tower::util::Either;
use tower::ServiceExt;
use trellis_api::Protocol;

use super::endpoint::Upstream;
use super::headers;
use super::local_reply::Reason;
use crate::body::{self, ProxyBody, RequestBody, REPLAY_LIMIT};
use crate::discovery::cluster::HashPolicy;
use crate::discovery::model::{Route, WeightedCluster};
use crate::layers::balance::{stable_hash, Balance};
use crate::layers::breaker::{Breaker, Overflow};
use crate::layers::outlier::Outlier;
use crate::layers::retry::{policy_for, Retry, RetryPolicy};
use crate::layers::timeout::{Deadline, Timeout, TimeoutKind};
use crate::metrics::Metrics;
use crate::transport::listen::PeerAddr;
use crate::transport::pool::into_http2_form;

/// A reply the proxy makes itself instead of an upstream response.
#[derive(Clone, Copy, Debug)]
pub struct LocalReply {
    pub reason: Reason,
    /// Usually `reason.status()`; an injected abort sets its own.
    pub status: StatusCode,
}

impl From<Reason> for LocalReply {
    fn from(reason: Reason) -> Self {
        Self {
            reason,
            status: reason.status(),
        }
    }
}

/// Sends requests through their route's policies.
#[derive(Clone, Debug)]
pub struct Forward {
    metrics: Arc<Metrics>,
}

impl Forward {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }

    pub async fn send(
        &self,
        req: Request<Incoming>,
        route: &Route,
        destination: &WeightedCluster,
    ) -> Result<Response<ProxyBody>, LocalReply> {
        if let Some(fault) = &route.fault {
            if let Some((percent, delay)) = fault.delay {
                if chance(percent) {
                    tokio::time::sleep(delay).await;
                }
            }
            if let Some((percent, status)) = fault.abort {
                if chance(percent) {
                    return Err(LocalReply {
                        reason: Reason::FaultAbort,
                        status,
                    });
                }
            }
        }
        let (mut parts, incoming) = req.into_parts();
        prepare(&mut parts, route, destination)?;
        let replay_safe = route.retry.as_ref().is_some_and(|r| r.non_idempotent)
            || crate::layers::retry::is_idempotent(&parts.method);
        let body = match &route.retry {
            Some(_) => RequestBody::read(incoming, REPLAY_LIMIT)
                .await
                .map_err(|_| Reason::BadRequest)?,
            None => RequestBody::Streaming {
                prefix: None,
                rest: incoming,
            },
        };
        let upstream = Request::from_parts(parts, body);
        let cluster = &destination.cluster;
        let key = cluster.hash.as_ref().and_then(|p| hash_key(p, &upstream));
        let endpoint = Balance::new(
            Outlier::new(Upstream::new(cluster.clone()), cluster.outlier.clone()),
            cluster.targets.clone(),
        )
        .for_request(key, route.retry.is_some());
        // The route timeout runs from here: a wait for a pool slot counts.
        // With retries, it is kept by each attempt's timer and the backoff
        // (one timer per attempt, not two); without, by a timer of its own.
        let deadline = route.timeout.map(Deadline::after);
        let (retried, route_deadline) = match &route.retry {
            Some(retry) => {
                let policy: RetryPolicy =
                    policy_for(retry, replay_safe, cluster, &self.metrics, deadline);
                let per_try = Timeout::new(endpoint, retry.per_try_timeout, TimeoutKind::PerTry)
                    .within(deadline);
                (Either::Left(Retry::new(policy, per_try)), None)
            }
            None => (Either::Right(endpoint), deadline),
        };
        // A pool slot is held for the whole request, until its response body ends.
        let limited = Breaker::new(retried, cluster.pool.clone()).within(deadline);
        let stack = Timeout::new(limited, None, TimeoutKind::Route).within(route_deadline);
        let resp = stack.oneshot(upstream).await.map_err(|e| {
            if e.is::<Overflow>() {
                self.metrics.overflow(&cluster.service, &cluster.subset);
            }
            Reason::of(&e)
        })?;

        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        headers::apply(&mut parts.headers, destination.response_headers.as_ref());
        headers::apply(&mut parts.headers, route.response_headers.as_ref());
        let body = body::stream(body);
        Ok(Response::from_parts(parts, body))
    }
}

/// The consistent-hash key of a request, if it carries one.
fn hash_key<B>(policy: &HashPolicy, req: &Request<B>) -> Option<u64> {
    match policy {
        HashPolicy::Header(name) => req.headers().get(name).map(|v| stable_hash(v.as_bytes())),
        HashPolicy::Cookie(name) => req
            .headers()
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == name).then(|| stable_hash(v))
            }),
        HashPolicy::SourceIp => req
            .extensions()
            .get::<PeerAddr>()
            .map(|p| stable_hash(p.0.ip())),
        HashPolicy::QueryParameter(name) => req.uri().query()?.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then(|| stable_hash(v))
        }),
    }
}

/// True for `percent`% of calls.
fn chance(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && fastrand::f64() * 100.0 < percent)
}

/// Host, path rewrite, hop-by-hop headers, header operations and protocol
/// of the upstream request. The endpoint is filled in per attempt.
fn prepare(
    parts: &mut http::request::Parts,
    route: &Route,
    destination: &WeightedCluster,
) -> Result<(), Reason> {
    // An HTTP/2 request names its authority only in the URI: keep it as Host.
    if !parts.headers.contains_key(HOST) {
        if let Some(a) = parts.uri.authority() {
            let host = HeaderValue::from_str(a.as_str()).map_err(|_| Reason::BadRequest)?;
            parts.headers.insert(HOST, host);
        }
    }
    if let Some(authority) = route
        .rewrite
        .as_ref()
        .map(|r| r.authority.as_str())
        .filter(|a| !a.is_empty())
    {
        let host = HeaderValue::from_str(authority).map_err(|_| Reason::BadRequest)?;
        parts.headers.insert(HOST, host);
    }
    let path_and_query = match route.rewrite_path(parts.uri.path()) {
        Some(path) => match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        }
        .parse()
        .map_err(|_| Reason::BadRequest)?,
        None => parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    };
    headers::strip_hop_by_hop(&mut parts.headers);
    if destination.cluster.protocol == Protocol::Http2 {
        // HTTP/2 carries the authority as :authority, from the URI.
        into_http2_form(parts, path_and_query).map_err(|_| Reason::BadRequest)?;
    } else {
        parts.uri = Uri::from(path_and_query);
        parts.version = Version::HTTP_11;
    }
    headers::apply(&mut parts.headers, route.request_headers.as_ref());
    headers::apply(&mut parts.headers, destination.request_headers.as_ref());
    Ok(())
}
