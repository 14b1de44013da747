//! The future of an [`super::Outlier`] call: the endpoint's response
//! future, which reports the outcome when it completes. Dropped unfinished
//! (the request was cancelled), it reports nothing, but frees the
//! endpoint's probe slot if this call was the probe.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;

use pin_project_lite::pin_project;

use super::{Outcome, OutlierGroup};

pin_project! {
    /// Resolves to the inner result unchanged.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        report: Option<(Arc<OutlierGroup>, usize)>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some((group, index)) = this.project().report.take() {
                if let Some(member) = group.members.get(index) {
                    member.state.probe_abandoned(Instant::now());
                }
            }
        }
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn new(inner: F, report: Option<(Arc<OutlierGroup>, usize)>) -> Self {
        Self { inner, report }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Some((group, index)) = this.report.take() {
            let outcome = match &result {
                Ok(r) if r.status().is_server_error() => Outcome::ServerError {
                    gateway: matches!(r.status().as_u16(), 502..=504),
                },
                Ok(_) => Outcome::Success,
                Err(_) => Outcome::GatewayFailure,
            };
            group.report(index, outcome);
        }
        Poll::Ready(result)
    }
}
