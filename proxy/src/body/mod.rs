//! The body type of every response the proxy returns: a streamed upstream
//! body or a small local reply, boxed behind one type.

mod client;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

pub use client::{BodyTooSlow, ClientBody, ClientBodyError};

/// Error of a streamed body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body of responses the proxy serves.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A complete, in-memory body.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A streamed upstream body.
pub fn stream<B>(body: B) -> ProxyBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// Bodies up to this size are buffered so a retry can send them again.
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// A request body on its way upstream: either buffered whole (small, and
/// replayable for retries) or streamed (its first bytes read ahead, the
/// rest passed through as it arrives; never replayed).
#[derive(Debug)]
pub enum RequestBody {
    Buffered {
        data: Option<Bytes>,
        trailers: Option<http::HeaderMap>,
    },
    Streaming {
        prefix: Option<Bytes>,
        rest: ClientBody,
        /// A copy kept for mirrors, while the body stays small enough.
        tee: Option<Box<Tee>>,
    },
}

/// A mirror's copy of a request body.
#[derive(Debug)]
pub enum BodyCopy {
    /// The whole body, known now.
    Ready(Bytes),
    /// The body as the main request streams it: `Some` once it has ended
    /// within the limit, `None` when it grew past it; the sender is dropped
    /// if the main request ends first.
    Pending(tokio::sync::oneshot::Receiver<Option<Bytes>>),
    /// Larger than the limit: not copied.
    TooLarge,
}

/// Copies a streamed body's data as it passes, up to `limit` bytes.
#[derive(Debug)]
pub struct Tee {
    buf: bytes::BytesMut,
    limit: usize,
    done: Option<tokio::sync::oneshot::Sender<Option<Bytes>>>,
}

impl Tee {
    fn data(&mut self, data: &Bytes) {
        if self.done.is_none() {
            return;
        }
        if self.buf.len() + data.len() > self.limit {
            if let Some(done) = self.done.take() {
                let _ = done.send(None);
            }
            self.buf = bytes::BytesMut::new();
        } else {
            self.buf.extend_from_slice(data);
        }
    }

    fn end(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(Some(std::mem::take(&mut self.buf).freeze()));
        }
    }
}

impl RequestBody {
    /// An empty, replayable body.
    pub fn empty() -> Self {
        Self::Buffered {
            data: None,
            trailers: None,
        }
    }

    /// Reads `body` until its end or until more than `limit` bytes arrived.
    pub async fn read(mut body: ClientBody, limit: usize) -> Result<Self, ClientBodyError> {
        use http_body::Body as _;
        if body.is_end_stream() {
            return Ok(Self::empty()); // no body: nothing to read or allocate
        }
        let mut buf = bytes::BytesMut::new();
        loop {
            if body.is_end_stream() {
                return Ok(Self::Buffered {
                    data: Some(buf.freeze()).filter(|b| !b.is_empty()),
                    trailers: None,
                });
            }
            match body.frame().await {
                None => {
                    return Ok(Self::Buffered {
                        data: Some(buf.freeze()).filter(|b| !b.is_empty()),
                        trailers: None,
                    })
                }
                Some(frame) => match frame?.into_data() {
                    Ok(data) => {
                        buf.extend_from_slice(&data);
                        if buf.len() > limit {
                            return Ok(Self::Streaming {
                                prefix: Some(buf.freeze()),
                                rest: body,
                                tee: None,
                            });
                        }
                    }
                    Err(frame) => {
                        return Ok(Self::Buffered {
                            data: Some(buf.freeze()).filter(|b| !b.is_empty()),
                            trailers: frame.into_trailers().ok(),
                        })
                    }
                },
            }
        }
    }
}

impl RequestBody {
    /// A body streamed as it arrives.
    pub fn streaming(rest: ClientBody) -> Self {
        Self::Streaming {
            prefix: None,
            rest,
            tee: None,
        }
    }

    /// A copy of this body for mirrors, if it is at most `limit` bytes: at
    /// once when it is buffered or empty, else as it streams to the main
    /// destination (never buffered whole ahead of it). Trailers are not
    /// copied. One copy per body.
    pub fn copy_for_mirror(&mut self, limit: usize) -> BodyCopy {
        use http_body::Body as _;
        match self {
            Self::Buffered { data, .. } => match data {
                Some(d) if d.len() > limit => BodyCopy::TooLarge,
                d => BodyCopy::Ready(d.clone().unwrap_or_default()),
            },
            Self::Streaming {
                prefix: Some(_), ..
            } => BodyCopy::TooLarge,
            Self::Streaming { rest, .. } if rest.is_end_stream() => BodyCopy::Ready(Bytes::new()),
            Self::Streaming { tee, .. } => {
                let (done, copy) = tokio::sync::oneshot::channel();
                *tee = Some(Box::new(Tee {
                    buf: bytes::BytesMut::new(),
                    limit,
                    done: Some(done),
                }));
                BodyCopy::Pending(copy)
            }
        }
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        match self.get_mut() {
            Self::Buffered { data, trailers } => {
                if let Some(data) = data.take() {
                    return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(http_body::Frame::trailers(t))))
            }
            Self::Streaming { prefix, rest, tee } => {
                if let Some(prefix) = prefix.take() {
                    return Poll::Ready(Some(Ok(http_body::Frame::data(prefix))));
                }
                let polled = std::pin::Pin::new(&mut *rest).poll_frame(cx);
                if let Some(t) = tee {
                    match &polled {
                        Poll::Ready(Some(Ok(frame))) => {
                            if let Some(data) = frame.data_ref() {
                                t.data(data);
                            }
                            if rest.is_end_stream() {
                                t.end();
                            }
                        }
                        Poll::Ready(None) => t.end(),
                        Poll::Ready(Some(Err(_))) => *tee = None,
                        Poll::Pending => {}
                    }
                }
                // The client's body failing is the client's fault: say so
                // in the error's type, whatever the upstream side makes of it.
                polled.map_err(BoxError::from)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
            Self::Streaming { prefix, rest, .. } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Buffered { data, .. } => {
                http_body::SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Self::Streaming { prefix, rest, .. } => {
                let hint = rest.size_hint();
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let mut out = http_body::SizeHint::new();
                out.set_lower(hint.lower() + extra);
                if let Some(upper) = hint.upper() {
                    out.set_upper(upper + extra);
                }
                out
            }
        }
    }
}
