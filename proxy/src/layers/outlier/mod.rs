//! Outlier detection (the circuit breaker per endpoint), as a tower
//! service: [`Outlier`] sits under the balancer, watches the outcome of
//! every attempt at the endpoint the balancer [`Picked`], and ejects
//! endpoints that fail. Consecutive 5xx (`consecutive5xxErrors`) or gateway
//! failures (`consecutiveGatewayErrors`: 502/503/504, connect failure,
//! reset) eject an endpoint for `baseEjectionTime` × the number of times it
//! was ejected. When that time is up the endpoint gets one probe request
//! (half-open): success brings it back, failure ejects it again for twice as
//! long. At most `maxEjectionPercent` of a destination's endpoints are out
//! at once (at least one may be); when every endpoint is out the balancer
//! sends to all of them (panic mode). The layer never fails a call itself,
//! so it has no error type.

mod future;
mod layer;
mod state;

pub use future::ResponseFuture;
pub use layer::OutlierLayer;
pub use state::{Health, Outcome, OutlierConfig, OutlierState, Transition};

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

use crate::body::BoxError;
use crate::layers::picked::Picked;

/// The outlier state of a destination's endpoints (index as in
/// [`crate::layers::balance::Targets`]) and its settings.
#[derive(Debug)]
pub struct OutlierGroup {
    pub config: OutlierConfig,
    pub members: Vec<Member>,
    /// Ejections of this destination's endpoints.
    pub ejections: Counter,
    /// The destination, for logs.
    pub name: String,
}

#[derive(Debug)]
pub struct Member {
    /// `address:port`, for logs.
    pub endpoint: String,
    pub state: Arc<OutlierState>,
}

impl OutlierGroup {
    /// Records the outcome of an attempt at endpoint `index`.
    pub fn report(&self, index: usize, outcome: Outcome) -> Transition {
        let Some(member) = self.members.get(index) else {
            return Transition::None;
        };
        if outcome == Outcome::Success && member.state.is_quiet() {
            return Transition::None; // nothing to reset: no lock, no clock
        }
        // Counting the ejected endpoints takes a lock each: only on failure.
        let may_eject = outcome != Outcome::Success && {
            let out = self.members.iter().filter(|m| m.state.is_out()).count();
            out < max_ejected(self.members.len(), self.config.max_ejection_percent)
        };
        let transition = member
            .state
            .report(outcome, &self.config, may_eject, Instant::now());
        let endpoint = &member.endpoint;
        match transition {
            Transition::Ejected(duration) => {
                self.ejections.inc();
                tracing::warn!(cluster = %self.name, %endpoint, ?duration, "endpoint ejected");
            }
            Transition::Restored => {
                tracing::info!(cluster = %self.name, %endpoint, "endpoint restored after a successful probe");
            }
            Transition::None => {}
        }
        transition
    }

    /// `n` healthy endpoints named `10.0.0.i:80`, for tests.
    #[cfg(test)]
    pub(crate) fn for_test(n: usize, config: OutlierConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            members: (0..n)
                .map(|i| Member {
                    endpoint: format!("10.0.0.{i}:80"),
                    state: Arc::default(),
                })
                .collect(),
            ejections: Counter::default(),
            name: "test".into(),
        })
    }

    /// Endpoints by health: (healthy, ejected, probing).
    pub fn health_counts(&self) -> (usize, usize, usize) {
        self.members
            .iter()
            .fold((0, 0, 0), |(h, e, p), m| match m.state.health() {
                Health::Healthy => (h + 1, e, p),
                Health::Ejected { .. } => (h, e + 1, p),
                Health::Probing => (h, e, p + 1),
            })
    }
}

/// Reports the outcome of each call to the endpoint it was [`Picked`] for.
/// Without a group (no outlier detection) it only passes calls through.
#[derive(Clone, Debug)]
pub struct Outlier<S> {
    inner: S,
    group: Option<Arc<OutlierGroup>>,
}

impl<S> Outlier<S> {
    pub fn new(inner: S, group: Option<Arc<OutlierGroup>>) -> Self {
        Self { inner, group }
    }
}

impl<S, B, R> tower::Service<Request<B>> for Outlier<S>
where
    S: tower::Service<Request<B>, Response = http::Response<R>, Error = BoxError>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let report = self.group.as_ref().and_then(|group| {
            let Picked(index) = *req.extensions().get::<Picked>()?;
            Some((group.clone(), index))
        });
        ResponseFuture::new(self.inner.call(req), report)
    }
}

/// How many of `total` endpoints may be ejected at once.
pub fn max_ejected(total: usize, percent: u32) -> usize {
    if percent == 0 {
        return 0;
    }
    (total * percent.min(100) as usize / 100).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Response, StatusCode};
    use std::time::Duration;
    use tower::{Layer, ServiceExt};
    use tower_test::mock;

    fn group(n: usize) -> Arc<OutlierGroup> {
        OutlierGroup::for_test(
            n,
            OutlierConfig {
                consecutive_5xx: 3,
                consecutive_gateway: 0,
                base_ejection: Duration::from_secs(30),
                max_ejection_percent: 50,
                interval: Duration::ZERO,
            },
        )
    }

    fn to(index: usize) -> Request<()> {
        let mut req = Request::new(());
        req.extensions_mut().insert(Picked(index));
        req
    }

    type Mock = mock::Mock<Request<()>, Response<()>>;
    type Handle = mock::Handle<Request<()>, Response<()>>;

    /// One call through `svc` to endpoint `index`, answered with `status`
    /// (or an error when `None`).
    async fn call(svc: &Outlier<Mock>, handle: &mut Handle, index: usize, status: Option<u16>) {
        let call = tokio::spawn(svc.clone().oneshot(to(index)));
        let (req, reply) = handle.next_request().await.expect("request");
        assert_eq!(req.extensions().get::<Picked>(), Some(&Picked(index)));
        match status {
            Some(s) => {
                let mut resp = Response::new(());
                *resp.status_mut() = StatusCode::from_u16(s).expect("valid status");
                reply.send_response(resp);
            }
            None => reply.send_error("connection reset"),
        }
        let _ = call.await.expect("task");
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_of_one_endpoint_eject_it() {
        let group = group(4);
        let (svc, mut handle) = mock::pair::<Request<()>, Response<()>>();
        let svc = OutlierLayer::new(Some(group.clone())).layer(svc);
        // 500, 500, 200 on endpoint 0: the success resets the count
        for status in [500, 500, 200] {
            call(&svc, &mut handle, 0, Some(status)).await;
        }
        // endpoint 1 fails between endpoint 0's failures: counts are per endpoint
        for (index, status) in [(0, Some(500)), (1, None), (0, Some(503))] {
            call(&svc, &mut handle, index, status).await;
        }
        assert_eq!(group.members[0].state.health(), Health::Healthy);
        call(&svc, &mut handle, 0, Some(502)).await;
        assert!(matches!(
            group.members[0].state.health(),
            Health::Ejected { .. }
        ));
        assert_eq!(group.ejections.get(), 1);
        // maxEjectionPercent 50 of 4: a second may go, a third may not
        for _ in 0..3 {
            call(&svc, &mut handle, 1, None).await;
            call(&svc, &mut handle, 2, Some(500)).await;
        }
        assert_eq!(group.health_counts(), (2, 2, 0));
        assert_eq!(group.ejections.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_probe_decides_and_a_dropped_probe_frees_its_slot() {
        let group = group(2);
        let state = &group.members[0].state;
        let (svc, mut handle) = mock::pair::<Request<()>, Response<()>>();
        let svc = Outlier::new(svc, Some(group.clone()));
        for _ in 0..3 {
            call(&svc, &mut handle, 0, Some(500)).await;
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(state.available(Instant::now()));
        state.admit(Instant::now());
        assert!(!state.available(Instant::now()), "one probe at a time");

        // the probe is cancelled: the next request may probe
        let probe = tokio::spawn(svc.clone().oneshot(to(0)));
        let _ = handle.next_request().await.expect("probe sent");
        probe.abort();
        let _ = probe.await;
        assert!(state.available(Instant::now()));

        // a failed probe ejects for twice as long
        state.admit(Instant::now());
        call(&svc, &mut handle, 0, Some(500)).await;
        let Health::Ejected { until } = state.health() else {
            panic!("re-ejected");
        };
        assert_eq!(until - Instant::now(), Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(60)).await;
        state.admit(Instant::now());
        call(&svc, &mut handle, 0, Some(200)).await;
        assert_eq!(state.health(), Health::Healthy);
    }

    #[tokio::test(start_paused = true)]
    async fn without_detection_nothing_is_recorded() {
        let (svc, mut handle) = mock::pair::<Request<()>, Response<()>>();
        let svc = Outlier::new(svc, None);
        let call = tokio::spawn(svc.oneshot(to(0)));
        let (_, reply) = handle.next_request().await.expect("request");
        let mut resp = Response::new(());
        *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        reply.send_response(resp);
        let resp = call.await.expect("task").expect("passed through");
        assert_eq!(resp.status(), 500);
    }
}
