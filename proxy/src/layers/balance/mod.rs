//! Endpoint selection for a destination, as a tower service: [`Balance`]
//! picks an endpoint of its [`Targets`] for each request, marks the request
//! with it ([`Picked`]) and calls the endpoint service beneath, which sends
//! to that endpoint. Algorithms: `ROUND_ROBIN`, `RANDOM`, `LEAST_REQUEST`
//! (power of two choices on in-flight requests), ring-hash `consistentHash`,
//! and the default: power of two choices on peak-EWMA latency × in-flight
//! requests. Ejected endpoints are skipped unless every endpoint is out
//! (panic mode); a retry avoids the endpoints its request already tried.
//! The per-request state (hash key, endpoints tried) lives in the service,
//! not in request extensions: a `Balance` is built for each request.
//!
//! Not `tower::balance`: its `Balance` is driven through `&mut self` and
//! must sit behind a `Buffer` (one more task hop per request) to be shared
//! by concurrent connections. Our endpoints keep their load in atomics
//! ([`EndpointLoad`]) that every connection reads and updates directly.

mod error;
mod future;
mod layer;
mod load;
mod ring;

pub use error::NoEndpoint;
pub use future::ResponseFuture;
pub use layer::BalanceLayer;
pub use load::EndpointLoad;
pub use ring::{stable_hash, Ring};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;

use http::Request;
use prometheus_client::metrics::counter::Counter;

use crate::body::BoxError;
use crate::layers::outlier::OutlierGroup;

/// The endpoints of one destination as the balancer sees them; index `i`
/// is the same endpoint in every vector and in [`Picked`].
#[derive(Debug)]
pub struct Targets {
    pub balancer: Balancer,
    /// Load of each endpoint, shared by every connection.
    pub loads: Vec<Arc<EndpointLoad>>,
    /// Outlier state of the endpoints; `None` when the destination has no
    /// outlier detection (every endpoint is always available).
    pub health: Option<Arc<OutlierGroup>>,
    /// Picks made in panic mode.
    pub panic: Counter,
}

pub use crate::layers::picked::Picked;

/// The balancer's choice for one attempt.
#[derive(Debug, Clone, Copy)]
pub struct Selected {
    pub index: usize,
    /// Every endpoint was ejected: sent anyway.
    pub panic: bool,
}

/// Endpoints a request has been sent to: a bit per endpoint index (modulo
/// 64, so past 64 endpoints a retry may avoid an endpoint it did not try;
/// it never fails for it).
#[derive(Clone, Copy, Debug, Default)]
pub struct Tried(u64);

impl Tried {
    fn contains(self, index: usize) -> bool {
        self.0 & bit(index) != 0
    }

    fn push(&mut self, index: usize) {
        self.0 |= bit(index);
    }
}

fn bit(index: usize) -> u64 {
    1 << (index % 64)
}

impl Targets {
    /// Picks an endpoint for one attempt: among available endpoints, those
    /// not yet `tried` by this request when there are any; when every
    /// endpoint is ejected, among all (panic mode).
    pub fn select(&self, key: Option<u64>, tried: Option<Tried>) -> Option<Selected> {
        let n = self.loads.len();
        // The clock is read only for an endpoint that is not healthy.
        let now = std::cell::OnceCell::new();
        let now = || *now.get_or_init(Instant::now);
        let load = |i: usize| &*self.loads[i];
        let available = |i: usize| {
            self.health.as_ref().is_none_or(|h| {
                let state = &h.members[i].state;
                state.is_healthy() || state.available(now())
            })
        };
        let fresh = |i: usize| available(i) && !tried.is_some_and(|t| t.contains(i));
        let pick = |eligible: &dyn Fn(usize) -> bool| self.balancer.pick(n, &load, eligible, key);
        if let Some(index) = pick(&fresh).or_else(|| pick(&available)) {
            if let Some(health) = &self.health {
                let state = &health.members[index].state;
                if !state.is_healthy() {
                    state.admit(now());
                }
            }
            return Some(Selected {
                index,
                panic: false,
            });
        }
        pick(&|_| true).map(|index| Selected { index, panic: true })
    }
}

/// Sends each request to the endpoint its destination's balancer picks.
#[derive(Clone, Debug)]
pub struct Balance<S> {
    inner: S,
    targets: Arc<Targets>,
    /// The request's consistent-hash key.
    key: Option<u64>,
    /// Endpoints tried by the calls of this service. The retry layer makes
    /// every attempt of a request through one service, so a retry avoids
    /// the endpoints the earlier attempts went to.
    tried: Option<Tried>,
}

impl<S> Balance<S> {
    pub fn new(inner: S, targets: Arc<Targets>) -> Self {
        Self {
            inner,
            targets,
            key: None,
            tried: None,
        }
    }

    /// The balancer of one request: `key` is its consistent-hash key; with
    /// `retried`, each call avoids the endpoints the earlier calls went to.
    pub fn for_request(mut self, key: Option<u64>, retried: bool) -> Self {
        self.key = key;
        self.tried = retried.then(Tried::default);
        self
    }
}

impl<S, B> tower::Service<Request<B>> for Balance<S>
where
    S: tower::Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let Some(selected) = self.targets.select(self.key, self.tried) else {
            return ResponseFuture::no_endpoint();
        };
        if let Some(tried) = &mut self.tried {
            tried.push(selected.index);
        }
        if selected.panic {
            self.targets.panic.inc();
        }
        req.extensions_mut().insert(Picked(selected.index));
        ResponseFuture::sent(self.inner.call(req), self.targets.clone(), selected.index)
    }
}

/// How a destination picks among its eligible endpoints.
#[derive(Debug)]
pub enum Balancer {
    RoundRobin(AtomicUsize),
    Random,
    LeastRequest,
    PeakEwma,
    /// Ring hash over endpoint indexes; requests without a key fall back to P2C.
    RingHash(Ring),
}

impl Balancer {
    /// Picks an index of `loads` for which `eligible` holds. `key` is the
    /// request's hash key (consistent hashing only).
    pub fn pick<'a>(
        &self,
        n: usize,
        load: &dyn Fn(usize) -> &'a EndpointLoad,
        eligible: &dyn Fn(usize) -> bool,
        key: Option<u64>,
    ) -> Option<usize> {
        if n == 0 {
            return None;
        }
        match self {
            Self::RoundRobin(next) => {
                // The turn passes only on a pick, and to the endpoint after
                // the one picked: skipping an ineligible endpoint neither
                // doubles its successor's share nor wastes a turn.
                let start = next.load(Ordering::Relaxed);
                let picked = (0..n).map(|k| (start + k) % n).find(|i| eligible(*i))?;
                next.store(picked + 1, Ordering::Relaxed);
                Some(picked)
            }
            Self::Random => {
                let start = fastrand::usize(..n);
                (0..n).map(|k| (start + k) % n).find(|i| eligible(*i))
            }
            Self::LeastRequest => p2c(n, eligible, |i| f64::from(load(i).in_flight())),
            Self::PeakEwma => p2c(n, eligible, |i| load(i).cost()),
            Self::RingHash(ring) => match key {
                Some(key) => ring.lookup(key, eligible),
                None => p2c(n, eligible, |i| load(i).cost()),
            },
        }
    }
}

/// Power of two choices: two distinct random eligible endpoints, the one
/// with the lower `cost` wins. No allocation: each choice scans from a
/// random start to the next eligible endpoint.
fn p2c(n: usize, eligible: &dyn Fn(usize) -> bool, cost: impl Fn(usize) -> f64) -> Option<usize> {
    let from = |start: usize, skip: Option<usize>| {
        (0..n)
            .map(|k| (start + k) % n)
            .find(|i| Some(*i) != skip && eligible(*i))
    };
    let a = from(fastrand::usize(..n), None)?;
    match from(fastrand::usize(..n), Some(a)) {
        Some(b) if cost(b) < cost(a) => Some(b),
        _ => Some(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(n: usize) -> Vec<EndpointLoad> {
        (0..n).map(|_| EndpointLoad::default()).collect()
    }

    #[test]
    fn round_robin_cycles_over_eligible() {
        let l = loads(3);
        let b = Balancer::RoundRobin(AtomicUsize::new(0));
        let picks: Vec<_> = (0..6)
            .filter_map(|_| b.pick(3, &|i| &l[i], &|i| i != 1, None))
            .collect();
        assert_eq!(
            picks,
            [0, 2, 0, 2, 0, 2],
            "even turns around the skipped endpoint"
        );
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let l = loads(2);
        for _ in 0..10 {
            l[0].start();
        }
        let b = Balancer::LeastRequest;
        assert!((0..100).all(|_| b.pick(2, &|i| &l[i], &|_| true, None) == Some(1)));
    }

    #[test]
    fn nothing_eligible_picks_nothing() {
        let l = loads(2);
        for b in [
            Balancer::Random,
            Balancer::PeakEwma,
            Balancer::RoundRobin(AtomicUsize::new(0)),
        ] {
            assert_eq!(b.pick(2, &|i| &l[i], &|_| false, None), None);
        }
    }

    mod service {
        use super::super::*;
        use crate::layers::outlier::{Outcome, OutlierConfig};
        use http::Response;
        use tower::{Layer, Service, ServiceExt};
        use tower_test::mock;

        fn targets(n: usize, outlier: bool) -> Arc<Targets> {
            Arc::new(Targets {
                balancer: Balancer::RoundRobin(AtomicUsize::new(0)),
                loads: (0..n).map(|_| Arc::default()).collect(),
                health: outlier.then(|| {
                    OutlierGroup::for_test(
                        n,
                        OutlierConfig {
                            consecutive_5xx: 1,
                            consecutive_gateway: 0,
                            base_ejection: std::time::Duration::from_secs(30),
                            max_ejection_percent: 100,
                            interval: std::time::Duration::ZERO,
                        },
                    )
                }),
                panic: Counter::default(),
            })
        }

        fn eject(targets: &Targets, index: usize) {
            let group = targets.health.as_ref().expect("outlier detection on");
            group.members[index].state.report(
                Outcome::GatewayFailure,
                &group.config,
                true,
                Instant::now(),
            );
        }

        /// Sends `req` through `svc` (itself, not a clone: it keeps the
        /// endpoints tried), answers it, and returns the endpoint it went to.
        async fn send(
            svc: &mut Balance<mock::Mock<Request<()>, Response<()>>>,
            handle: &mut mock::Handle<Request<()>, Response<()>>,
            req: Request<()>,
        ) -> usize {
            let call = tokio::spawn(svc.ready().await.expect("ready").call(req));
            let (req, reply) = handle.next_request().await.expect("request");
            reply.send_response(Response::new(()));
            call.await.expect("task").expect("answered");
            req.extensions().get::<Picked>().expect("marked").0
        }

        #[tokio::test(start_paused = true)]
        async fn skips_ejected_endpoints_until_all_are_out() {
            let targets = targets(3, true);
            let (svc, mut handle) = mock::pair::<Request<()>, Response<()>>();
            let mut svc = BalanceLayer::new(targets.clone()).layer(svc);
            eject(&targets, 0);
            for _ in 0..30 {
                assert_ne!(send(&mut svc, &mut handle, Request::new(())).await, 0);
            }
            assert_eq!(targets.panic.get(), 0);
            eject(&targets, 1);
            eject(&targets, 2);
            let mut seen = [false; 3];
            for _ in 0..30 {
                seen[send(&mut svc, &mut handle, Request::new(())).await] = true;
            }
            assert_eq!(seen, [true; 3], "panic mode sends to every endpoint");
            assert_eq!(targets.panic.get(), 30);
        }

        #[tokio::test(start_paused = true)]
        async fn a_retry_avoids_the_endpoints_it_tried() {
            let targets = targets(3, false);
            let (svc, mut handle) = mock::pair::<Request<()>, Response<()>>();
            let svc = Balance::new(svc, targets);
            for _ in 0..20 {
                let mut request = svc.clone().for_request(None, true);
                let mut picks = Vec::new();
                for _ in 0..4 {
                    picks.push(send(&mut request, &mut handle, Request::new(())).await);
                }
                let mut first3 = picks[..3].to_vec();
                first3.sort_unstable();
                assert_eq!(first3, [0, 1, 2], "three attempts, three endpoints");
            }
        }

        #[tokio::test(start_paused = true)]
        async fn counts_a_request_in_flight_until_it_completes_or_is_dropped() {
            let targets = targets(1, false);
            let (svc, mut handle) = mock::pair::<Request<()>, Response<()>>();
            let svc = Balance::new(svc, targets.clone());
            let answered = tokio::spawn(svc.clone().oneshot(Request::new(())));
            let (_, reply) = handle.next_request().await.expect("request");
            let dropped = tokio::spawn(svc.clone().oneshot(Request::new(())));
            let _ = handle.next_request().await.expect("request");
            assert_eq!(targets.loads[0].in_flight(), 2);
            tokio::time::advance(std::time::Duration::from_millis(40)).await;
            reply.send_response(Response::new(()));
            answered.await.expect("task").expect("answered");
            dropped.abort();
            let _ = dropped.await;
            assert_eq!(targets.loads[0].in_flight(), 0);
        }

        #[tokio::test(start_paused = true)]
        async fn no_endpoints_fails_at_once() {
            let (svc, _handle) = mock::pair::<Request<()>, Response<()>>();
            let err = Balance::new(svc, targets(0, false))
                .oneshot(Request::new(()))
                .await
                .expect_err("nothing to send to");
            assert!(err.is::<NoEndpoint>());
        }
    }
}
