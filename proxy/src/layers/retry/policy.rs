//! The per-request retry policy of a [`super::Retry`]: counts attempts,
//! classifies outcomes, enforces idempotency and the budget, and sleeps a
//! jittered exponential backoff between attempts.

use std::sync::Arc;
use std::time::Duration;

use http::Response;
use tokio::time::Sleep;

use super::{RetriesExhausted, RetryBudget, RetryConditions, RetryReason};
use crate::body::BoxError;
use crate::layers::breaker::RetryGate;
use crate::layers::timeout::Deadline;
use crate::metrics::Metrics;

const BACKOFF_BASE: Duration = Duration::from_millis(25);
const BACKOFF_CAP: Duration = Duration::from_millis(250);

/// The retry rules of a route's requests to one destination, and the
/// retry state of one request (each call works on its own copy).
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
    /// The policy of a route's requests (each call starts from a copy).
    pub fn new(
        retries: u32,
        conditions: Arc<RetryConditions>,
        replay_safe: bool,
        budget: Arc<RetryBudget>,
        metrics: Arc<Metrics>,
    ) -> Self {
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

    /// Counts a request in the destination's budget (retries are a share of requests).
    pub(super) fn record_request(&self) {
        self.budget.deposit();
    }

    /// Another attempt may follow the next one (a replay copy is worth keeping).
    pub(super) fn may_retry(&self) -> bool {
        self.remaining > 0
    }

    /// Decides on the outcome of an attempt: the backoff before the next
    /// one, or `None` to return `result` (which may be rewritten to say
    /// why no retry was made).
    pub(super) fn retry<B>(&mut self, result: &mut Result<Response<B>, BoxError>) -> Option<Sleep> {
        self.release(); // the previous retry, if any, is over
        let reason = match result {
            Ok(resp) => self.conditions.on_response(resp.status(), resp.headers()),
            Err(e) => self.conditions.on_error(e),
        }?;
        // A retry on a gRPC status is gRPC's own retry policy: the codes the
        // route names are the ones its owner declares safe to send again,
        // whatever the method (gRPC always uses POST).
        let grpc = reason == RetryReason::Grpc;
        if !self.replay_safe && !reason.never_reached_upstream() && !grpc {
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
            if let Err(last) = result {
                let last = std::mem::replace(last, BoxError::from("taken"));
                *result = Err(RetriesExhausted(last).into());
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
    use crate::body::RequestBody;
    use crate::layers::retry::Retry;
    use http::Request;
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
        let resp = tower::Layer::layer(&crate::layers::retry::RetryLayer::new(p), svc)
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
            let err = Retry::new(p, per_try)
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
        // rides in the service every attempt of the request goes through:
        // this fails if the retry future ever made attempts on fresh clones.
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
            let retry = Retry::new(policy(2, &["5xx"], true, ample()), balance);
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

    #[tokio::test(start_paused = true)]
    async fn every_attempt_sends_the_same_request() {
        // Three attempts: the second from the kept copy, the last from the
        // copy itself. Each must be the request as it first came.
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let svc = tower::service_fn(move |req: Request<RequestBody>| {
            let record = record.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = http_body_util::BodyExt::collect(body).await?.to_bytes();
                let mut seen = record.lock().expect("lock");
                seen.push((parts.method, parts.uri, parts.headers, body));
                let status = if seen.len() < 3 { 503 } else { 200 };
                let mut resp = Response::new(());
                *resp.status_mut() = http::StatusCode::from_u16(status).expect("valid status");
                Ok::<_, BoxError>(resp)
            }
        });
        let mut req = Request::new(RequestBody::Buffered {
            data: Some(bytes::Bytes::from_static(b"{\"order\": 1}")),
            trailers: None,
        });
        *req.method_mut() = http::Method::PUT;
        *req.uri_mut() = "/orders/1?dry=1".parse().expect("uri");
        let headers = req.headers_mut();
        headers.insert("host", "shop".parse().expect("value"));
        headers.append("x-tag", "a".parse().expect("value"));
        headers.append("x-tag", "b".parse().expect("value"));
        let resp = Retry::new(policy(2, &["5xx"], true, ample()), svc)
            .oneshot(req)
            .await
            .expect("a response");
        assert_eq!(resp.status(), 200);
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.len(), 3);
        for (method, uri, headers, body) in seen.iter() {
            assert_eq!(method, http::Method::PUT);
            assert_eq!(uri, "/orders/1?dry=1");
            assert_eq!(headers.get("host").expect("host"), "shop");
            let tags: Vec<_> = headers.get_all("x-tag").iter().collect();
            assert_eq!(tags, ["a", "b"], "both values, in order");
            assert_eq!(headers.len(), 3);
            assert_eq!(&body[..], b"{\"order\": 1}");
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
