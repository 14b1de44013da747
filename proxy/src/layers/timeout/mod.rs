//! Bounds how long a service may take to respond. On expiry the inner
//! future is dropped — which cancels the upstream request — and the call
//! fails with [`Elapsed`]. Used twice: the route timeout around the retries,
//! and the per-try timeout around each attempt.

mod error;
mod future;
mod layer;

use std::task::{Context, Poll};
use std::time::Duration;

pub use error::{Elapsed, TimeoutKind};
pub use future::ResponseFuture;
pub use layer::TimeoutLayer;

use crate::body::BoxError;

/// A service whose calls fail with [`Elapsed`] after `timeout`.
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    timeout: Option<Duration>,
    kind: TimeoutKind,
}

impl<S> Timeout<S> {
    /// `None` means no deadline.
    pub fn new(inner: S, timeout: Option<Duration>, kind: TimeoutKind) -> Self {
        Self {
            inner,
            timeout,
            kind,
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
        ResponseFuture::new(self.inner.call(req), self.timeout, self.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
