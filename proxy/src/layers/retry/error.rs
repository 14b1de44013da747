//! The error of a request whose retries ran out: it keeps the last
//! attempt's error as its cause.

use crate::body::BoxError;

/// Every allowed attempt failed without an upstream response.
#[derive(Debug, thiserror::Error)]
#[error("retries exhausted")]
pub struct RetriesExhausted(#[source] pub BoxError);
