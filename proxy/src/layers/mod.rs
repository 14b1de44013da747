//! Tower middleware of the request path, one folder each in tower's shape
//! (service in `mod.rs`, `layer.rs`, `future.rs`, `error.rs`), each tested
//! against `tower_test::mock` on paused time. Outermost first: `timeout`
//! (route deadline), `breaker` (connection-pool limits), `retry` (policy,
//! budget, backoff; a per-try `timeout` inside), `balance` (picks the
//! endpoint), `outlier` (ejects failing endpoints); beneath them the
//! endpoint's client (`outbound::endpoint`). `rate_limit` is not a layer:
//! routing checks a route's and a destination's bucket before sending.

pub mod balance;
pub mod breaker;
pub mod outlier;
pub mod picked;
pub mod rate_limit;
pub mod retry;
pub mod timeout;
