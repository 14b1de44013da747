//! The response body of a [`super::Breaker`] call: the inner body, holding
//! the request's pool slot until the body is done with.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::OwnedSemaphorePermit;

pin_project! {
    /// `body`, releasing its pool slot (if any) when dropped.
    #[derive(Debug)]
    pub struct SlotBody<B> {
        #[pin]
        body: B,
        slot: Option<OwnedSemaphorePermit>,
    }
}

impl<B> SlotBody<B> {
    pub(super) fn new(body: B, slot: Option<OwnedSemaphorePermit>) -> Self {
        Self { body, slot }
    }
}

impl<B: Body> Body for SlotBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
