//! Which endpoint of a destination an attempt goes to: set on the request
//! by the balancer, read beneath it by outlier detection and the endpoint's
//! client. Its own module so that those layers need not know each other.

/// The endpoint chosen for one attempt (its index in the destination).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Picked(pub usize);
