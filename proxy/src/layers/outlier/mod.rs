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

pub use future::ResponseFuture;
pub use layer::OutlierLayer;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

use crate::layers::balance::Picked;

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
    S: tower::Service<Request<B>, Response = http::Response<R>>,
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

/// Settings from `trafficPolicy.outlierDetection`.
#[derive(Clone, Debug, PartialEq)]
pub struct OutlierConfig {
    /// 0 = off.
    pub consecutive_5xx: u32,
    /// 0 = off.
    pub consecutive_gateway: u32,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
}

/// What an attempt at an endpoint came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx response; `gateway` for 502, 503 and 504.
    ServerError {
        gateway: bool,
    },
    /// Connect failure or reset: no response at all.
    GatewayFailure,
}

/// The health of one endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Ejected {
        until: Instant,
    },
    /// Its ejection is over; one probe request is in flight.
    Probing,
}

#[derive(Debug)]
struct State {
    health: Health,
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejections: u32,
    last_ejection: Duration,
}

/// Outlier state of one endpoint, shared by every connection.
#[derive(Debug)]
pub struct OutlierState {
    state: Mutex<State>,
    /// What the state comes to, written under its lock and read without:
    /// the healthy endpoints of nearly every request need neither the lock
    /// nor the clock.
    summary: AtomicU8,
}

/// `summary`: healthy with no failure counted.
const QUIET: u8 = 0;
/// `summary`: healthy, some consecutive failures counted.
const COUNTING: u8 = 1;
/// `summary`: ejected or probing.
const OUT: u8 = 2;

impl Default for OutlierState {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                health: Health::Healthy,
                consecutive_5xx: 0,
                consecutive_gateway: 0,
                ejections: 0,
                last_ejection: Duration::ZERO,
            }),
            summary: AtomicU8::new(QUIET),
        }
    }
}

impl State {
    fn summary(&self) -> u8 {
        match self.health {
            Health::Healthy if self.consecutive_5xx == 0 && self.consecutive_gateway == 0 => QUIET,
            Health::Healthy => COUNTING,
            Health::Ejected { .. } | Health::Probing => OUT,
        }
    }
}

/// The state under its lock; the summary is brought up to date on unlock.
struct Locked<'a> {
    guard: std::sync::MutexGuard<'a, State>,
    summary: &'a AtomicU8,
}

impl std::ops::Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.guard
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.guard
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.summary.store(self.guard.summary(), Ordering::Release);
    }
}

/// A change worth counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    None,
    Ejected(Duration),
    Restored,
}

impl OutlierState {
    fn lock(&self) -> Locked<'_> {
        Locked {
            guard: self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            summary: &self.summary,
        }
    }

    /// Healthy (not ejected, not probing), read without the lock.
    pub fn is_healthy(&self) -> bool {
        self.summary.load(Ordering::Acquire) != OUT
    }

    /// Healthy with no failure counted, read without the lock.
    fn is_quiet(&self) -> bool {
        self.summary.load(Ordering::Acquire) == QUIET
    }

    pub fn health(&self) -> Health {
        self.lock().health
    }

    /// May take a request now (healthy, or its ejection is over and no
    /// probe is out yet).
    pub fn available(&self, now: Instant) -> bool {
        match self.lock().health {
            Health::Healthy => true,
            Health::Ejected { until } => now >= until,
            Health::Probing => false,
        }
    }

    /// Counts as ejected for `maxEjectionPercent`.
    pub fn is_out(&self) -> bool {
        !matches!(self.lock().health, Health::Healthy)
    }

    /// Called when the balancer picked this endpoint: an expired ejection
    /// turns into the single probe.
    pub fn admit(&self, now: Instant) {
        let mut s = self.lock();
        if matches!(s.health, Health::Ejected { until } if now >= until) {
            s.health = Health::Probing;
        }
    }

    /// A probe was abandoned (the request was cancelled): the next request
    /// may probe again.
    pub fn probe_abandoned(&self, now: Instant) {
        let mut s = self.lock();
        if s.health == Health::Probing {
            s.health = Health::Ejected { until: now };
        }
    }

    /// Records `outcome`; `may_eject` says whether the destination has room
    /// for one more ejected endpoint.
    pub fn report(
        &self,
        outcome: Outcome,
        cfg: &OutlierConfig,
        may_eject: bool,
        now: Instant,
    ) -> Transition {
        let mut s = self.lock();
        let failed = outcome != Outcome::Success;
        match (s.health, failed) {
            (Health::Probing, false) => {
                s.health = Health::Healthy;
                s.consecutive_5xx = 0;
                s.consecutive_gateway = 0;
                Transition::Restored
            }
            (Health::Probing, true) => {
                let d = (s.last_ejection * 2).max(cfg.base_ejection);
                s.ejections += 1;
                s.last_ejection = d;
                s.health = Health::Ejected { until: now + d };
                Transition::Ejected(d)
            }
            (Health::Ejected { .. }, _) => Transition::None, // a late answer from before the ejection
            (Health::Healthy, false) => {
                s.consecutive_5xx = 0;
                s.consecutive_gateway = 0;
                Transition::None
            }
            (Health::Healthy, true) => {
                let gateway = matches!(
                    outcome,
                    Outcome::GatewayFailure | Outcome::ServerError { gateway: true }
                );
                let server = matches!(outcome, Outcome::ServerError { .. });
                if server || outcome == Outcome::GatewayFailure {
                    s.consecutive_5xx += 1;
                }
                if gateway {
                    s.consecutive_gateway += 1;
                }
                let tripped = (cfg.consecutive_5xx > 0 && s.consecutive_5xx >= cfg.consecutive_5xx)
                    || (cfg.consecutive_gateway > 0
                        && s.consecutive_gateway >= cfg.consecutive_gateway);
                if tripped && may_eject {
                    s.ejections += 1;
                    let d = cfg.base_ejection * s.ejections;
                    s.last_ejection = d;
                    s.health = Health::Ejected { until: now + d };
                    s.consecutive_5xx = 0;
                    s.consecutive_gateway = 0;
                    Transition::Ejected(d)
                } else {
                    Transition::None
                }
            }
        }
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

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            consecutive_5xx: 3,
            consecutive_gateway: 0,
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 100,
        }
    }

    const ERR: Outcome = Outcome::ServerError { gateway: false };

    #[test]
    fn ejects_after_consecutive_errors_and_probes_once() {
        let s = OutlierState::default();
        let t0 = Instant::now();
        assert!(s.is_quiet());
        assert_eq!(s.report(ERR, &cfg(), true, t0), Transition::None);
        assert!(s.is_healthy() && !s.is_quiet(), "a failure is counted");
        assert_eq!(
            s.report(Outcome::Success, &cfg(), true, t0),
            Transition::None
        );
        assert!(s.is_quiet(), "a success clears the count");
        for _ in 0..2 {
            assert_eq!(s.report(ERR, &cfg(), true, t0), Transition::None);
        }
        assert_eq!(
            s.report(ERR, &cfg(), true, t0),
            Transition::Ejected(Duration::from_secs(30))
        );
        assert!(!s.is_healthy());
        assert!(!s.available(t0 + Duration::from_secs(29)));
        let later = t0 + Duration::from_secs(30);
        assert!(s.available(later));
        s.admit(later);
        assert_eq!(s.health(), Health::Probing);
        assert!(!s.available(later), "only one probe at a time");
        assert_eq!(
            s.report(Outcome::Success, &cfg(), true, later),
            Transition::Restored
        );
        assert_eq!(s.health(), Health::Healthy);
        assert!(s.is_quiet());
    }

    #[test]
    fn failed_probe_ejects_twice_as_long_and_repeat_ejections_grow() {
        let s = OutlierState::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            s.report(ERR, &cfg(), true, t0);
        }
        let t1 = t0 + Duration::from_secs(30);
        s.admit(t1);
        assert_eq!(
            s.report(ERR, &cfg(), true, t1),
            Transition::Ejected(Duration::from_secs(60))
        );
        let t2 = t1 + Duration::from_secs(60);
        s.admit(t2);
        assert_eq!(
            s.report(Outcome::Success, &cfg(), true, t2),
            Transition::Restored
        );
        for _ in 0..2 {
            s.report(ERR, &cfg(), true, t2);
        }
        // third ejection of this endpoint: 3 × base
        assert_eq!(
            s.report(ERR, &cfg(), true, t2),
            Transition::Ejected(Duration::from_secs(90))
        );
    }

    #[test]
    fn no_room_no_ejection() {
        let s = OutlierState::default();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(s.report(ERR, &cfg(), false, t0), Transition::None);
        }
        assert_eq!(s.health(), Health::Healthy);
        assert_eq!(max_ejected(3, 10), 1);
        assert_eq!(max_ejected(10, 50), 5);
        assert_eq!(max_ejected(3, 0), 0);
    }

    mod service {
        use super::super::*;
        use http::{Response, StatusCode};
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
}
