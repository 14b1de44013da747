//! [`RetryLayer`]: wraps a service in a [`super::Retry`].

use super::{Retry, RetryPolicy};

/// Retries every call as `policy` allows (each service gets its own copy).
#[derive(Clone, Debug)]
pub struct RetryLayer {
    policy: RetryPolicy,
}

impl RetryLayer {
    pub fn new(policy: RetryPolicy) -> Self {
        Self { policy }
    }
}

impl<S> tower::Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry::new(self.policy.clone(), inner)
    }
}
