//! Circuit breaking by connection-pool limits (Envoy semantics), per
//! destination, as a tower service: [`Breaker`] lets at most
//! `maxConnections` (HTTP/1: one request per connection) and
//! `http2MaxRequests` requests be active at once, and at most
//! `http1MaxPendingRequests` wait for a slot. Anything over a limit fails
//! at once with [`Overflow`] (503 `overflow`): nothing queues without
//! bound. A request holds its slot until its response body is done, and
//! waits for one no later than its route's deadline (504, as any timeout).
//! [`RetryGate`] caps retries in flight (`maxRetries`) for the retry policy.

mod body;
mod error;
mod future;
mod layer;

pub use body::SlotBody;
pub use error::Overflow;
pub use future::ResponseFuture;
pub use layer::BreakerLayer;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::BoxError;
use crate::layers::timeout::{Deadline, Elapsed, TimeoutKind};

/// Active and pending request limits of one destination, shared by every
/// connection.
#[derive(Debug)]
pub struct PoolLimit {
    active: Arc<Semaphore>,
    pending: AtomicUsize,
    max_pending: usize,
    /// (max active, max pending): what this was built from.
    pub limits: (usize, usize),
}

impl PoolLimit {
    pub fn new(max_active: usize, max_pending: usize) -> Self {
        Self {
            active: Arc::new(Semaphore::new(max_active.min(Semaphore::MAX_PERMITS))),
            pending: AtomicUsize::new(0),
            max_pending,
            limits: (max_active, max_pending),
        }
    }

    /// A slot for one request, waiting only while fewer than `max_pending`
    /// others wait.
    pub async fn acquire(self: Arc<Self>) -> Result<OwnedSemaphorePermit, Overflow> {
        if let Ok(permit) = self.active.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(Overflow);
        }
        // Leaves the pending count even when the wait is cancelled.
        let _pending = Pending(&self.pending);
        self.active
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Overflow)
    }
}

struct Pending<'a>(&'a AtomicUsize);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A wait for a slot: `Overflow` or, past the route's deadline, `Elapsed`.
type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, BoxError>> + Send>>;

/// Where a [`Breaker`] is between `poll_ready` and `call`.
enum Admission {
    /// Nothing asked yet.
    Idle,
    /// Waiting for a slot as one of the pending requests.
    Waiting(Acquire),
    /// Holding a slot (`None` when there is no limit).
    Admitted(Option<OwnedSemaphorePermit>),
    /// Over the limits: the next call fails at once.
    Full,
}

/// Applies a destination's [`PoolLimit`] to each call.
pub struct Breaker<S> {
    inner: S,
    limit: Option<Arc<PoolLimit>>,
    admission: Admission,
    /// The route's deadline: no wait for a slot outlasts it.
    deadline: Option<Deadline>,
}

impl<S> Breaker<S> {
    /// `None`: no limits, calls pass through.
    pub fn new(inner: S, limit: Option<Arc<PoolLimit>>) -> Self {
        Self {
            inner,
            limit,
            admission: Admission::Idle,
            deadline: None,
        }
    }

    /// Ends a wait for a slot at `deadline`, as a route timeout.
    pub fn within(mut self, deadline: Option<Deadline>) -> Self {
        self.deadline = deadline;
        self
    }

    fn wait(&self, limit: Arc<PoolLimit>) -> Acquire {
        let Some(deadline) = self.deadline else {
            return Box::pin(async move { Ok(limit.acquire().await?) });
        };
        Box::pin(async move {
            match tokio::time::timeout_at(deadline.at, limit.acquire()).await {
                Ok(slot) => Ok(slot?),
                Err(_) => Err(Elapsed {
                    kind: TimeoutKind::Route,
                    after: deadline.after,
                }
                .into()),
            }
        })
    }
}

impl<S: Clone> Clone for Breaker<S> {
    /// A clone holds no slot of its own yet.
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), self.limit.clone()).within(self.deadline)
    }
}

impl<S> std::fmt::Debug for Breaker<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl<S, R, B> tower::Service<R> for Breaker<S>
where
    S: tower::Service<R, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
{
    type Response = http::Response<SlotBody<B>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        loop {
            match &mut self.admission {
                Admission::Idle => {
                    self.admission = match &self.limit {
                        None => Admission::Admitted(None),
                        Some(limit) => match limit.active.clone().try_acquire_owned() {
                            Ok(permit) => Admission::Admitted(Some(permit)),
                            Err(_) => Admission::Waiting(self.wait(limit.clone())),
                        },
                    }
                }
                Admission::Waiting(acquire) => {
                    self.admission = match std::task::ready!(acquire.as_mut().poll(cx)) {
                        Ok(permit) => Admission::Admitted(Some(permit)),
                        Err(e) if e.is::<Overflow>() => Admission::Full,
                        Err(expired) => {
                            self.admission = Admission::Idle;
                            return Poll::Ready(Err(expired));
                        }
                    }
                }
                Admission::Admitted(_) => return self.inner.poll_ready(cx).map_err(Into::into),
                // Ready to fail the call at once (as tower's load-shed does).
                Admission::Full => return Poll::Ready(Ok(())),
            }
        }
    }

    fn call(&mut self, req: R) -> Self::Future {
        match std::mem::replace(&mut self.admission, Admission::Idle) {
            Admission::Admitted(slot) => ResponseFuture::admitted(self.inner.call(req), slot),
            // Full, or called without `poll_ready`: refuse rather than exceed the limit.
            _ => ResponseFuture::overflow(),
        }
    }
}

/// Concurrent retries to one destination (`maxRetries`).
#[derive(Debug)]
pub struct RetryGate {
    active: AtomicU32,
    max: u32,
    /// The destination, for metric labels.
    pub service: String,
    pub subset: String,
}

impl RetryGate {
    pub fn new(max: u32, service: &str, subset: &str) -> Self {
        Self {
            active: AtomicU32::new(0),
            max,
            service: service.to_string(),
            subset: subset.to_string(),
        }
    }

    /// Takes a retry slot; false when `max` retries are in flight.
    pub fn enter(&self) -> bool {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn leave(&self) {
        let _ = self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use std::time::Duration;
    use tower::ServiceExt;
    use tower_test::mock;

    type Resp = http::Response<&'static str>;

    #[tokio::test(start_paused = true)]
    async fn one_active_one_pending_rest_overflow_at_once() {
        let limit = Arc::new(PoolLimit::new(1, 1));
        let (svc, mut handle) = mock::pair::<&str, Resp>();
        let breaker = Breaker::new(svc, Some(limit.clone()));

        let first = tokio::spawn(breaker.clone().oneshot("first"));
        let (_, reply_first) = handle.next_request().await.expect("first is sent");
        let second = tokio::spawn(breaker.clone().oneshot("second"));
        tokio::time::sleep(Duration::from_millis(1)).await;
        let started = tokio::time::Instant::now();
        for _ in 0..5 {
            let err = breaker
                .clone()
                .oneshot("excess")
                .await
                .expect_err("third and later requests overflow");
            assert!(err.is::<Overflow>());
        }
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "overflow waits for nothing"
        );
        assert!(
            !second.is_finished(),
            "the pending request waits for the slot"
        );

        reply_first.send_response(http::Response::new("one"));
        let response = first.await.expect("task").expect("first answered");
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(
            handle.next_request().now_or_never().is_none(),
            "the slot is held while the first response body lives"
        );
        drop(response);
        let (req, reply_second) = handle.next_request().await.expect("second is sent");
        assert_eq!(req, "second");
        reply_second.send_response(http::Response::new("two"));
        assert!(second.await.expect("task").is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_wait_leaves_the_pending_queue() {
        let limit = Arc::new(PoolLimit::new(1, 1));
        let (svc, mut handle) = mock::pair::<&str, Resp>();
        let breaker = Breaker::new(svc, Some(limit.clone()));
        let _first = tokio::spawn(breaker.clone().oneshot("first"));
        let _ = handle.next_request().await.expect("first is sent");
        let waiting = tokio::spawn(breaker.clone().oneshot("cancelled"));
        tokio::time::sleep(Duration::from_millis(1)).await;
        waiting.abort();
        let _ = waiting.await;
        // the pending place is free again: this one waits instead of overflowing
        let mut next = tokio::spawn(breaker.clone().oneshot("next"));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!((&mut next).now_or_never().is_none(), "waits for the slot");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_for_a_slot_ends_at_the_route_deadline() {
        let limit = Arc::new(PoolLimit::new(1, 1));
        let (svc, mut handle) = mock::pair::<&str, Resp>();
        let deadline = Deadline::after(Duration::from_millis(100));
        let breaker = Breaker::new(svc, Some(limit.clone())).within(Some(deadline));
        let _first = tokio::spawn(breaker.clone().oneshot("first"));
        let (_, _unanswered) = handle.next_request().await.expect("first is sent");
        let started = tokio::time::Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(1), breaker.clone().oneshot("waits"))
            .await
            .expect("the wait ends by the deadline")
            .expect_err("the slot stays taken past the deadline");
        let elapsed = err.downcast_ref::<Elapsed>().expect("a timeout");
        assert_eq!(elapsed.kind, TimeoutKind::Route);
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        // its pending place is free again: the next one waits, not overflows
        let mut next = tokio::spawn(breaker.clone().within(None).oneshot("next"));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!((&mut next).now_or_never().is_none(), "waits for the slot");
    }

    #[tokio::test(start_paused = true)]
    async fn no_limit_passes_through() {
        let (svc, mut handle) = mock::pair::<&str, Resp>();
        let breaker = Breaker::new(svc, None);
        let calls: Vec<_> = (0..50)
            .map(|_| tokio::spawn(breaker.clone().oneshot("r")))
            .collect();
        for _ in 0..50 {
            let (_, reply) = handle.next_request().await.expect("sent");
            reply.send_response(http::Response::new("ok"));
        }
        for call in calls {
            assert!(call.await.expect("task").is_ok());
        }
    }

    #[test]
    fn retry_gate_caps_concurrent_retries() {
        let gate = RetryGate::new(2, "s", "");
        assert!(gate.enter() && gate.enter());
        assert!(!gate.enter());
        gate.leave();
        assert!(gate.enter());
    }
}
