//! Retries: `retries.attempts`, `perTryTimeout` (a `Timeout` layer around
//! each attempt), `retryOn` ([`RetryConditions`]), exponential backoff with
//! full jitter (25 ms base, 250 ms cap), a per-destination [`RetryBudget`],
//! and safety: a non-idempotent request is retried only when it never
//! reached the upstream, unless the route opts in; only buffered bodies are
//! replayed.
//!
//! Not tower's `Retry`: that one copies the whole request (a second header
//! map) before every attempt that may be followed by another, and keeps the
//! backoff timer inside every request's future. On the success path, which
//! is nearly every request, that copy was most of what retries cost (see
//! BENCHMARKS.md). This service keeps the copy as a list of shared header
//! values, makes none for the last attempt, and boxes the rare backoff.

mod budget;
mod conditions;
mod error;
mod future;
mod layer;
mod policy;

use std::task::{Context, Poll};

use http::{Request, Response};

pub use budget::RetryBudget;
pub use conditions::{RetryConditions, RetryReason};
pub use error::RetriesExhausted;
pub use future::ResponseFuture;
pub use layer::RetryLayer;
pub use policy::{is_idempotent, RetryPolicy};

use crate::body::{BoxError, RequestBody};

/// Sends a request again, as its [`RetryPolicy`] allows, until an attempt
/// ends in a result the policy accepts.
#[derive(Clone, Debug)]
pub struct Retry<S> {
    policy: RetryPolicy,
    inner: S,
}

impl<S> Retry<S> {
    pub fn new(policy: RetryPolicy, inner: S) -> Self {
        Self { policy, inner }
    }
}

impl<S, B> tower::Service<Request<RequestBody>> for Retry<S>
where
    S: tower::Service<Request<RequestBody>, Response = Response<B>, Error = BoxError> + Clone,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = ResponseFuture<S, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        self.policy.record_request();
        let replay = if self.policy.may_retry() {
            future::Replay::of(&req)
        } else {
            None
        };
        let future = self.inner.call(req);
        // The request's later attempts go through a clone made after this
        // call, so that they start from what it left (the endpoints tried).
        ResponseFuture::new(self.policy.clone(), self.inner.clone(), replay, future)
    }
}
