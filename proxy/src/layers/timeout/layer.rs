//! [`TimeoutLayer`]: wraps a service in a [`super::Timeout`].

use std::time::Duration;

use super::{Timeout, TimeoutKind};

/// Applies a deadline of `timeout` (none when `None`) to every call.
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    timeout: Option<Duration>,
    kind: TimeoutKind,
}

impl TimeoutLayer {
    pub fn new(timeout: Option<Duration>, kind: TimeoutKind) -> Self {
        Self { timeout, kind }
    }
}

impl<S> tower::Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout::new(inner, self.timeout, self.kind)
    }
}
