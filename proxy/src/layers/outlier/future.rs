//! The future of an [`super::Outlier`] call: the endpoint's response
//! future, which reports the outcome when it completes. Dropped unfinished
//! (the request was cancelled), it reports nothing, but frees the
//! endpoint's probe slot if this call was the probe; so does a call the
//! client itself broke (its request body failed), which says nothing of
//! the endpoint.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;

use pin_project_lite::pin_project;

use super::{Outcome, OutlierGroup};
use crate::body::BoxError;
use crate::transport::error::is_client_fault;

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

impl<F, B> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, BoxError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Some((group, index)) = this.report.take() {
            let outcome = match &result {
                Ok(r) if r.status().is_server_error() => Some(Outcome::ServerError {
                    gateway: matches!(r.status().as_u16(), 502..=504),
                }),
                Ok(_) => Some(Outcome::Success),
                // The client broke its own request: says nothing of the endpoint.
                Err(e) if is_client_fault(e.as_ref()) => None,
                Err(_) => Some(Outcome::GatewayFailure),
            };
            match (outcome, group.members.get(index)) {
                (Some(outcome), _) => {
                    group.report(index, outcome);
                }
                (None, Some(member)) => member.state.probe_abandoned(Instant::now()),
                (None, None) => {}
            }
        }
        Poll::Ready(result)
    }
}
