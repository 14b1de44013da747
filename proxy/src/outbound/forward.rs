//! Sends a routed request to its destination through the route's
//! policies: fault injection, copies to mirrors, then route timeout -> pool limits -> retries
//! -> per-try timeout -> balancer -> outlier detection -> the endpoint's
//! client (`endpoint::Upstream`). The route timeout is a deadline from
//! routing on: it bounds the wait for a pool slot, and on a retried route it
//! is kept by the per-try timeout and the retry backoff.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use tower::util::Either;
use tower::ServiceExt;

use super::endpoint::Upstream;
use super::headers;
use super::local_reply::Reason;
use super::mirror::{request_head, Mirrors};
use super::request::prepare;
use super::sample::chance;
use crate::body::{self, ClientBody, ProxyBody, RequestBody, REPLAY_LIMIT};
use crate::discovery::cluster::HashPolicy;
use crate::discovery::model::{Route, WeightedCluster};
use crate::layers::balance::{stable_hash, Balance};
use crate::layers::breaker::{Breaker, Overflow};
use crate::layers::outlier::Outlier;
use crate::layers::retry::{Retry, RetryPolicy};
use crate::layers::timeout::{Deadline, Timeout, TimeoutKind};
use crate::metrics::Metrics;
use crate::transport::listen::PeerAddr;

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
    mirrors: Mirrors,
}

impl Forward {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            mirrors: Mirrors::new(metrics.clone()),
            metrics,
        }
    }

    pub async fn send(
        &self,
        req: Request<ClientBody>,
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
        let head = (!route.mirrors.is_empty()).then(|| request_head(&parts));
        let cluster = &destination.cluster;
        let extra = destination.request_headers.as_ref();
        prepare(&mut parts, route, cluster.protocol, extra, false)?;
        let replay_safe = route.retry.as_ref().is_some_and(|r| r.non_idempotent)
            || crate::layers::retry::is_idempotent(&parts.method);
        let mut body = match &route.retry {
            Some(_) => RequestBody::read(incoming, REPLAY_LIMIT)
                .await
                .map_err(|e| Reason::of(&e.into()))?,
            None => RequestBody::streaming(incoming),
        };
        if let Some(head) = &head {
            self.mirrors.start(route, head, &mut body);
        }
        let upstream = Request::from_parts(parts, body);
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
                let policy = RetryPolicy::new(
                    retry.retries,
                    retry.conditions.clone(),
                    replay_safe,
                    cluster.budget.clone(),
                    self.metrics.clone(),
                )
                .with_gate(cluster.retry_gate.clone())
                .within(deadline);
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
