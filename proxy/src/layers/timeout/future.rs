//! The future of a [`super::Timeout`] call: the inner future raced against a sleep.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::{Elapsed, TimeoutKind};
use crate::body::BoxError;

pin_project! {
    /// Resolves to the inner result, or to [`Elapsed`] when the sleep wins.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        // `None`: the deadline had passed before the call; nothing was sent.
        #[pin]
        inner: Option<F>,
        #[pin]
        sleep: Option<Sleep>,
        after: Duration,
        kind: TimeoutKind,
    }
}

/// When a call expires, and what its expiry is reported as.
#[derive(Clone, Copy, Debug)]
pub(super) struct Expiry {
    pub at: Instant,
    pub kind: TimeoutKind,
    pub after: Duration,
}

impl<F> ResponseFuture<F> {
    pub(super) fn new(inner: F, expiry: Option<Expiry>) -> Self {
        Self {
            inner: Some(inner),
            sleep: expiry.map(|e| tokio::time::sleep_until(e.at)),
            after: expiry.map_or(Duration::ZERO, |e| e.after),
            kind: expiry.map_or(TimeoutKind::Route, |e| e.kind),
        }
    }

    /// Fails at once with the expiry `e`.
    pub(super) fn expired(e: Expiry) -> Self {
        Self {
            inner: None,
            sleep: None,
            after: e.after,
            kind: e.kind,
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
        let elapsed = || {
            Poll::Ready(Err(Elapsed {
                kind: *this.kind,
                after: *this.after,
            }
            .into()))
        };
        let Some(inner) = this.inner.as_pin_mut() else {
            return elapsed();
        };
        if let Poll::Ready(result) = inner.poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }
        match this.sleep.as_pin_mut().map(|sleep| sleep.poll(cx)) {
            Some(Poll::Ready(())) => elapsed(),
            _ => Poll::Pending,
        }
    }
}
