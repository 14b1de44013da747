//! The per-request retry policy handed to tower's `Retry`: counts attempts,
//! classifies outcomes, enforces idempotency and the budget, and sleeps a
//! jittered exponential backoff between attempts.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Sleep;

use super::{RetryBudget, RetryConditions};
use crate::body::{BoxError, RequestBody};
use crate::layers::breaker::RetryGate;
use crate::layers::timeout::Deadline;
use crate::metrics::Metrics;
use crate::outbound::local_reply::{LocalError, Reason};

const BACKOFF_BASE: Duration = Duration::from_millis(25);
const BACKOFF_CAP: Duration = Duration::from_millis(250);

/// Retry state of one request.
#[derive(Debug)]
pub struct RetryPolicy {
    remaining: u32,
    attempt: u32,
    conditions: Arc<RetryConditions>,
    /// The request may be retried after it reached the upstream.
    replay_safe: bool,
    budget: Arc<RetryBudget>,
    metrics: Arc<Metrics>,
    /// `maxRetries` of the destination.
    gate: Option<Arc<RetryGate>>,
    /// This request holds a slot of `gate` (a retry is in flight).
    holding: bool,
    /// The route's deadline: no backoff runs past it.
    deadline: Option<Deadline>,
}

impl Clone for RetryPolicy {
    fn clone(&self) -> Self {
        Self {
            remaining: self.remaining,
            attempt: self.attempt,
            conditions: self.conditions.clone(),
            replay_safe: self.replay_safe,
            budget: self.budget.clone(),
            metrics: self.metrics.clone(),
            gate: self.gate.clone(),
            holding: false, // a slot belongs to the copy that took it
            deadline: self.deadline,
        }
    }
}

impl Drop for RetryPolicy {
    fn drop(&mut self) {
        self.release();
    }
}

impl RetryPolicy {
    /// Policy for one request; records the request in the budget.
    pub fn new(
        retries: u32,
        conditions: Arc<RetryConditions>,
        replay_safe: bool,
        budget: Arc<RetryBudget>,
        metrics: Arc<Metrics>,
    ) -> Self {
        budget.deposit();
        Self {
            remaining: retries,
            attempt: 0,
            conditions,
            replay_safe,
            budget,
            metrics,
            gate: None,
            holding: false,
            deadline: None,
        }
    }

    /// Keeps the backoff within the route's `deadline`: a retry that would
    /// start after it waits for it instead, and its attempt (given the same
    /// deadline) then fails as a route timeout without being sent.
    pub fn within(mut self, deadline: Option<Deadline>) -> Self {
        self.deadline = deadline;
        self
    }

    /// Limits concurrent retries to the destination with `gate`.
    pub fn with_gate(mut self, gate: Option<Arc<RetryGate>>) -> Self {
        self.gate = gate;
        self
    }

    fn release(&mut self) {
        if self.holding {
            if let Some(gate) = &self.gate {
                gate.leave();
            }
            self.holding = false;
        }
    }
}

/// Idempotent methods (RFC 9110 §9.2.2): safe to send twice.
pub fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

impl<B> tower::retry::Policy<Request<RequestBody>, Response<B>, BoxError> for RetryPolicy {
    type Future = Sleep;

    fn retry(
        &mut self,
        _req: &mut Request<RequestBody>,
        result: &mut Result<Response<B>, BoxError>,
    ) -> Option<Sleep> {
        self.release(); // the previous retry, if any, is over
        let reason = match result {
            Ok(resp) => self.conditions.on_status(resp.status()),
            Err(e) => self.conditions.on_error(e),
        }?;
        if !self.replay_safe && !reason.never_reached_upstream() {
            return None;
        }
        let wait = backoff(self.attempt + 1);
        if let Some(deadline) = self.deadline {
            if self.remaining > 0 && tokio::time::Instant::now() + wait >= deadline.at {
                return Some(tokio::time::sleep_until(deadline.at));
            }
        }
        if self.remaining == 0 || !self.budget.withdraw() {
            // An upstream answer is returned as it is; a failure says why.
            if result.is_err() {
                *result = Err(LocalError(Reason::RetriesExhausted).into());
            }
            return None;
        }
        if let Some(gate) = &self.gate {
            if !gate.enter() {
                self.metrics.overflow(&gate.service, &gate.subset);
                return None;
            }
            self.holding = true;
        }
        self.remaining -= 1;
        self.attempt += 1;
        self.metrics.retry(reason.as_str());
        Some(tokio::time::sleep(wait))
    }

    fn clone_request(&mut self, req: &Request<RequestBody>) -> Option<Request<RequestBody>> {
        if self.remaining == 0 {
            return None;
        }
        let mut clone = Request::new(req.body().try_clone()?);
        *clone.method_mut() = req.method().clone();
        *clone.uri_mut() = req.uri().clone();
        *clone.version_mut() = req.version();
        *clone.headers_mut() = req.headers().clone();
        Some(clone)
    }
}

/// Full jitter: uniform in [0, min(cap, base * 2^(attempt-1))].
fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_CAP);
    ceiling.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    /// A service that answers the statuses it is given, in order, counting calls.
    fn scripted(
        statuses: Vec<u16>,
    ) -> (
        impl tower::Service<
                Request<RequestBody>,
                Response = Response<()>,
                Error = BoxError,
                Future = impl Send,
            > + Clone,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = calls.clone();
        let statuses = Arc::new(statuses);
        let svc = tower::service_fn(move |_req: Request<RequestBody>| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let status = statuses.get(n).copied().unwrap_or(200);
            async move {
                let mut resp = Response::new(());
                *resp.status_mut() = http::StatusCode::from_u16(status).expect("valid status");
                Ok::<_, BoxError>(resp)
            }
        });
        (svc, calls)
    }

    fn policy(
        retries: u32,
        on: &[&str],
        replay_safe: bool,
        budget: Arc<RetryBudget>,
    ) -> RetryPolicy {
        RetryPolicy::new(
            retries,
            Arc::new(RetryConditions::parse(on.iter().copied())),
            replay_safe,
            budget,
            Arc::new(Metrics::new()),
        )
    }

    /// A budget that never binds: for tests about something else.
    fn ample() -> Arc<RetryBudget> {
        Arc::new(RetryBudget::new(Duration::from_secs(10), 0, 100.0))
    }

    /// Runs one request through `Retry` over a backend answering `statuses`:
    /// (final status, backend calls).
    async fn run(statuses: Vec<u16>, p: RetryPolicy) -> (u16, usize) {
        let (svc, calls) = scripted(statuses);
        let resp = tower::retry::Retry::new(p, svc)
            .oneshot(Request::new(RequestBody::empty()))
            .await
            .expect("a response");
        (
            resp.status().as_u16(),
            calls.load(std::sync::atomic::Ordering::SeqCst),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_success() {
        let p = policy(3, &["5xx"], true, ample());
        assert_eq!(run(vec![503, 503, 200], p).await, (200, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn exhausted_returns_last_response() {
        let p = policy(2, &["5xx"], true, ample());
        assert_eq!(run(vec![503, 503, 503, 503], p).await, (503, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn unsafe_requests_are_not_retried_after_reaching_upstream() {
        let p = policy(3, &["5xx"], false, ample());
        assert_eq!(run(vec![503, 200], p).await, (503, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn budget_caps_retries() {
        // no minimum, 0% ratio: no retry is ever allowed
        let budget = Arc::new(RetryBudget::new(Duration::from_secs(10), 0, 0.0));
        let p = policy(3, &["5xx"], true, budget);
        assert_eq!(run(vec![503, 200], p).await, (503, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn max_retries_gate_stops_retries() {
        let gate = Arc::new(RetryGate::new(1, "s", ""));
        assert!(gate.enter(), "another request holds the only retry slot");
        let p = policy(3, &["5xx"], true, ample()).with_gate(Some(gate.clone()));
        assert_eq!(run(vec![503, 200], p).await, (503, 1));
        gate.leave();
        let p = policy(3, &["5xx"], true, ample()).with_gate(Some(gate.clone()));
        assert_eq!(run(vec![503, 200], p).await, (200, 2));
        assert!(gate.enter(), "the slot was given back");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_end_at_the_route_deadline() {
        use crate::layers::timeout::{Deadline, Elapsed, Timeout, TimeoutKind};
        // Backends failing at once (backoffs decide when the deadline comes)
        // and failing after 60 ms (an attempt is cut short by it): either
        // way the request ends exactly at the deadline, as a route timeout.
        for latency in [0, 60] {
            let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let counter = calls.clone();
            let backend = tower::service_fn(move |_req: Request<RequestBody>| {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    tokio::time::sleep(Duration::from_millis(latency)).await;
                    let mut resp = Response::new(());
                    *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                    Ok::<_, BoxError>(resp)
                }
            });
            let deadline = Some(Deadline::after(Duration::from_millis(100)));
            let per_try = Timeout::new(backend, Some(Duration::from_secs(1)), TimeoutKind::PerTry)
                .within(deadline);
            let p = policy(50, &["5xx"], true, ample()).within(deadline);
            let started = tokio::time::Instant::now();
            let err = tower::retry::Retry::new(p, per_try)
                .oneshot(Request::new(RequestBody::empty()))
                .await
                .expect_err("the deadline passes first");
            let elapsed = err.downcast_ref::<Elapsed>().expect("an Elapsed error");
            assert_eq!(elapsed.kind, TimeoutKind::Route, "latency {latency}");
            assert_eq!(started.elapsed(), Duration::from_millis(100));
            assert!(calls.load(std::sync::atomic::Ordering::SeqCst) >= 2);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_retry_goes_to_an_endpoint_not_yet_tried() {
        use crate::layers::balance::{Balance, Balancer, Picked, Targets};
        // Random picks would repeat an endpoint within three attempts in
        // most of these requests; only the tried set keeps them apart. It
        // rides in the service, which tower's Retry clones after the first
        // attempt: this fails if that order ever changes.
        let targets = Arc::new(Targets {
            balancer: Balancer::Random,
            loads: (0..3).map(|_| Arc::default()).collect(),
            health: None,
            panic: prometheus_client::metrics::counter::Counter::default(),
        });
        let picks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = picks.clone();
        let endpoints = tower::service_fn(move |req: Request<RequestBody>| {
            let picked = req.extensions().get::<Picked>().expect("picked").0;
            seen.lock().expect("lock").push(picked);
            async move {
                let mut resp = Response::new(());
                *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                Ok::<_, BoxError>(resp)
            }
        });
        for _ in 0..20 {
            picks.lock().expect("lock").clear();
            let balance = Balance::new(endpoints.clone(), targets.clone()).for_request(None, true);
            let retry = tower::retry::Retry::new(policy(2, &["5xx"], true, ample()), balance);
            let resp = retry
                .oneshot(Request::new(RequestBody::empty()))
                .await
                .expect("a response");
            assert_eq!(resp.status(), 503);
            let mut tried = picks.lock().expect("lock").clone();
            tried.sort_unstable();
            assert_eq!(tried, [0, 1, 2], "three attempts, three endpoints");
        }
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        for attempt in 1..20 {
            let d = backoff(attempt);
            assert!(d <= BACKOFF_CAP, "{d:?}");
        }
        assert!(backoff(1) <= BACKOFF_BASE);
    }
}
