//! A client's request body as the proxy reads it, held to a pace: each
//! read must come within the body timeout of the last, and the body as a
//! whole must keep to the minimum rate once the first timeout window has
//! passed (`timeout + received / min_rate` from its start). A body that
//! stalls or trickles ends in [`BodyTooSlow`], the client's fault (408),
//! instead of holding a connection to an endpoint open for ever.
//!
//! An HTTP/1 body dropped before its end (the proxy answered without
//! forwarding it: overflow, a denied request, a failed upstream) is read
//! and discarded in the background, up to 1 MiB and 5 s, as nginx does:
//! the client that is still sending gets the answer and keeps its
//! connection, instead of a reset that can lose the answer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::config::BodyPace;

/// The client's request body failed (cut off, bad framing, too slow): the
/// client's fault, never the endpoint's.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("request body from the client")]
    Read(#[source] hyper::Error),
    #[error("request body from the client")]
    Slow(#[source] BodyTooSlow),
}

/// The body stalled, or arrived below the minimum rate.
#[derive(Debug, thiserror::Error)]
#[error("{received} bytes in {elapsed:?}: slower than the request body pace")]
pub struct BodyTooSlow {
    pub received: u64,
    pub elapsed: Duration,
}

/// A request body read under a [`BodyPace`].
#[derive(Debug)]
pub struct ClientBody {
    /// Always `Some` until dropped.
    inner: Option<hyper::body::Incoming>,
    pace: BodyPace,
    /// Discard the rest when dropped early (HTTP/1).
    drain: bool,
    started: Instant,
    received: u64,
    /// Armed at the first wait (a body that is all there never needs it).
    deadline: Option<Pin<Box<Sleep>>>,
}

impl ClientBody {
    /// `drain`: read the rest in the background if dropped before its end.
    pub fn new(inner: hyper::body::Incoming, pace: BodyPace, drain: bool) -> Self {
        Self {
            inner: Some(inner),
            drain,
            pace,
            started: Instant::now(),
            received: 0,
            deadline: None,
        }
    }

    /// When the body must have sent more: the sooner of the idle timeout
    /// and what the minimum rate allows for the bytes so far.
    fn next_deadline(&self) -> Instant {
        let now = Instant::now();
        let idle = now + self.pace.timeout;
        if self.pace.min_rate == 0 {
            return idle;
        }
        let earned = Duration::from_secs_f64(self.received as f64 / self.pace.min_rate as f64);
        idle.min(self.started + self.pace.timeout + earned)
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    if this.deadline.is_some() {
                        let next = this.next_deadline();
                        if let Some(d) = this.deadline.as_mut() {
                            d.as_mut().reset(next);
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(ClientBodyError::Read(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.deadline.is_none() {
                    this.deadline = Some(Box::pin(tokio::time::sleep_until(this.next_deadline())));
                }
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if !expired {
                    return Poll::Pending;
                }
                let slow = BodyTooSlow {
                    received: this.received,
                    elapsed: this.started.elapsed(),
                };
                Poll::Ready(Some(Err(ClientBodyError::Slow(slow))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map(Body::size_hint).unwrap_or_default()
    }
}

/// The most of an abandoned body read to keep its connection.
const DRAIN_BYTES: u64 = 1 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(5);

impl Drop for ClientBody {
    fn drop(&mut self) {
        let Some(mut body) = self.inner.take() else {
            return;
        };
        if !self.drain || body.is_end_stream() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            use http_body_util::BodyExt;
            let drain = async {
                let mut read = 0u64;
                while let Some(Ok(frame)) = body.frame().await {
                    read += frame.data_ref().map_or(0, |d| d.len() as u64);
                    if read > DRAIN_BYTES {
                        return;
                    }
                }
            };
            // Dropping the body then closes the connection.
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
        });
    }
}
