//! Circuit breaking by connection-pool limits (Envoy semantics), per
//! destination: at most `maxConnections` (HTTP/1: one request per
//! connection) and `http2MaxRequests` requests active at once, at most
//! `http1MaxPendingRequests` waiting for a slot, and at most `maxRetries`
//! retries in flight. Anything over a limit fails at once with
//! [`Overflow`] (503 `overflow`): nothing queues without bound.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A request was refused because a pool limit was reached.
#[derive(Debug, thiserror::Error)]
#[error("connection pool limit reached")]
pub struct Overflow;

/// Active and pending request limits of one destination.
#[derive(Debug)]
pub struct PoolLimit {
    active: Arc<Semaphore>,
    pending: AtomicUsize,
    max_pending: usize,
    /// (max active, max pending): what this was built from.
    pub limits: (usize, usize),
}

impl PoolLimit {
    pub fn new(max_active: usize, max_pending: usize) -> Self {
        Self {
            active: Arc::new(Semaphore::new(max_active.min(Semaphore::MAX_PERMITS))),
            pending: AtomicUsize::new(0),
            max_pending,
            limits: (max_active, max_pending),
        }
    }

    /// A slot for one request, waiting only while fewer than `max_pending`
    /// others wait. Hold the permit until the response body is done.
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, Overflow> {
        if let Ok(permit) = self.active.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(Overflow);
        }
        let permit = self.active.clone().acquire_owned().await;
        self.pending.fetch_sub(1, Ordering::AcqRel);
        permit.map_err(|_| Overflow)
    }
}

/// Concurrent retries to one destination (`maxRetries`).
#[derive(Debug)]
pub struct RetryGate {
    active: AtomicU32,
    max: u32,
    /// The destination, for metric labels.
    pub service: String,
    pub subset: String,
}

impl RetryGate {
    pub fn new(max: u32, service: &str, subset: &str) -> Self {
        Self {
            active: AtomicU32::new(0),
            max,
            service: service.to_string(),
            subset: subset.to_string(),
        }
    }

    /// Takes a retry slot; false when `max` retries are in flight.
    pub fn enter(&self) -> bool {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn leave(&self) {
        let _ = self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn one_active_one_pending_rest_overflow() {
        let limit = Arc::new(PoolLimit::new(1, 1));
        let first = limit.acquire().await.expect("a free slot");
        let waiting = tokio::spawn({
            let limit = limit.clone();
            async move { limit.acquire().await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        for _ in 0..5 {
            assert!(
                limit.acquire().await.is_err(),
                "third and later requests overflow"
            );
        }
        drop(first);
        assert!(
            waiting.await.expect("task").is_ok(),
            "the pending request gets the slot"
        );
    }

    #[test]
    fn retry_gate_caps_concurrent_retries() {
        let gate = RetryGate::new(2, "s", "");
        assert!(gate.enter() && gate.enter());
        assert!(!gate.enter());
        gate.leave();
        assert!(gate.enter());
    }
}
