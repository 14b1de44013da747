//! [`OutlierLayer`]: wraps an endpoint service in an [`super::Outlier`].

use std::sync::Arc;

use super::{Outlier, OutlierGroup};

/// Reports every call's outcome to `group` (nothing when `None`).
#[derive(Clone, Debug)]
pub struct OutlierLayer {
    group: Option<Arc<OutlierGroup>>,
}

impl OutlierLayer {
    pub fn new(group: Option<Arc<OutlierGroup>>) -> Self {
        Self { group }
    }
}

impl<S> tower::Layer<S> for OutlierLayer {
    type Service = Outlier<S>;

    fn layer(&self, inner: S) -> Outlier<S> {
        Outlier::new(inner, self.group.clone())
    }
}
