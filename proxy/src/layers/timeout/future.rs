//! The future of a [`super::Timeout`] call: the inner future raced against a sleep.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::{Elapsed, TimeoutKind};
use crate::body::BoxError;

pin_project! {
    /// Resolves to the inner result, or to [`Elapsed`] when the sleep wins.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        after: Duration,
        kind: TimeoutKind,
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn new(inner: F, timeout: Option<Duration>, kind: TimeoutKind) -> Self {
        Self {
            inner,
            sleep: timeout.map(tokio::time::sleep),
            after: timeout.unwrap_or_default(),
            kind,
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
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }
        match this.sleep.as_pin_mut().map(|sleep| sleep.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(Elapsed {
                kind: *this.kind,
                after: *this.after,
            }
            .into())),
            _ => Poll::Pending,
        }
    }
}
