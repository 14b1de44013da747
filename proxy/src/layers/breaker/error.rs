//! The error of a call refused by a pool limit.

/// A request was refused because a pool limit was reached.
#[derive(Debug, thiserror::Error)]
#[error("connection pool limit reached")]
pub struct Overflow;
