//! The future of a [`super::Retry`] call: an attempt, then (when the policy
//! says so) a backoff and another attempt from the request's replay copy.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri, Version};
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::RetryPolicy;
use crate::body::{BoxError, RequestBody};

/// What another attempt needs of a request the client has consumed (hyper
/// drains the headers it sends). Header values are shared, not copied, and
/// kept in a list (one allocation, no hash index) until a retry needs them
/// as a map again. Extensions are not kept: they are the first attempt's.
#[derive(Debug)]
pub(super) struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: Vec<(HeaderName, HeaderValue)>,
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Replay {
    /// The copy of `req`; `None` when its body is streamed (never replayed).
    pub(super) fn of(req: &Request<RequestBody>) -> Option<Self> {
        let RequestBody::Buffered { data, trailers } = req.body() else {
            return None;
        };
        Some(Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req
                .headers()
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
            data: data.clone(),
            trailers: trailers.clone(),
        })
    }

    /// A request for another attempt; the copy stays for one more.
    fn request(&self) -> Request<RequestBody> {
        assemble(
            (self.method.clone(), self.uri.clone(), self.version),
            self.headers.iter().cloned(),
            RequestBody::Buffered {
                data: self.data.clone(),
                trailers: self.trailers.clone(),
            },
        )
    }

    /// A request for the last attempt, made of the copy itself.
    fn into_request(self) -> Request<RequestBody> {
        assemble(
            (self.method, self.uri, self.version),
            self.headers.into_iter(),
            RequestBody::Buffered {
                data: self.data,
                trailers: self.trailers,
            },
        )
    }
}

fn assemble(
    (method, uri, version): (Method, Uri, Version),
    headers: impl ExactSizeIterator<Item = (HeaderName, HeaderValue)>,
    body: RequestBody,
) -> Request<RequestBody> {
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    let map = req.headers_mut();
    map.reserve(headers.len());
    for (name, value) in headers {
        map.append(name, value);
    }
    req
}

pin_project! {
    /// Resolves to the response (or error) of the last attempt made.
    pub struct ResponseFuture<S, F> {
        policy: RetryPolicy,
        // The service every attempt of this request goes through, so that
        // per-request state (the endpoints tried) carries from one to the next.
        service: S,
        // The copy for the next attempt; `None` when no attempt follows.
        replay: Option<Replay>,
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Attempt { #[pin] future: F },
        // Boxed: a backoff is rare, and the common future stays small.
        Backoff { sleep: Pin<Box<Sleep>> },
        // The backoff is over: the service is readied, then called.
        Ready,
    }
}

impl<S, F> ResponseFuture<S, F> {
    pub(super) fn new(policy: RetryPolicy, service: S, replay: Option<Replay>, future: F) -> Self {
        Self {
            policy,
            service,
            replay,
            state: State::Attempt { future },
        }
    }
}

impl<S, F, B> Future for ResponseFuture<S, F>
where
    S: tower::Service<Request<RequestBody>, Response = Response<B>, Error = BoxError, Future = F>,
    F: Future<Output = Result<Response<B>, BoxError>>,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Attempt { future } => {
                    let mut result = ready!(future.poll(cx));
                    if this.replay.is_none() {
                        return Poll::Ready(result);
                    }
                    match this.policy.retry(&mut result) {
                        None => return Poll::Ready(result),
                        Some(sleep) => this.state.set(State::Backoff {
                            sleep: Box::pin(sleep),
                        }),
                    }
                }
                StateProj::Backoff { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(State::Ready);
                }
                StateProj::Ready => {
                    ready!(this.service.poll_ready(cx))?;
                    let req = if this.policy.may_retry() {
                        this.replay.as_ref().map(Replay::request)
                    } else {
                        this.replay.take().map(Replay::into_request)
                    };
                    let req = req.expect("a backoff follows an attempt with a replay copy");
                    let future = this.service.call(req);
                    this.state.set(State::Attempt { future });
                }
            }
        }
    }
}
