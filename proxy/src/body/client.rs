//! A client's request body as the proxy reads it, held to a pace: each
//! read must come within the body timeout of the last, and the body as a
//! whole must keep to the minimum rate once the first timeout window has
//! passed (`timeout + received / min_rate` from its start). A body that
//! stalls or trickles ends in [`BodyTooSlow`], the client's fault (408),
//! instead of holding a connection to an endpoint open for ever.

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
    inner: hyper::body::Incoming,
    pace: BodyPace,
    started: Instant,
    received: u64,
    /// Armed at the first wait (a body that is all there never needs it).
    deadline: Option<Pin<Box<Sleep>>>,
}

impl ClientBody {
    pub fn new(inner: hyper::body::Incoming, pace: BodyPace) -> Self {
        Self {
            inner,
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
        match Pin::new(&mut this.inner).poll_frame(cx) {
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
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
