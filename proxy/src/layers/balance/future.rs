//! The future of a [`super::Balance`] call: the endpoint service's future,
//! which records the endpoint's latency and releases its in-flight count
//! when it completes, or only releases the count when dropped unfinished.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;

use pin_project_lite::pin_project;

use super::{NoEndpoint, Targets};
use crate::body::BoxError;

pin_project! {
    /// Resolves to the endpoint's result, or [`NoEndpoint`] at once.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        load: Option<InFlight>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(load) = this.project().load.take() {
                load.done();
            }
        }
    }
}

/// One request counted on an endpoint's load.
struct InFlight {
    targets: Arc<Targets>,
    index: usize,
    started: Instant,
}

impl InFlight {
    fn done(self) {
        self.targets.loads[self.index].finish(self.started.elapsed());
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn sent(inner: F, targets: Arc<Targets>, index: usize) -> Self {
        targets.loads[index].start();
        Self {
            inner: Some(inner),
            load: Some(InFlight {
                targets,
                index,
                started: Instant::now(),
            }),
        }
    }

    pub(super) fn no_endpoint() -> Self {
        Self {
            inner: None,
            load: None,
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err(NoEndpoint.into()));
        };
        let result = std::task::ready!(inner.poll(cx));
        if let Some(load) = this.load.take() {
            load.done();
        }
        Poll::Ready(result.map_err(Into::into))
    }
}
