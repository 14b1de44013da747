//! [`BreakerLayer`]: wraps a service in a [`super::Breaker`].

use std::sync::Arc;

use super::{Breaker, PoolLimit};

/// Applies `limit` (none when `None`) to every call.
#[derive(Clone, Debug)]
pub struct BreakerLayer {
    limit: Option<Arc<PoolLimit>>,
}

impl BreakerLayer {
    pub fn new(limit: Option<Arc<PoolLimit>>) -> Self {
        Self { limit }
    }
}

impl<S> tower::Layer<S> for BreakerLayer {
    type Service = Breaker<S>;

    fn layer(&self, inner: S) -> Breaker<S> {
        Breaker::new(inner, self.limit.clone())
    }
}
