//! Bounds how long a service may take to respond. On expiry the inner
//! future is dropped — which cancels the upstream request — and the call
//! fails with [`Elapsed`]. Used twice: the route timeout around the retries,
//! and the per-try timeout around each attempt.
//!
//! A retried request has one timer per attempt, not two: the route's
//! [`Deadline`] is then kept by each attempt's timeout (an attempt ends at
//! the earlier of its own timeout and the deadline, and reports which) and
//! by the retry backoff, and the route layer sets no timer of its own.

mod error;
mod future;
mod layer;

use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

pub use error::{Elapsed, TimeoutKind};
use future::Expiry;
pub use future::ResponseFuture;
pub use layer::TimeoutLayer;

use crate::body::BoxError;

/// A service whose calls fail with [`Elapsed`] after `timeout`.
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    timeout: Option<Duration>,
    kind: TimeoutKind,
    deadline: Option<Deadline>,
}

/// The end of a request's route timeout, fixed when the request is routed.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    pub at: Instant,
    /// The route timeout, for [`Elapsed`].
    pub after: Duration,
}

impl Deadline {
    /// `timeout` from now.
    pub fn after(timeout: Duration) -> Self {
        Self {
            at: Instant::now() + timeout,
            after: timeout,
        }
    }

    fn expiry(self) -> Expiry {
        Expiry {
            at: self.at,
            kind: TimeoutKind::Route,
            after: self.after,
        }
    }
}

impl<S> Timeout<S> {
    /// `None` means no deadline.
    pub fn new(inner: S, timeout: Option<Duration>, kind: TimeoutKind) -> Self {
        Self {
            inner,
            timeout,
            kind,
            deadline: None,
        }
    }

    /// Also ends every call at `deadline`, reported as a route timeout. A
    /// call made after the deadline fails at once, without calling `inner`.
    pub fn within(mut self, deadline: Option<Deadline>) -> Self {
        self.deadline = deadline;
        self
    }

    /// The earlier of this call's own timeout and the deadline.
    fn expiry(&self, now: Instant) -> Option<Expiry> {
        let own = self.timeout.map(|after| Expiry {
            at: now + after,
            kind: self.kind,
            after,
        });
        match (own, self.deadline) {
            (Some(own), Some(d)) if d.at < own.at => Some(d.expiry()),
            (None, Some(d)) => Some(d.expiry()),
            (own, _) => own,
        }
    }
}

impl<S, R> tower::Service<R> for Timeout<S>
where
    S: tower::Service<R>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: R) -> Self::Future {
        if self.timeout.is_none() && self.deadline.is_none() {
            return ResponseFuture::new(self.inner.call(req), None);
        }
        let now = Instant::now();
        match self.expiry(now) {
            Some(e) if e.at <= now => ResponseFuture::expired(e),
            expiry => ResponseFuture::new(self.inner.call(req), expiry),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use tower::ServiceExt;
    use tower_test::mock;

    /// Sets its flag when dropped: proves the inner call was cancelled.
    struct DropFlag(std::sync::Arc<std::sync::atomic::AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn expires_and_drops_the_inner_call() {
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = dropped.clone();
        let slow = tower::service_fn(move |_req: &str| {
            let guard = DropFlag(flag.clone());
            async move {
                tokio::time::sleep(Duration::from_secs(10)).await;
                drop(guard);
                Ok::<_, std::convert::Infallible>("late")
            }
        });
        let svc = Timeout::new(slow, Some(Duration::from_millis(100)), TimeoutKind::Route);
        let started = tokio::time::Instant::now();
        let err = svc.oneshot("req").await.expect_err("times out");
        let elapsed = err.downcast_ref::<Elapsed>().expect("an Elapsed error");
        assert_eq!(elapsed.kind, TimeoutKind::Route);
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        assert!(
            dropped.load(std::sync::atomic::Ordering::SeqCst),
            "inner call not cancelled"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_ends_the_call_as_a_route_timeout() {
        let (svc, mut handle) = mock::pair::<&str, &str>();
        let deadline = Deadline::after(Duration::from_millis(300));
        let svc = Timeout::new(svc, Some(Duration::from_secs(1)), TimeoutKind::PerTry)
            .within(Some(deadline));
        let started = tokio::time::Instant::now();
        let call = tokio::spawn(svc.oneshot("req"));
        let _pending = handle.next_request().await.expect("request");
        let err = call.await.expect("task").expect_err("times out");
        let elapsed = err.downcast_ref::<Elapsed>().expect("an Elapsed error");
        assert_eq!(elapsed.kind, TimeoutKind::Route);
        assert_eq!(elapsed.after, Duration::from_millis(300));
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_after_the_deadline_fails_without_being_made() {
        let (svc, mut handle) = mock::pair::<&str, &str>();
        let deadline = Deadline::after(Duration::from_millis(10));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let svc = Timeout::new(svc, Some(Duration::from_secs(1)), TimeoutKind::PerTry)
            .within(Some(deadline));
        let err = svc.oneshot("req").await.expect_err("already late");
        let elapsed = err.downcast_ref::<Elapsed>().expect("an Elapsed error");
        assert_eq!(elapsed.kind, TimeoutKind::Route);
        // The mock is gone: a request it received would still be queued.
        assert!(
            matches!(handle.next_request().now_or_never(), Some(None)),
            "the inner service was called"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn passes_through_in_time_and_without_deadline() {
        for timeout in [Some(Duration::from_secs(1)), None] {
            let (svc, mut handle) = mock::pair::<&str, &str>();
            let svc = Timeout::new(svc, timeout, TimeoutKind::PerTry);
            let call = tokio::spawn(svc.oneshot("req"));
            let (_req, send) = handle.next_request().await.expect("request");
            tokio::time::sleep(Duration::from_millis(500)).await;
            send.send_response("ok");
            assert_eq!(call.await.expect("task").expect("responds"), "ok");
        }
    }
}
