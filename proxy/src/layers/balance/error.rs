//! The error of a call the balancer could not place.

/// The destination has no endpoint to send to.
#[derive(Debug, thiserror::Error)]
#[error("no endpoint to send to")]
pub struct NoEndpoint;
