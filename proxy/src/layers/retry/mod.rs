//! Retries, as tower's `Retry` service driven by our [`RetryPolicy`]:
//! `retries.attempts`, `perTryTimeout` (a `Timeout` layer around each
//! attempt), `retryOn` ([`RetryConditions`]), exponential backoff with full
//! jitter (25 ms base, 250 ms cap), a per-destination [`RetryBudget`], and
//! safety: a non-idempotent request is retried only when it never reached
//! the upstream, unless the route opts in; only buffered bodies are replayed.

mod budget;
mod conditions;
mod policy;

pub use budget::RetryBudget;
pub use conditions::{RetryConditions, RetryReason};
pub use policy::RetryPolicy;

pub use policy::is_idempotent;

/// The policy for one request on a route with `retry`.
pub fn policy_for(
    retry: &crate::discovery::model::RouteRetry,
    replay_safe: bool,
    cluster: &crate::discovery::Cluster,
    metrics: &std::sync::Arc<crate::metrics::Metrics>,
    deadline: Option<crate::layers::timeout::Deadline>,
) -> RetryPolicy {
    RetryPolicy::new(
        retry.retries,
        retry.conditions.clone(),
        replay_safe,
        cluster.budget.clone(),
        metrics.clone(),
    )
    .with_gate(cluster.retry_gate.clone())
    .within(deadline)
}
