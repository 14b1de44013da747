//! The future of a [`super::Breaker`] call: the inner response with the
//! request's pool slot moved into its body, or [`Overflow`] at once.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::sync::OwnedSemaphorePermit;

use super::{Overflow, SlotBody};
use crate::body::BoxError;

pin_project! {
    /// Resolves to the inner response, its body holding the pool slot.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        slot: Option<OwnedSemaphorePermit>,
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn admitted(inner: F, slot: Option<OwnedSemaphorePermit>) -> Self {
        Self {
            inner: Some(inner),
            slot,
        }
    }

    pub(super) fn overflow() -> Self {
        Self {
            inner: None,
            slot: None,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<http::Response<SlotBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err(Overflow.into()));
        };
        let response = std::task::ready!(inner.poll(cx)).map_err(Into::into)?;
        let slot = this.slot.take();
        Poll::Ready(Ok(response.map(|body| SlotBody::new(body, slot))))
    }
}
