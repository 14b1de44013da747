//! Tower middleware of the request path, one folder each in tower's shape
//! (service in `mod.rs`, `layer.rs`, `future.rs`, `error.rs`): `timeout`
//! (route and per-try deadlines), `retry` (policy, budget, backoff),
//! `balance` (endpoint selection), `outlier` (ejection of failing endpoints),
//! `breaker` (connection-pool limits).

pub mod balance;
pub mod breaker;
pub mod outlier;
pub mod retry;
pub mod timeout;
