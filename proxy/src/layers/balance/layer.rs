//! [`BalanceLayer`]: puts a [`super::Balance`] over an endpoint service.

use std::sync::Arc;

use super::{Balance, Targets};

/// Picks an endpoint of `targets` for every call of the wrapped service.
#[derive(Clone, Debug)]
pub struct BalanceLayer {
    targets: Arc<Targets>,
}

impl BalanceLayer {
    pub fn new(targets: Arc<Targets>) -> Self {
        Self { targets }
    }
}

impl<S> tower::Layer<S> for BalanceLayer {
    type Service = Balance<S>;

    fn layer(&self, inner: S) -> Balance<S> {
        Balance::new(inner, self.targets.clone())
    }
}
