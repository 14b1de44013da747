//! The error of a call that ran out of time.

use std::time::Duration;

/// Which deadline expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutKind {
    /// The route's `timeout`: the whole request, retries included.
    Route,
    /// `retries.perTryTimeout`: one attempt.
    PerTry,
}

/// A call did not complete within its deadline.
#[derive(Debug, thiserror::Error)]
#[error("{kind:?} timeout after {after:?}")]
pub struct Elapsed {
    pub kind: TimeoutKind,
    pub after: Duration,
}
